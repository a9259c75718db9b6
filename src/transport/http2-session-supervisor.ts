import type * as http2 from "node:http2";
import type * as net from "node:net";
import type { Logger } from "../observability/logger.js";
import { sessionVerdict, sweepIntervalMs } from "./http2-session-policy.js";
import type { SessionState, SessionTimeouts } from "./http2-session-policy.js";

/** Why the gateway ended HTTP/2 sessions by itself, with how many since start. */
export type SessionsEnded = Readonly<Record<"handshake-timeout" | "ping-timeout" | "idle", number>>;

/** Keeps every session of one HTTP/2 server under the session policy. */
export interface Http2SessionSupervisor {
  /** Hands `socket` to the server (as its "connection"), so the session made for it is supervised with its socket. */
  handOver(socket: net.Socket): void;
  /** GOAWAY to every session, now and to any made from now on (shutdown). */
  closeAll(): void;
  /** Destroys every session. */
  destroyAll(): void;
  /** Sessions ended by the policy since start, by reason. */
  readonly ended: SessionsEnded;
  /** Stops the timer (once the server has no connection left). */
  stop(): void;
}

/** What is tracked per session: the policy's inputs, kept current by the session's events. */
interface SessionRecord extends SessionState {
  /** The connection, to destroy it when the session cannot end it (Node's `session.socket` refuses that). */
  readonly socket: net.Socket | undefined;
  handshakeDoneAt: number | undefined;
  openStreams: number;
  idleSince: number | undefined;
  pingSentAt: number | undefined;
  pingAnsweredAt: number | undefined;
  closing: boolean;
}

/**
 * The mechanism around `sessionVerdict`: records each session's handshake,
 * open streams, PINGs and answers from its events, and applies the verdict to
 * every session on one timer (a quarter of the shortest timeout, at most 1 s).
 * A destroyed session's socket is destroyed too, since a session nghttp2 has
 * shut no longer reads and would not notice the end; a closed session's
 * socket still flushing its last bytes after the PING timeout is destroyed,
 * so a client that never reads cannot keep it.
 */
export function superviseHttp2Sessions(
  server: http2.Http2Server,
  timeouts: SessionTimeouts,
  log?: Pick<Logger, "debug">,
): Http2SessionSupervisor {
  const sessions = new Map<http2.ServerHttp2Session, SessionRecord>();
  const ended = { "handshake-timeout": 0, "ping-timeout": 0, idle: 0 };
  let closingAll = false;
  // The socket being handed over: the server's "session" event for it comes synchronously.
  let handingOver: net.Socket | undefined;

  server.on("session", (session: http2.ServerHttp2Session) => {
    const openedAt = Date.now();
    const rec: SessionRecord = {
      socket: handingOver,
      openedAt,
      handshakeDoneAt: undefined,
      openStreams: 0,
      idleSince: openedAt,
      pingSentAt: undefined,
      pingAnsweredAt: undefined,
      closing: false,
    };
    sessions.set(session, rec);
    let settingsIn = false;
    let settingsAcked = false;
    const handshake = (): void => {
      if (settingsIn && settingsAcked) rec.handshakeDoneAt = Date.now();
    };
    session.once("remoteSettings", () => {
      settingsIn = true;
      handshake();
    });
    session.once("localSettings", () => {
      settingsAcked = true;
      handshake();
    });
    session.on("stream", (stream: http2.ServerHttp2Stream) => {
      rec.openStreams++;
      rec.idleSince = undefined;
      stream.on("close", () => {
        if (--rec.openStreams === 0) rec.idleSince = Date.now();
      });
    });
    session.once("close", () => {
      sessions.delete(session);
      const socket = rec.socket;
      if (socket !== undefined && !socket.destroyed) {
        setTimeout(() => socket.destroy(), timeouts.pingTimeoutMs).unref();
      }
    });
    if (closingAll) session.close();
  });

  const ping = (session: http2.ServerHttp2Session, rec: SessionRecord, now: number): void => {
    rec.pingSentAt = now;
    try {
      session.ping((err) => {
        rec.pingSentAt = undefined;
        if (err === null) rec.pingAnsweredAt = Date.now();
      });
    } catch {
      session.destroy();
    }
  };

  const sweep = (): void => {
    const now = Date.now();
    for (const [session, rec] of sessions) {
      if (session.destroyed) continue;
      rec.closing = session.closed;
      const verdict = sessionVerdict(rec, now, timeouts);
      switch (verdict.action) {
        case "keep":
          break;
        case "ping":
          ping(session, rec, now);
          break;
        case "goaway":
          ended[verdict.reason]++;
          log?.debug({ reason: verdict.reason }, "closing HTTP/2 session");
          session.close();
          break;
        case "destroy":
          ended[verdict.reason]++;
          log?.debug({ reason: verdict.reason }, "destroying HTTP/2 session");
          session.destroy();
          rec.socket?.destroy();
          break;
      }
    }
  };
  const timer = setInterval(sweep, sweepIntervalMs(timeouts)).unref();

  return {
    handOver(socket) {
      handingOver = socket;
      try {
        server.emit("connection", socket);
      } finally {
        handingOver = undefined;
      }
    },
    closeAll() {
      closingAll = true;
      for (const s of sessions.keys()) s.close();
    },
    destroyAll() {
      for (const s of sessions.keys()) s.destroy();
    },
    ended,
    stop() {
      clearInterval(timer);
    },
  };
}
