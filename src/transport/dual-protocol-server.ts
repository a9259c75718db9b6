import * as http from "node:http";
import * as http2 from "node:http2";
import * as net from "node:net";
import type { TLSSocket } from "node:tls";
import type { connectNodeAdapter } from "@connectrpc/connect-node";
import { DEFAULTS } from "../config/config.js";
import type { Logger } from "../observability/logger.js";
import { addressKey, createThrottledReport, refusalFor } from "./connection-limits.js";
import type { Refusal, ThrottledReport } from "./connection-limits.js";
import type { GrpcFastPath } from "./grpc-fast-path.js";
import { sweepIntervalMs } from "./http2-session-policy.js";
import type { SessionTimeouts } from "./http2-session-policy.js";
import { superviseHttp2Sessions } from "./http2-session-supervisor.js";
import type { SessionsEnded } from "./http2-session-supervisor.js";
import { createTlsFront } from "./tls-server.js";
import type { TlsCredentials } from "./tls-server.js";

/** The request listener connect-node builds (works for http and http2). */
type NodeHandlerFn = ReturnType<typeof connectNodeAdapter>;

/** Listening options; the limits and timeouts default to the configuration defaults (README, "Configuration"). */
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
  /**
   * Time a connection has to send its first bytes, then each HTTP/1.1 request's headers or
   * the HTTP/2 preface and SETTINGS exchange. @default 10000
   */
  headersTimeoutMs?: number;
  /** HTTP/1.1: time to receive a whole request, headers and body. @default 60000 */
  requestTimeoutMs?: number;
  /** HTTP/2: a session without an open stream this long gets GOAWAY. @default 300000 */
  idleTimeoutMs?: number;
  /** HTTP/2: a PING is sent this long after the last was answered. @default 5000 */
  pingIntervalMs?: number;
  /** HTTP/2: a session leaving a PING unanswered this long is destroyed. @default 5000 */
  pingTimeoutMs?: number;
  /** Open connections; further ones are closed at accept. @default 10000 */
  maxConnections?: number;
  /** Open connections per client address; 0 = no limit. @default 0 */
  maxConnectionsPerIp?: number;
  /** Where refused connections and failed accepts are reported (at most once per 10 s each). Default: nowhere. */
  log?: Pick<Logger, "warn" | "debug">;
  /** Serve TLS (ALPN h2 and http/1.1) instead of plaintext (`tls-server.ts`). @default plaintext */
  tls?: TlsCredentials;
}

/** Connection counters, for tests and the operator. */
export interface ConnectionStats {
  /** Connections open now (both protocols, sniffing included). */
  readonly open: number;
  /** Connections refused at accept since start, by the limit they hit. */
  readonly refused: Readonly<Record<Refusal, number>>;
  /** HTTP/2 sessions the gateway ended by itself since start, by reason. */
  readonly sessionsEnded: SessionsEnded;
}

/** A server accepting gRPC (h2c), gRPC-Web and Connect (HTTP/1.1 and h2c) on one port. */
export interface DualProtocolServer {
  /** The bound port (useful with port 0). */
  readonly port: number;
  /** Connection counters. */
  readonly stats: ConnectionStats;
  /** Stops accepting connections and asks clients to go away (GOAWAY, `Connection: close`). */
  stopAccepting(): void;
  /** Resolves when every connection has closed, or after `ms`, whichever is first; true when all closed. */
  drained(ms: number): Promise<boolean>;
  /** Destroys every remaining connection. */
  destroy(): void;
  /** With TLS: new connections use these credentials, open ones keep theirs (certificate reload). */
  setTlsCredentials(credentials: TlsCredentials): void;
}

// Every h2c connection begins with these 24 bytes; anything else is HTTP/1.x.
const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

/** Refusals and accept errors are logged at most this often (each kind), with their count. */
const REPORT_INTERVAL_MS = 10_000;

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
 *
 * With TLS (`options.tls`), each accepted connection goes through the TLS handshake first
 * (`tls-server.ts`) and is then handed over by its ALPN protocol (h2 or http/1.1) instead of
 * its first bytes; certificates can be replaced without dropping connections.
 *
 * Every connection ends (README, "Operating it"): connections over the limits
 * are closed at accept; one that does not identify itself in time is dropped;
 * HTTP/1.1 requests have a headers and a request timeout; HTTP/2 sessions are
 * ended by the policy in `http2-session-policy.ts` (handshake, idle, PING),
 * applied by `http2-session-supervisor.ts`.
 */
export function listenDualProtocol(handler: NodeHandlerFn, options: ListenOptions): Promise<DualProtocolServer> {
  const headersTimeoutMs = options.headersTimeoutMs ?? DEFAULTS.httpHeadersTimeoutMs;
  const requestTimeoutMs = Math.max(headersTimeoutMs, options.requestTimeoutMs ?? DEFAULTS.httpRequestTimeoutMs);
  const timeouts: SessionTimeouts = {
    handshakeMs: headersTimeoutMs,
    idleMs: options.idleTimeoutMs ?? DEFAULTS.http2IdleTimeoutMs,
    pingIntervalMs: options.pingIntervalMs ?? DEFAULTS.http2PingIntervalMs,
    pingTimeoutMs: options.pingTimeoutMs ?? DEFAULTS.http2PingTimeoutMs,
  };
  const limits = {
    maxConnections: options.maxConnections ?? DEFAULTS.maxConnections,
    maxConnectionsPerIp: options.maxConnectionsPerIp ?? DEFAULTS.maxConnectionsPerIp,
  };
  const sweepMs = sweepIntervalMs(timeouts);
  const log = options.log;

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
  const h1 = http.createServer(
    {
      keepAliveTimeout: options.keepAliveTimeoutMs,
      headersTimeout: headersTimeoutMs,
      requestTimeout: requestTimeoutMs,
      // Checked as often as the HTTP/2 sessions: a quarter of the shortest timeout, at most 1 s.
      connectionsCheckingInterval: sweepMs,
    },
    handler,
  );
  // Node checks the headers and request timeouts only for connections of a
  // server that listened itself: the check starts on its "listening" event.
  // This one is handed its connections, so the check is started here; its
  // timer is stopped by h1.close() once the port is closed and drained.
  h1.emit("listening");

  const sockets = new Set<net.Socket>();
  const perAddress = new Map<string, number>();
  const refused: Record<Refusal, number> = { "max-connections": 0, "max-connections-per-ip": 0 };
  const refusalReports: Record<Refusal, ThrottledReport> = {
    "max-connections": createThrottledReport(REPORT_INTERVAL_MS, (count) =>
      log?.warn({ refused: count, limit: limits.maxConnections }, "connections refused: MAX_CONNECTIONS reached"),
    ),
    "max-connections-per-ip": createThrottledReport(REPORT_INTERVAL_MS, (count) =>
      log?.warn(
        { refused: count, limit: limits.maxConnectionsPerIp },
        "connections refused: MAX_CONNECTIONS_PER_IP reached",
      ),
    ),
  };
  let lastAcceptError = "";
  const acceptErrors = createThrottledReport(REPORT_INTERVAL_MS, (count) =>
    log?.warn({ failed: count, error: lastAcceptError }, "accepting connections failed"),
  );
  const refuse = (reason: Refusal): void => {
    refused[reason]++;
    refusalReports[reason].add();
  };

  let accepting = true;
  const supervisor = superviseHttp2Sessions(h2, timeouts, log);
  h1.on("request", (_req, res) => {
    if (!accepting) res.setHeader("connection", "close");
  });

  // No Nagle: token messages are small and must leave at once (http.Server
  // does this for its own sockets; ours come from a plain net.Server).
  const tcp = net.createServer({ noDelay: true }, (socket) => {
    const key = addressKey(socket.remoteAddress);
    // MAX_CONNECTIONS itself is enforced by net.Server (below), before a socket exists.
    const reason = refusalFor(sockets.size, perAddress.get(key) ?? 0, limits);
    if (reason !== undefined) {
      refuse(reason);
      socket.destroy();
      return;
    }
    perAddress.set(key, (perAddress.get(key) ?? 0) + 1);
    // A connection that never says which protocol it speaks is dropped (with TLS: one that does
    // not finish its handshake in that time, `handshakeTimeout`).
    const sniffTimer = tlsFront === undefined ? setTimeout(() => socket.destroy(), headersTimeoutMs) : undefined;
    sockets.add(socket);
    socket.once("close", () => {
      sockets.delete(socket);
      clearTimeout(sniffTimer);
      const left = (perAddress.get(key) ?? 1) - 1;
      if (left > 0) perAddress.set(key, left);
      else perAddress.delete(key);
    });
    socket.on("error", () => socket.destroy());
    if (sniffTimer !== undefined) sniff(socket, sniffTimer);
    else tlsFront?.accept(socket);
  });

  /** Hands a connection to the HTTP/2 or the HTTP/1.1 server by its first bytes (the h2c preface or not). */
  const sniff = (socket: net.Socket, sniffTimer: NodeJS.Timeout): void => {
    let seen = Buffer.alloc(0);
    const onReadable = (): void => {
      for (let c: Buffer | null; (c = socket.read() as Buffer | null) !== null; ) seen = Buffer.concat([seen, c]);
      const n = Math.min(seen.length, PREFACE.length);
      const isH2 = seen.subarray(0, n).equals(PREFACE.subarray(0, n));
      if (isH2 && seen.length < PREFACE.length) return; // undecided: wait for more bytes
      clearTimeout(sniffTimer);
      socket.off("readable", onReadable);
      socket.unshift(seen);
      if (isH2) supervisor.handOver(socket);
      else h1.emit("connection", socket);
    };
    socket.on("readable", onReadable);
  };
  const tlsFront =
    options.tls === undefined
      ? undefined
      : createTlsFront(options.tls, { handshakeTimeoutMs: headersTimeoutMs }, (secure: TLSSocket) => {
          // The TLS socket wraps the accepted one, which keeps the accounting (closing one closes both).
          secure.on("error", () => secure.destroy());
          if (secure.alpnProtocol === "h2") supervisor.handOver(secure);
          else if (secure.alpnProtocol === "http/1.1") h1.emit("connection", secure);
          else {
            // No ALPN (some HTTP/1.1 tools): told apart by the first bytes, as in plaintext.
            const sniffTimer = setTimeout(() => secure.destroy(), headersTimeoutMs);
            secure.once("close", () => clearTimeout(sniffTimer));
            sniff(secure, sniffTimer);
          }
        });
  // Node closes connections beyond this as they are accepted, before any
  // socket object, parser or session is made for them ("drop").
  tcp.maxConnections = limits.maxConnections;
  tcp.on("drop", () => refuse("max-connections"));
  // All sockets gone after close(): stop the timers.
  tcp.once("close", () => {
    supervisor.stop();
    h1.close();
    for (const r of Object.values(refusalReports)) r.flush();
    acceptErrors.flush();
  });

  return new Promise((resolve, reject) => {
    tcp.once("error", reject);
    tcp.listen(options.port, options.host, () => {
      tcp.off("error", reject);
      // A failed accept (e.g. EMFILE: out of descriptors) must not end the
      // process: the connection is lost, the next ones may succeed once others close.
      tcp.on("error", (e) => {
        lastAcceptError = e.message;
        acceptErrors.add();
      });
      const address = tcp.address() as net.AddressInfo;
      resolve({
        port: address.port,
        stats: {
          get open() {
            return sockets.size;
          },
          refused,
          sessionsEnded: supervisor.ended,
        },
        stopAccepting() {
          accepting = false;
          tcp.close();
          supervisor.closeAll();
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
          supervisor.destroyAll();
          for (const s of sockets) s.destroy();
        },
        setTlsCredentials(credentials) {
          tlsFront?.setCredentials(credentials);
        },
      });
    });
  });
}
