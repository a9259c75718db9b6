import { Code, ConnectError } from "@connectrpc/connect";

/**
 * The gRPC length-prefixed message ("envelope"): one flag byte (bit 0 = compressed), the
 * message length as 4 bytes big-endian, then the message. The one copy of this layout for the
 * fast path (`grpc-fast-path.ts`) and the hand-written replies (`reply-frames.ts`).
 */
export const FRAME_PREFIX_BYTES = 5;

/**
 * A buffer for one uncompressed message of `size` bytes with its prefix already written: the
 * caller encodes the message from offset `FRAME_PREFIX_BYTES`. Uninitialised memory (the caller
 * writes every byte), so a frame costs one allocation and no copy.
 */
export function allocFrame(size: number): Buffer {
  const out = Buffer.allocUnsafe(FRAME_PREFIX_BYTES + size);
  out[0] = 0;
  out.writeUInt32BE(size, 1);
  return out;
}

/** One encoded message as an uncompressed frame (copied behind the prefix). */
export function frame(message: Uint8Array): Buffer {
  const out = allocFrame(message.length);
  out.set(message, FRAME_PREFIX_BYTES);
  return out;
}

/** The size of the message in a frame built by `allocFrame` or `frame`. */
export function frameMessageBytes(frame: Buffer): number {
  return frame.length - FRAME_PREFIX_BYTES;
}

/**
 * The one message of a unary or server-streaming request body, with the codes and texts
 * connect-node's gRPC handler answers the same protocol errors with: no message, a truncated
 * envelope, more than one message, a message over `readMaxBytes`, a compressed message (the
 * fast path takes only requests without `grpc-encoding`) or unknown flags.
 */
export function singleMessage(body: Buffer, readMaxBytes: number, kind: "unary" | "server_streaming"): Uint8Array {
  if (body.length === 0)
    throw new ConnectError(`protocol error: missing input message for ${kind} method`, Code.Unimplemented);
  if (body.length < FRAME_PREFIX_BYTES)
    throw new ConnectError("protocol error: incomplete envelope", Code.InvalidArgument);
  const flags = body[0]!;
  const length = body.readUInt32BE(1);
  if (length > readMaxBytes) {
    throw new ConnectError(
      `message size ${length} is larger than configured readMaxBytes ${readMaxBytes}`,
      Code.ResourceExhausted,
    );
  }
  const end = FRAME_PREFIX_BYTES + length;
  if (body.length < end) throw new ConnectError("protocol error: incomplete envelope", Code.InvalidArgument);
  if (body.length > end)
    throw new ConnectError(`protocol error: received extra input message for ${kind} method`, Code.Unimplemented);
  if ((flags & 1) === 1)
    throw new ConnectError("received compressed envelope, but do not know how to decompress", Code.Internal);
  if (flags !== 0) throw new ConnectError(`protocol error: invalid envelope flags ${flags}`, Code.InvalidArgument);
  return body.subarray(FRAME_PREFIX_BYTES);
}
