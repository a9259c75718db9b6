// A minimal gRPC client on node:http2 for the load generator (`--client h2`, the default):
// binary protobuf, no compression, one callback per message. It exists because connect-node's
// client costs ~500 µs of CPU per call, several times what the gateway itself spends per call, and
// on this 2-core box the load generator competes with the gateway for the CPU: that cost showed up
// as "latency added by the gateway". `--client connect` measures with connect-node's client instead.
import * as http2 from "node:http2";

/** A failed call: its grpc-status (or -1 for a transport failure) and message. */
export class GrpcCallError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(`gRPC ${code}: ${message}`);
  }
}

/** One HTTP/2 connection making gRPC calls. */
export interface GrpcH2Client {
  /** Sends one request message and calls `onMessage` with each response payload; resolves on status 0. */
  call(path: string, request: Uint8Array, timeoutMs: number, onMessage: (payload: Buffer) => void): Promise<void>;
  /** Closes the connection (running calls fail). */
  close(): void;
}

/**
 * Sent as `authorization` on every call when set (e.g. `Bearer ogw_...` or `Bearer <JWT>`), to
 * measure the gateway with authentication on (bench/README.md).
 */
const AUTHORIZATION = process.env["BENCH_AUTHORIZATION"];

/** Opens a connection to `baseUrl` (http://host:port). */
export function createGrpcH2Client(baseUrl: string): GrpcH2Client {
  let session: http2.ClientHttp2Session | undefined;
  const connect = (): http2.ClientHttp2Session => {
    if (session && !session.closed && !session.destroyed) return session;
    const s = http2.connect(baseUrl, { settings: { initialWindowSize: 1 << 20 } });
    s.on("error", () => {
      // each call's stream reports its own failure
    });
    s.on("close", () => {
      if (session === s) session = undefined;
    });
    session = s;
    return s;
  };
  return {
    call(path, request, timeoutMs, onMessage) {
      return new Promise((resolve, reject) => {
        const stream = connect().request({
          ":method": "POST",
          ":path": path,
          "content-type": "application/grpc",
          te: "trailers",
          "grpc-timeout": `${Math.max(1, Math.ceil(timeoutMs))}m`,
          ...(AUTHORIZATION === undefined ? {} : { authorization: AUTHORIZATION }),
        });
        let status: string | undefined;
        let message = "";
        const take = (h: http2.IncomingHttpHeaders): void => {
          if (h["grpc-status"] !== undefined) {
            status = String(h["grpc-status"]);
            message = decodeURIComponent(String(h["grpc-message"] ?? ""));
          }
        };
        stream.on("response", take);
        stream.on("trailers", take);
        // Frames may span chunks: keep the unfinished tail.
        let pending: Buffer | undefined;
        stream.on("data", (chunk: Buffer) => {
          let buf = pending ? Buffer.concat([pending, chunk]) : chunk;
          let at = 0;
          while (buf.length - at >= 5) {
            const n = buf.readUInt32BE(at + 1);
            if (buf.length - at < 5 + n) break;
            onMessage(buf.subarray(at + 5, at + 5 + n));
            at += 5 + n;
          }
          pending = at < buf.length ? buf.subarray(at) : undefined;
          buf = Buffer.alloc(0);
        });
        stream.on("error", () => {
          // "close" reports it
        });
        stream.on("close", () => {
          if (status === "0") resolve();
          else if (status !== undefined) reject(new GrpcCallError(Number(status), message));
          else reject(new GrpcCallError(-1, `stream closed without a status (RST ${stream.rstCode ?? "?"})`));
        });
        const frame = Buffer.allocUnsafe(5 + request.length);
        frame[0] = 0;
        frame.writeUInt32BE(request.length, 1);
        frame.set(request, 5);
        stream.end(frame);
      });
    },
    close() {
      session?.destroy();
      session = undefined;
    },
  };
}
