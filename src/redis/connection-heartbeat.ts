import type { Redis } from "ioredis";
import { TimeoutError, withTimeout } from "../util/with-timeout.js";

/** What the heartbeat watches and whom it tells. */
export interface HeartbeatOptions {
  /** The connections to check now (a cluster's change over time, so asked on every beat). */
  connections(): Redis[];
  /** How long a PING, or a connection's handshake, may go unanswered before the connection counts as hung. */
  hangMs: number;
  /** How often every connection is checked (and PINGed). */
  everyMs: number;
  /** A connection is hung: its socket has just been destroyed (so ioredis redials); `why` says how it was found. */
  onHang(why: string): void;
  /** Called on every beat after the checks (for time-based policy of the heartbeat's owner). */
  onBeat?(): void;
}

/**
 * Detects hung connections, which raise no event by themselves: a ready connection whose PING
 * goes unanswered for `hangMs` (a frozen server, a half-open TCP connection — also on an otherwise
 * idle subscriber), or a connection stuck in its handshake that long (a server that accepts but
 * answers nothing). Its socket is destroyed, which makes ioredis reconnect, instead of commands
 * timing out one by one until TCP keepalive gives up minutes later. (`disconnect(true)` only
 * half-closes, which a hung server never answers.) Returns the stop function.
 */
export function startHeartbeat(o: HeartbeatOptions): () => void {
  const pinging = new WeakSet<Redis>();
  const handshakeSince = new WeakMap<Redis, number>();
  let stopped = false;
  const hangUp = (c: Redis, why: string): void => {
    c.stream.destroy(new Error(why));
    o.onHang(why);
  };
  const beat = (): void => {
    for (const c of o.connections()) {
      if (c.status === "connect") {
        const since = handshakeSince.get(c);
        if (since === undefined) handshakeSince.set(c, Date.now());
        else if (Date.now() - since > o.hangMs) {
          handshakeSince.delete(c);
          hangUp(c, `no answer during the connection handshake within ${o.hangMs} ms`);
        }
        continue;
      }
      handshakeSince.delete(c);
      if (c.status !== "ready" || pinging.has(c)) continue;
      pinging.add(c);
      const stream = c.stream;
      void withTimeout(() => c.ping(), o.hangMs).then((out) => {
        pinging.delete(c);
        // Only the socket that was PINGed: a newer one has its own chance.
        if (!out.ok && out.error instanceof TimeoutError && c.stream === stream && !stopped) {
          hangUp(c, `no answer to PING within ${o.hangMs} ms`);
        }
      });
    }
    o.onBeat?.();
  };
  const timer = setInterval(beat, o.everyMs);
  timer.unref();
  return () => {
    stopped = true;
    clearInterval(timer);
  };
}
