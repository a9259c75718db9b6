// When the gateway ends an HTTP/2 session by itself. Node's http2 never does:
// a session whose client never finishes the preface, one that sits without
// streams, and one nghttp2 has shut after a protocol error all stay open as
// long as the client keeps the TCP connection. The last case is invisible to
// JavaScript — nghttp2 sends GOAWAY and stops reading, no event is emitted, and
// not even the client's FIN is seen — so liveness is tested with PINGs: a
// session that cannot answer one is dead whatever the reason. The
// dual-protocol server applies this policy to every session on a timer.

/** The HTTP/2 timeouts (see the README, "Operating it"). */
export interface SessionTimeouts {
  /** Preface and SETTINGS exchange (both ways) must be done this long after the connection is handed over. */
  readonly handshakeMs: number;
  /** A session without an open stream this long is closed with GOAWAY. */
  readonly idleMs: number;
  /** A PING is sent this long after the last one was answered. */
  readonly pingIntervalMs: number;
  /** A PING unanswered this long marks the session dead. */
  readonly pingTimeoutMs: number;
}

/** What the server knows about one session, all times in ms on one clock. */
export interface SessionState {
  /** When the connection was handed to the HTTP/2 server. */
  readonly openedAt: number;
  /** When the client's SETTINGS had arrived and ours were acknowledged; undefined until both. */
  readonly handshakeDoneAt: number | undefined;
  /** Streams open now. */
  readonly openStreams: number;
  /** Since when no stream has been open (undefined while one is). */
  readonly idleSince: number | undefined;
  /** When the PING now awaiting its answer was sent; undefined if none is. */
  readonly pingSentAt: number | undefined;
  /** When the last PING was answered; undefined if none was yet. */
  readonly pingAnsweredAt: number | undefined;
  /** GOAWAY already sent (by us, or in answer to the client's): Node sends no more PINGs then. */
  readonly closing: boolean;
}

/** What to do with a session now. */
export type SessionVerdict =
  | { readonly action: "keep" }
  | { readonly action: "ping" }
  | { readonly action: "goaway"; readonly reason: "idle" }
  | { readonly action: "destroy"; readonly reason: "handshake-timeout" | "ping-timeout" };

const KEEP: SessionVerdict = { action: "keep" };
const PING: SessionVerdict = { action: "ping" };

/**
 * The rule, in order: a session still in its handshake is destroyed when the
 * handshake time is over; a session that left a PING unanswered too long is
 * destroyed (a dead peer cannot read a GOAWAY); an open session idle too long
 * gets GOAWAY (its streams are none, so Node then closes it); otherwise it is
 * PINGed when due. PINGs never reset the idle clock: only streams do.
 */
export function sessionVerdict(s: SessionState, now: number, t: SessionTimeouts): SessionVerdict {
  if (s.handshakeDoneAt === undefined) {
    return now - s.openedAt >= t.handshakeMs ? { action: "destroy", reason: "handshake-timeout" } : KEEP;
  }
  if (s.pingSentAt !== undefined && now - s.pingSentAt >= t.pingTimeoutMs) {
    return { action: "destroy", reason: "ping-timeout" };
  }
  if (s.closing) return KEEP;
  if (s.openStreams === 0 && s.idleSince !== undefined && now - s.idleSince >= t.idleMs) {
    return { action: "goaway", reason: "idle" };
  }
  if (s.pingSentAt === undefined && now - (s.pingAnsweredAt ?? s.handshakeDoneAt) >= t.pingIntervalMs) return PING;
  return KEEP;
}

/**
 * How often the server applies {@link sessionVerdict}: a quarter of the
 * shortest timeout, so each acts at most a quarter late, between 20 ms and
 * 1 s (one pass over the sessions per second is cheap even at the connection limit).
 */
export function sweepIntervalMs(t: SessionTimeouts): number {
  const shortest = Math.min(t.handshakeMs, t.idleMs, t.pingIntervalMs, t.pingTimeoutMs);
  return Math.min(1000, Math.max(20, Math.floor(shortest / 4)));
}
