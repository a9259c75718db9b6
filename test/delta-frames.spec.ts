import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { create, toBinary } from "@bufbuild/protobuf";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { ChatResponseSchema, GenerateResponseSchema } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { DoneReason, Role } from "../src/gen/ollama/gateway/v1/types_pb.js";
import { chatDeltaFrame, generateDeltaFrame } from "../src/services/delta-frames.js";

/** What the generic path sends: the 5-byte gRPC prefix and toBinary's bytes. */
function generic(bytes: Uint8Array): Buffer {
  const out = Buffer.alloc(5 + bytes.length);
  out.writeUInt32BE(bytes.length, 1);
  out.set(bytes, 5);
  return out;
}

const TEXTS = [
  "",
  "Hello",
  " world",
  "héllo 🦙 naïve — 中文",
  "x".repeat(127),
  "x".repeat(128),
  "y".repeat(16_383),
  "y".repeat(16_384),
  "z".repeat(300_000),
  "\u0000\n\t\"{}",
];

describe("hand-written frames for text deltas", () => {
  it("encode a Generate delta exactly as toBinary does, for any text and thinking", () => {
    for (const text of TEXTS) {
      for (const thinking of ["", "hmm", TEXTS[3]!, "t".repeat(200)]) {
        const m: MessageInitShape<typeof GenerateResponseSchema> = { text, thinking };
        const want = generic(toBinary(GenerateResponseSchema, create(GenerateResponseSchema, m)));
        assert.deepEqual(generateDeltaFrame(m), want, `text ${text.length} chars, thinking ${thinking.length}`);
      }
    }
  });

  it("encode a Chat delta exactly as toBinary does", () => {
    for (const content of TEXTS) {
      for (const thinking of ["", "pondering", "t".repeat(200)]) {
        const m: MessageInitShape<typeof ChatResponseSchema> = { message: { role: Role.ASSISTANT, content, thinking, toolCalls: [] } };
        const want = generic(toBinary(ChatResponseSchema, create(ChatResponseSchema, m)));
        assert.deepEqual(chatDeltaFrame(m), want, `content ${content.length} chars, thinking ${thinking.length}`);
      }
    }
  });

  it("leave every other message to the generic encoder", () => {
    assert.equal(generateDeltaFrame({ text: "", done: true, doneReason: DoneReason.STOP }), undefined);
    assert.equal(generateDeltaFrame({ text: "a", usage: { node: "n" } }), undefined);
    assert.equal(chatDeltaFrame({ message: { role: Role.ASSISTANT }, done: true }), undefined);
    assert.equal(chatDeltaFrame({ message: { role: Role.ASSISTANT, toolCalls: [{ name: "f", index: 0 }] } }), undefined);
    assert.equal(chatDeltaFrame({ message: { role: Role.USER, content: "x" } }), undefined);
    assert.equal(chatDeltaFrame({}), undefined);
  });
});
