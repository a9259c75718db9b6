// Clients that misbehave on purpose, written on raw sockets (node:net) so they
// can send what no HTTP library would: broken HTTP/2 frames, a preface and
// nothing else, headers one byte at a time. For the hostile-connections spec.

import * as http2 from "node:http2";
import * as net from "node:net";
import { readFileSync, readdirSync } from "node:fs";

/** The 24 bytes every h2c connection starts with. */
export const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

/** HTTP/2 frame types used here. */
export const FrameType = {
  DATA: 0,
  HEADERS: 1,
  RST_STREAM: 3,
  SETTINGS: 4,
  PING: 6,
  GOAWAY: 7,
  CONTINUATION: 9,
} as const;

/** One HTTP/2 frame: 9-byte header (length, type, flags, stream id) and payload. */
export function h2Frame(type: number, flags: number, streamId: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const header = Buffer.alloc(9);
  header.writeUIntBE(payload.length, 0, 3);
  header[3] = type;
  header[4] = flags;
  header.writeUInt32BE(streamId, 5);
  return Buffer.concat([header, payload]);
}

/** The frames in `bytes` (whole ones), as type, flags, stream and payload. */
export function parseFrames(bytes: Buffer): { type: number; flags: number; streamId: number; payload: Buffer }[] {
  const frames = [];
  let at = 0;
  while (at + 9 <= bytes.length) {
    const length = bytes.readUIntBE(at, 3);
    if (at + 9 + length > bytes.length) break;
    frames.push({
      type: bytes[at + 3]!,
      flags: bytes[at + 4]!,
      streamId: bytes.readUInt32BE(at + 5) & 0x7fffffff,
      payload: bytes.subarray(at + 9, at + 9 + length),
    });
    at += 9 + length;
  }
  return frames;
}

/** HPACK for a GET of `/` on `localhost`: indexed :method GET, :scheme http, :path /, literal :authority. */
const GET_ROOT = Buffer.from([0x82, 0x86, 0x84, 0x41, 0x09, ...Buffer.from("localhost")]);

/** An HPACK integer with an `prefix`-bit prefix, its first byte or-ed with `first`. */
function hpackInt(n: number, prefix: number, first: number): Buffer {
  const max = (1 << prefix) - 1;
  if (n < max) return Buffer.from([first | n]);
  const out = [first | max];
  let rest = n - max;
  while (rest >= 128) {
    out.push((rest % 128) + 128);
    rest = Math.floor(rest / 128);
  }
  out.push(rest);
  return Buffer.from(out);
}

/** A raw TCP connection to the gateway that records what it receives and when it closes. */
export interface RawConnection {
  readonly socket: net.Socket;
  /** Everything received so far. */
  received(): Buffer;
  /** Whether the gateway (or anyone) has closed the connection. */
  readonly isClosed: boolean;
  /** Resolves with the ms from connecting to the close, once the connection is closed. */
  readonly closed: Promise<number>;
  /** Resolves once `predicate(received)` holds; rejects on close first or after `ms`. */
  until(predicate: (received: Buffer) => boolean, what: string, ms?: number): Promise<void>;
}

/** Opens a TCP connection (from `localAddress`, e.g. 127.0.0.2, if given). Never rejects on close or reset. */
export function connectRaw(port: number, localAddress?: string): Promise<RawConnection> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: "127.0.0.1", port, ...(localAddress ? { localAddress } : {}) });
    const openedAt = Date.now();
    const chunks: Buffer[] = [];
    let isClosed = false;
    const waiters = new Set<() => void>();
    const wake = (): void => {
      for (const w of [...waiters]) w();
    };
    socket.on("data", (d: Buffer) => {
      chunks.push(d);
      wake();
    });
    socket.on("error", () => {
      // a reset counts as a close
    });
    const closed = new Promise<number>((r) =>
      socket.once("close", () => {
        isClosed = true;
        r(Date.now() - openedAt);
        wake();
      }),
    );
    socket.once("connect", () => {
      socket.off("error", reject);
      resolve({
        socket,
        received: () => Buffer.concat(chunks),
        get isClosed() {
          return isClosed;
        },
        closed,
        until(predicate, what, ms = 10_000) {
          return new Promise<void>((res, rej) => {
            const check = (): void => {
              if (predicate(Buffer.concat(chunks))) done(undefined);
              else if (isClosed) done(new Error(`connection closed before ${what}`));
            };
            const timer = setTimeout(() => done(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
            const done = (e: Error | undefined): void => {
              clearTimeout(timer);
              waiters.delete(check);
              if (e) rej(e);
              else res();
            };
            waiters.add(check);
            check();
          });
        },
      });
    });
    socket.once("error", reject);
  });
}

/** Whether `bytes` hold a frame of `type` (with `flags` set, if given). */
export function hasFrame(bytes: Buffer, type: number, flags = 0): boolean {
  return parseFrames(bytes).some((f) => f.type === type && (f.flags & flags) === flags);
}

/** The error code of the first GOAWAY in `bytes`, or undefined. */
export function goawayCode(bytes: Buffer): number | undefined {
  const f = parseFrames(bytes).find((x) => x.type === FrameType.GOAWAY);
  return f === undefined ? undefined : f.payload.readUInt32BE(4);
}

/**
 * Opens an HTTP/2 connection by hand as a well-behaved client would: preface
 * and SETTINGS, then an ACK of the server's SETTINGS once they arrive, and
 * waits for the server's ACK of ours. After this the gateway counts the
 * handshake as done.
 */
export async function rawH2(port: number, localAddress?: string): Promise<RawConnection> {
  const c = await connectRaw(port, localAddress);
  c.socket.write(Buffer.concat([PREFACE, h2Frame(FrameType.SETTINGS, 0, 0)]));
  await c.until((b) => hasFrame(b, FrameType.SETTINGS), "the server's SETTINGS");
  c.socket.write(h2Frame(FrameType.SETTINGS, 0x1, 0));
  await c.until(
    (b) => parseFrames(b).some((f) => f.type === FrameType.SETTINGS && (f.flags & 0x1) === 1),
    "the server's SETTINGS ACK",
  );
  return c;
}

/** Protocol errors the gateway's HTTP/2 server answers with GOAWAY, each sent on an open connection. */
export const PROTOCOL_ERRORS = {
  /** A DATA frame on stream 0 (RFC 9113 §6.1: connection error PROTOCOL_ERROR). */
  "DATA on stream 0": (): Buffer => h2Frame(FrameType.DATA, 0, 0, Buffer.from("hello")),
  /** Streams opened and reset at once, 2,000 times (CVE-2023-44487, "rapid reset"). */
  "rapid-reset burst": (): Buffer => {
    const frames: Buffer[] = [];
    for (let i = 0; i < 2000; i++) {
      const id = 1 + 2 * i;
      frames.push(h2Frame(FrameType.HEADERS, 0x4 | 0x1, id, GET_ROOT));
      frames.push(h2Frame(FrameType.RST_STREAM, 0, id, Buffer.from([0, 0, 0, 8])));
    }
    return Buffer.concat(frames);
  },
  /** A 70 KB header value over HEADERS and CONTINUATION frames. */
  "oversized header block": (): Buffer => {
    const value = Buffer.alloc(70_000, 0x61);
    const block = Buffer.concat([
      GET_ROOT,
      Buffer.from([0x00, 0x05]),
      Buffer.from("x-big"),
      hpackInt(value.length, 7, 0),
      value,
    ]);
    const frames: Buffer[] = [];
    for (let at = 0; at < block.length; at += 16_384) {
      const last = at + 16_384 >= block.length;
      frames.push(
        h2Frame(
          at === 0 ? FrameType.HEADERS : FrameType.CONTINUATION,
          last ? 0x4 : 0,
          1,
          block.subarray(at, at + 16_384),
        ),
      );
    }
    return Buffer.concat(frames);
  },
} as const;

/** Open file descriptors of process `pid` (Linux). */
export function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** Resident memory of process `pid` in MB (Linux). */
export function rssMb(pid: number): number {
  const kb = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1];
  return kb === undefined ? Number.NaN : Math.round(Number(kb) / 1024);
}

/** An HTTP/2 client session through a socket from `localAddress` (so tests can play several client addresses). */
export function h2From(url: string, localAddress: string): http2.ClientHttp2Session {
  const { port } = new URL(url);
  return http2.connect(url, {
    createConnection: () => net.connect({ host: "127.0.0.1", port: Number(port), localAddress }),
  });
}

/** Resolves once `predicate` holds (it may be async), polling every 50 ms; fails after `ms` with `what` and the last `detail()`. */
export async function eventually(
  predicate: () => boolean | Promise<boolean>,
  what: string,
  ms = 20_000,
  detail: () => string = () => "",
): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting until ${what} ${detail()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** `promise`, or a rejection saying `what` did not happen within `ms`. */
export async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** What came back for one raw HTTP/2 request. */
export interface H2Reply {
  /** The response headers (`:status`, and the gRPC status of a trailers-only answer). */
  headers: http2.IncomingHttpHeaders;
  /** The trailers, if any. */
  trailers: http2.IncomingHttpHeaders;
  /** The response body. */
  body: Buffer;
  /** The stream's RST_STREAM code (0: closed normally). */
  rstCode: number;
  /** grpc-status from the trailers or the headers, if any. */
  grpcStatus: number | undefined;
  /** grpc-message, decoded. */
  grpcMessage: string;
  /** ms from the request to the stream's close. */
  ms: number;
}

/**
 * One request on an existing HTTP/2 session with exactly these headers and body chunks; the
 * request stays open (no END_STREAM) when `keepOpen`. Resolves when the stream closes (or with
 * a reply whose `rstCode` is -1 after `timeoutMs`, the stream then cancelled). Never rejects.
 */
export function h2Request(
  session: http2.ClientHttp2Session,
  headers: http2.OutgoingHttpHeaders,
  body: Buffer[] = [],
  opts: { keepOpen?: boolean; timeoutMs?: number; onStream?: (s: http2.ClientHttp2Stream) => void } = {},
): Promise<H2Reply> {
  return new Promise((resolve) => {
    const started = Date.now();
    let stream: http2.ClientHttp2Stream;
    try {
      stream = session.request(headers, { endStream: false });
    } catch {
      resolve({
        headers: {},
        trailers: {},
        body: Buffer.alloc(0),
        rstCode: -2,
        grpcStatus: undefined,
        grpcMessage: "",
        ms: 0,
      });
      return;
    }
    let resHeaders: http2.IncomingHttpHeaders = {};
    let trailers: http2.IncomingHttpHeaders = {};
    const chunks: Buffer[] = [];
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      stream.close(http2.constants.NGHTTP2_CANCEL);
    }, opts.timeoutMs ?? 20_000);
    stream.on("response", (h) => (resHeaders = h));
    stream.on("trailers", (t) => (trailers = t));
    stream.on("data", (c: Buffer) => chunks.push(c));
    stream.on("error", () => {
      // the close says how it ended
    });
    stream.on("close", () => {
      clearTimeout(timer);
      const status = trailers["grpc-status"] ?? resHeaders["grpc-status"];
      const message = trailers["grpc-message"] ?? resHeaders["grpc-message"];
      resolve({
        headers: resHeaders,
        trailers,
        body: Buffer.concat(chunks),
        rstCode: timedOut ? -1 : (stream.rstCode ?? 0),
        grpcStatus: status === undefined ? undefined : Number(status),
        grpcMessage: typeof message === "string" ? decodeURIComponent(message) : "",
        ms: Date.now() - started,
      });
    });
    opts.onStream?.(stream);
    for (const b of body) stream.write(b);
    if (!opts.keepOpen) stream.end();
  });
}

/** A client HTTP/2 session to `url` whose errors are ignored (a refused or reset session shows in its requests). */
export function h2Connect(url: string): http2.ClientHttp2Session {
  const session = http2.connect(url);
  session.on("error", () => {
    // seen by the requests
  });
  return session;
}
