import * as http from "node:http";
import * as http2 from "node:http2";
import * as net from "node:net";
import type { connectNodeAdapter } from "@connectrpc/connect-node";
import type { GrpcFastPath } from "./grpc-fast-path.js";

/** The request listener connect-node builds (works for http and http2). */
type NodeHandlerFn = ReturnType<typeof connectNodeAdapter>;

/** Listening options. */
export interface ListenOptions {
  /** Interface to bind. */
  host: string;
  /** Port; 0 picks a free one. */
  port: number;
  /** HTTP/2 streams per connection. */
  maxConcurrentStreams: number;
  /** HTTP/1.1 keep-alive idle timeout, in ms. */
  keepAliveTimeoutMs: number;
  /** Serves some HTTP/2 gRPC calls before connect-node sees them (undefined = connect-node serves all). */
  fastPath?: GrpcFastPath;
}

/** A server accepting gRPC (h2c), gRPC-Web and Connect (HTTP/1.1 and h2c) on one port. */
export interface DualProtocolServer {
  /** The bound port (useful with port 0). */
  readonly port: number;
  /** Stops accepting connections and asks clients to go away (GOAWAY, `Connection: close`). */
  stopAccepting(): void;
  /** Resolves when every connection has closed, or after `ms`, whichever is first; true when all closed. */
  drained(ms: number): Promise<boolean>;
  /** Destroys every remaining connection. */
  destroy(): void;
}

// Every h2c connection begins with these 24 bytes; anything else is HTTP/1.x.
const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

/**
 * Serves one handler over HTTP/2 cleartext and HTTP/1.1 on a single port.
 *
 * Node's `allowHTTP1` needs TLS (it relies on ALPN), so the first bytes of
 * each connection are sniffed: the h2c preface goes to an HTTP/2 server,
 * anything else to an HTTP/1.1 server. The socket stays paused while it is
 * handed over, so no bytes are lost.
 *
 * HTTP/2 streams go to the fast path first; only the ones it leaves get the
 * compatibility request/response objects connect-node's handler takes (built
 * here, as Node's own "request" event would, so the fast path's calls never
 * pay for them).
 */
export function listenDualProtocol(handler: NodeHandlerFn, options: ListenOptions): Promise<DualProtocolServer> {
  const h2 = http2.createServer({
    settings: { maxConcurrentStreams: options.maxConcurrentStreams, initialWindowSize: 1 << 20 },
    maxSessionMemory: 32,
  });
  const fastPath = options.fastPath;
  h2.on(
    "stream",
    (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, _flags: number, rawHeaders: string[]) => {
      if (fastPath?.handle(stream, headers)) return;
      const req = new http2.Http2ServerRequest(stream, headers, {}, rawHeaders);
      const res = new http2.Http2ServerResponse(stream);
      if (headers[":method"] === "CONNECT" || (headers.expect !== undefined && headers.expect !== "100-continue")) {
        // What Node's own request handling answers when no listener takes these.
        res.statusCode = headers[":method"] === "CONNECT" ? 405 : 417;
        res.end();
        return;
      }
      if (headers.expect === "100-continue") res.writeContinue();
      handler(req, res);
    },
  );
  const h1 = http.createServer({ keepAliveTimeout: options.keepAliveTimeoutMs, headersTimeout: 30_000 }, handler);
  h1.keepAliveTimeout = options.keepAliveTimeoutMs;
  // Above the keep-alive timeout, so an idle connection is closed by us, not mid-request.
  h1.headersTimeout = Math.max(30_000, options.keepAliveTimeoutMs + 1000);

  const sockets = new Set<net.Socket>();
  const sessions = new Set<http2.ServerHttp2Session>();
  let accepting = true;
  h2.on("session", (session) => {
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
    if (!accepting) session.close();
  });
  h1.on("request", (_req, res) => {
    if (!accepting) res.setHeader("connection", "close");
  });

  // No Nagle: token messages are small and must leave at once (http.Server
  // does this for its own sockets; ours come from a plain net.Server).
  const tcp = net.createServer({ noDelay: true }, (socket) => {
    // A connection that never says which protocol it speaks is dropped.
    const sniffTimer = setTimeout(() => socket.destroy(), 10_000);
    sockets.add(socket);
    socket.once("close", () => {
      sockets.delete(socket);
      clearTimeout(sniffTimer);
    });
    socket.on("error", () => socket.destroy());
    let seen = Buffer.alloc(0);
    const onReadable = (): void => {
      for (let c: Buffer | null; (c = socket.read() as Buffer | null) !== null; ) seen = Buffer.concat([seen, c]);
      const n = Math.min(seen.length, PREFACE.length);
      const isH2 = seen.subarray(0, n).equals(PREFACE.subarray(0, n));
      if (isH2 && seen.length < PREFACE.length) return; // undecided: wait for more bytes
      clearTimeout(sniffTimer);
      socket.off("readable", onReadable);
      socket.unshift(seen);
      (isH2 ? h2 : h1).emit("connection", socket);
    };
    socket.on("readable", onReadable);
  });
  tcp.maxConnections = 100_000;

  return new Promise((resolve, reject) => {
    tcp.once("error", reject);
    tcp.listen(options.port, options.host, () => {
      tcp.off("error", reject);
      const address = tcp.address() as net.AddressInfo;
      resolve({
        port: address.port,
        stopAccepting() {
          accepting = false;
          tcp.close();
          for (const s of sessions) s.close();
          h1.closeIdleConnections();
        },
        async drained(ms) {
          const deadline = Date.now() + ms;
          while (sockets.size > 0 && Date.now() < deadline) {
            h1.closeIdleConnections();
            await new Promise((r) => setTimeout(r, Math.min(25, Math.max(1, deadline - Date.now()))));
          }
          return sockets.size === 0;
        },
        destroy() {
          for (const s of sessions) s.destroy();
          for (const s of sockets) s.destroy();
        },
      });
    });
  });
}
