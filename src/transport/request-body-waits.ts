import type { ConnectError } from "@connectrpc/connect";
import { DEFAULTS } from "../config/config.js";
import { deadlineExceeded, requestBodyShed, requestBodyTimeout } from "../errors/domain-errors.js";

/** One call waiting for its request body. */
export interface BodyWait {
  /** A chunk of the body arrived: the call is no longer the first to be shed. */
  progress(): void;
  /** The body has arrived (or the call ended otherwise): the timer stops and the place is freed. Idempotent. */
  done(): void;
}

/** The calls waiting for their request body, bounded in time and in number. */
export interface RequestBodyWaits {
  /**
   * Registers a call whose headers have arrived and whose body is awaited. `expire` is called
   * at most once, unless `done` comes first, with the error the call must end with: its
   * deadline passed (`deadlineMs`, the call's time left, when given), the body did not arrive
   * within the body timeout, or the call was shed to make room for a newer one.
   */
  wait(expire: (error: ConnectError) => void, deadlineMs?: number): BodyWait;
  /** Calls waiting now. */
  readonly waiting: number;
  /** Calls ended since start because their body did not come in time, or shed. */
  readonly ended: Readonly<{ timedOut: number; shed: number }>;
}

/** Bounds of the calls waiting for their body; see the README's "Operating it". */
export interface RequestBodyLimits {
  /** Time from a call's headers to the end of its body. @default 10000 */
  timeoutMs: number;
  /**
   * Calls waiting for their body at once; a new one beyond it sheds the call that has been
   * silent longest. @default 4096
   */
  maxWaiting: number;
}

/** The defaults of `RequestBodyLimits` (the configuration's, README "Configuration"). */
export const DEFAULT_BODY_LIMITS: RequestBodyLimits = {
  timeoutMs: DEFAULTS.requestBodyTimeoutMs,
  maxWaiting: DEFAULTS.requestBodyMaxWaiting,
};

interface Entry extends BodyWait {
  expire(error: ConnectError): void;
}

/**
 * Which waiting call to shed when a new one arrives and `waiting` calls already wait with
 * `maxWaiting` allowed: the one silent longest (first in `order`), or none while there is room.
 * Pure policy, so the table test can state it.
 */
export function shedVictim<T>(order: Iterable<T>, waiting: number, maxWaiting: number): T | undefined {
  if (waiting < maxWaiting) return undefined;
  for (const first of order) return first;
  return undefined;
}

/**
 * The one register of calls waiting for their body, shared by both paths (the gRPC fast path
 * and connect-node). Each call has a timer (the body timeout or its deadline, whichever is
 * first). Calls are kept in order of their last activity (headers, then each chunk of body):
 * when `maxWaiting` are waiting and another arrives, the call silent longest is ended with
 * RESOURCE_EXHAUSTED. So a client holding thousands of streams open without a body loses them
 * to honest calls, whose bodies follow their headers within a round trip, and never holds
 * the concurrency cap (a call counts against it only once its body has arrived).
 */
export function createRequestBodyWaits(limits: RequestBodyLimits = DEFAULT_BODY_LIMITS): RequestBodyWaits {
  // Insertion order = order of last activity: the first entry has been silent longest.
  const order = new Set<Entry>();
  const ended = { timedOut: 0, shed: 0 };
  return {
    get waiting() {
      return order.size;
    },
    ended,
    wait(expire, deadlineMs) {
      const victim = shedVictim(order, order.size, limits.maxWaiting);
      if (victim !== undefined) {
        ended.shed++;
        victim.expire(requestBodyShed(limits.maxWaiting));
      }
      const byDeadline = deadlineMs !== undefined && deadlineMs < limits.timeoutMs;
      let open = true;
      const entry: Entry = {
        progress() {
          if (!open) return;
          order.delete(entry);
          order.add(entry);
        },
        done() {
          if (!open) return;
          open = false;
          clearTimeout(timer);
          order.delete(entry);
        },
        expire(error) {
          if (!open) return;
          entry.done();
          expire(error);
        },
      };
      const timer = setTimeout(
        () => {
          if (!byDeadline) ended.timedOut++;
          entry.expire(byDeadline ? deadlineExceeded() : requestBodyTimeout(limits.timeoutMs));
        },
        Math.max(0, byDeadline ? deadlineMs : limits.timeoutMs),
      );
      order.add(entry);
      return entry;
    },
  };
}
