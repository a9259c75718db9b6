import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { create, toBinary } from "@bufbuild/protobuf";
import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  ChatResponseSchema,
  EmbedResponseSchema,
  GenerateResponseSchema,
} from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { DoneReason, Role } from "../src/gen/ollama/gateway/v1/types_pb.js";
import { allocFrame, frame, frameMessageBytes, singleMessage } from "../src/transport/grpc-frame.js";
import { chatDeltaFrame, embedFrame, generateDeltaFrame } from "../src/transport/reply-frames.js";
import { frame as referenceFrame } from "./helpers/raw-grpc.js";

/** What the generic path sends: the 5-byte gRPC prefix and toBinary's bytes (framed by the test helper). */
const generic = (bytes: Uint8Array): Buffer => referenceFrame(bytes);

describe("the gRPC frame shared by the fast path and the hand-written replies", () => {
  it("is a zero flag byte, the big-endian length and the message, as any gRPC peer frames it", () => {
    for (const n of [0, 1, 255, 256, 70_000]) {
      const message = Buffer.alloc(n, 7);
      assert.deepEqual(frame(message), referenceFrame(message), `${n} bytes`);
      assert.equal(frameMessageBytes(frame(message)), n);
      const allocated = allocFrame(n);
      message.copy(allocated, 5);
      assert.deepEqual(allocated, referenceFrame(message));
    }
  });

  it("gives back the one message of a request body, and refuses anything else as connect-node does", () => {
    const body = referenceFrame(Buffer.from("abc"));
    assert.deepEqual(Buffer.from(singleMessage(body, 100, "unary")), Buffer.from("abc"));
    const refused = (b: Buffer, max = 100): string => {
      try {
        singleMessage(b, max, "server_streaming");
        return "accepted";
      } catch (e) {
        return String(e);
      }
    };
    assert.match(refused(Buffer.alloc(0)), /missing input message for server_streaming method/);
    assert.match(refused(Buffer.from([0, 0])), /incomplete envelope/);
    assert.match(refused(body.subarray(0, 6)), /incomplete envelope/);
    assert.match(refused(Buffer.concat([body, body])), /extra input message/);
    assert.match(refused(body, 2), /message size 3 is larger than configured readMaxBytes 2/);
    assert.match(refused(referenceFrame(Buffer.from("abc"), 1)), /compressed envelope/);
    assert.match(refused(referenceFrame(Buffer.from("abc"), 2)), /invalid envelope flags 2/);
  });
});

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
  '\u0000\n\t"{}',
];

describe("hand-written frames for the hottest replies", () => {
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
        const m: MessageInitShape<typeof ChatResponseSchema> = {
          message: { role: Role.ASSISTANT, content, thinking, toolCalls: [] },
        };
        const want = generic(toBinary(ChatResponseSchema, create(ChatResponseSchema, m)));
        assert.deepEqual(chatDeltaFrame(m), want, `content ${content.length} chars, thinking ${thinking.length}`);
      }
    }
  });

  it("leave every other message to the generic encoder", () => {
    assert.equal(generateDeltaFrame({ text: "", done: true, doneReason: DoneReason.STOP }), undefined);
    assert.equal(generateDeltaFrame({ text: "a", usage: { node: "n" } }), undefined);
    assert.equal(chatDeltaFrame({ message: { role: Role.ASSISTANT }, done: true }), undefined);
    assert.equal(
      chatDeltaFrame({ message: { role: Role.ASSISTANT, toolCalls: [{ name: "f", index: 0 }] } }),
      undefined,
    );
    assert.equal(chatDeltaFrame({ message: { role: Role.USER, content: "x" } }), undefined);
    assert.equal(chatDeltaFrame({}), undefined);
  });

  it("encode an EmbedResponse exactly as toBinary does: any number of vectors, sizes, values, usage", () => {
    let seed = 7;
    const rnd = (): number => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * 2 - 1;
    const vector = (n: number): number[] => Array.from({ length: n }, () => rnd() / 3);
    const cases: MessageInitShape<typeof EmbedResponseSchema>[] = [
      {},
      { embeddings: [] },
      { embeddings: [{ values: [] }] },
      { embeddings: [{ values: [0, -0, 1, -1, 3.4e38, 1e-45, 0.1, Number.NaN, Infinity, -Infinity] }] },
      { embeddings: [{ values: vector(384) }], usage: { promptTokens: 4, node: "n1", model: "all-minilm" } },
      { embeddings: [{ values: vector(31) }, { values: vector(32) }, { values: vector(33) }], cachedInputs: 2 },
      {
        embeddings: Array.from({ length: 20 }, (_, i) => ({ values: vector(4096 + i) })),
        usage: { totalDuration: { seconds: 1n, nanos: 5 } },
      },
    ];
    for (const m of cases) {
      const want = generic(toBinary(EmbedResponseSchema, create(EmbedResponseSchema, m)));
      assert.deepEqual(embedFrame(m), want, `${m.embeddings?.length ?? 0} vectors`);
    }
  });
});
