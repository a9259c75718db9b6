import * as http2 from "node:http2";
import { toBinary, create } from "@bufbuild/protobuf";
import type { DescMessage, MessageInitShape } from "@bufbuild/protobuf";

/** What a raw gRPC call got back. */
export interface RawGrpcReply {
  /** Response headers (with the status, for a trailers-only answer). */
  headers: http2.IncomingHttpHeaders;
  /** Trailers (empty for a trailers-only answer). */
  trailers: http2.IncomingHttpHeaders;
  /** The response messages' payloads, unframed. */
  messages: Buffer[];
  /** grpc-status from the trailers or, trailers-only, the headers. */
  status: number | undefined;
  /** grpc-message, decoded. */
  message: string;
  /** The RST_STREAM code the stream closed with (0 = closed normally). */
  rstCode: number;
}

/** Options of one raw call. */
export interface RawGrpcCall {
  /** Extra request headers (e.g. grpc-timeout). */
  headers?: Record<string, string>;
  /** Request body chunks as sent; undefined = one frame of `frame(message)`. */
  body?: Buffer[];
  /** Leave the request open (no END_STREAM) after the body. */
  keepOpen?: boolean;
  /** Called with the stream once open, e.g. to cancel it. */
  onStream?(stream: http2.ClientHttp2Stream): void;
  /** Gives up (and fails the test) after this long. @default 10000 */
  timeoutMs?: number;
}

/** A gRPC message frame: flag byte, 4-byte big-endian length, payload. */
export function frame(payload: Uint8Array, flags = 0): Buffer {
  const out = Buffer.alloc(5 + payload.length);
  out[0] = flags;
  out.writeUInt32BE(payload.length, 1);
  out.set(payload, 5);
  return out;
}

/** The binary encoding of a message. */
export function encode<T extends DescMessage>(schema: T, init: MessageInitShape<T>): Uint8Array {
  return toBinary(schema, create(schema, init));
}

/**
 * One gRPC call made by hand over node:http2, so tests can send what no well-behaved client
 * would (broken frames, two messages, oversized bodies) and see exactly what comes back.
 */
export function rawGrpc(baseUrl: string, path: string, call: RawGrpcCall = {}): Promise<RawGrpcReply> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(baseUrl);
    session.on("error", () => {
      // reported through the stream
    });
    const stream = session.request({
      ":method": "POST",
      ":path": path,
      "content-type": "application/grpc",
      te: "trailers",
      ...call.headers,
    });
    const timer = setTimeout(() => {
      stream.close(http2.constants.NGHTTP2_CANCEL);
      session.destroy();
      reject(new Error(`no answer to ${path} within ${call.timeoutMs ?? 10_000} ms`));
    }, call.timeoutMs ?? 10_000);
    let headers: http2.IncomingHttpHeaders = {};
    let trailers: http2.IncomingHttpHeaders = {};
    const chunks: Buffer[] = [];
    stream.on("response", (h) => (headers = h));
    stream.on("trailers", (t) => (trailers = t));
    stream.on("data", (c: Buffer) => chunks.push(c));
    stream.on("error", () => {
      // the close below says how it ended
    });
    stream.on("close", () => {
      clearTimeout(timer);
      session.close();
      const data = Buffer.concat(chunks);
      const messages: Buffer[] = [];
      for (let at = 0; at + 5 <= data.length; ) {
        const n = data.readUInt32BE(at + 1);
        messages.push(data.subarray(at + 5, at + 5 + n));
        at += 5 + n;
      }
      const statusText = (trailers["grpc-status"] ?? headers["grpc-status"]) as string | undefined;
      const message = (trailers["grpc-message"] ?? headers["grpc-message"] ?? "") as string;
      resolve({
        headers,
        trailers,
        messages,
        status: statusText === undefined ? undefined : Number(statusText),
        message: decodeURIComponent(message),
        rstCode: stream.rstCode ?? 0,
      });
    });
    call.onStream?.(stream);
    for (const b of call.body ?? []) stream.write(b);
    if (!call.keepOpen) stream.end();
  });
}
