import { create, toBinary } from "@bufbuild/protobuf";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { EmbedResponseSchema } from "../gen/ollama/gateway/v1/inference_pb.js";
import type { ChatReply, GenerateReply } from "../services/inference-service.js";
import { Role } from "../gen/ollama/gateway/v1/types_pb.js";
import { allocFrame, FRAME_PREFIX_BYTES } from "./grpc-frame.js";

/**
 * Hand-written gRPC frames for the hottest replies. First the two messages a stream is made of:
 * a Generate text delta (`GenerateResponse{text, thinking}`) and a Chat content delta
 * (`ChatResponse{message: {role: ASSISTANT, content, thinking}}`). Encoded straight into one
 * buffer (`allocFrame`: the gRPC prefix, then the protobuf bytes toBinary would produce), without
 * the message object, the BinaryWriter and the copy per token that the generic path costs: at a thousand streams that allocation was
 * what filled the young generation and pushed garbage into the old one.
 *
 * Anything else (the final message, tool calls, ...) returns undefined: the caller encodes it the
 * generic way. test/reply-frames.spec.ts checks the bytes against toBinary.
 */
export function generateDeltaFrame(m: GenerateReply): Buffer | undefined {
  if (m.done === true || m.doneReason !== undefined || m.usage !== undefined) return undefined;
  const text = m.text ?? "";
  const thinking = m.thinking ?? "";
  const t = Buffer.byteLength(text);
  const k = Buffer.byteLength(thinking);
  const size = field(t) + field(k);
  const out = allocFrame(size);
  let at = FRAME_PREFIX_BYTES;
  at = putString(out, at, 0x0a, text, t); // 1: text
  putString(out, at, 0x12, thinking, k); // 2: thinking
  return out;
}

/** See generateDeltaFrame: a Chat delta of role ASSISTANT with content and thinking only. */
export function chatDeltaFrame(m: ChatReply): Buffer | undefined {
  if (m.done === true || m.doneReason !== undefined || m.usage !== undefined) return undefined;
  const msg = m.message;
  if (msg === undefined || msg.role !== Role.ASSISTANT) return undefined;
  if ((msg.toolCalls?.length ?? 0) > 0 || (msg.images?.length ?? 0) > 0 || msg.toolName || msg.toolCallId)
    return undefined;
  const content = msg.content ?? "";
  const thinking = msg.thinking ?? "";
  const c = Buffer.byteLength(content);
  const k = Buffer.byteLength(thinking);
  const inner = 2 + field(c) + field(k); // 1: role (tag + one-byte varint 3), 2: content, 3: thinking
  const size = 1 + varintLength(inner) + inner;
  const out = allocFrame(size);
  let at = FRAME_PREFIX_BYTES;
  out[at++] = 0x0a; // ChatResponse 1: message
  at = putVarint(out, at, inner);
  out[at++] = 0x08; // Message 1: role
  out[at++] = Role.ASSISTANT;
  at = putString(out, at, 0x12, content, c);
  putString(out, at, 0x1a, thinking, k);
  return out;
}

/**
 * An EmbedResponse: the vectors as packed little-endian floats written in one pass (protobuf-es
 * writes each float through a checked, growing writer: at 384 to 4,096 floats per vector that was
 * the largest part of an Embed's own CPU), the rest (usage, cached inputs) by protobuf-es and
 * appended, which is the order toBinary writes them in.
 */
export function embedFrame(m: MessageInitShape<typeof EmbedResponseSchema>): Buffer {
  const vectors = (m.embeddings ?? []).map((e) => e.values ?? []);
  const rest = toBinary(EmbedResponseSchema, create(EmbedResponseSchema, { ...m, embeddings: [] }));
  let size = rest.length;
  for (const v of vectors) {
    const inner = v.length === 0 ? 0 : 1 + varintLength(4 * v.length) + 4 * v.length;
    size += 1 + varintLength(inner) + inner;
  }
  const out = allocFrame(size);
  let at = FRAME_PREFIX_BYTES;
  const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
  for (const v of vectors) {
    const bytes = 4 * v.length;
    out[at++] = 0x0a; // EmbedResponse 1: embeddings
    at = putVarint(out, at, v.length === 0 ? 0 : 1 + varintLength(bytes) + bytes);
    if (v.length === 0) continue;
    out[at++] = 0x0a; // Embedding 1: values, packed
    at = putVarint(out, at, bytes);
    for (const x of v) {
      view.setFloat32(at, x, true);
      at += 4;
    }
  }
  out.set(rest, at);
  return out;
}

/** Bytes of a string field with `n` bytes of UTF-8 (proto3: an empty string is not written). */
function field(n: number): number {
  return n === 0 ? 0 : 1 + varintLength(n) + n;
}

function putString(out: Buffer, at: number, tag: number, s: string, n: number): number {
  if (n === 0) return at;
  out[at++] = tag;
  at = putVarint(out, at, n);
  return at + out.write(s, at, n, "utf8");
}

function varintLength(n: number): number {
  let len = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 128);
    len++;
  }
  return len;
}

function putVarint(out: Buffer, at: number, n: number): number {
  while (n >= 0x80) {
    out[at++] = (n & 0x7f) | 0x80;
    n = Math.floor(n / 128);
  }
  out[at++] = n;
  return at;
}
