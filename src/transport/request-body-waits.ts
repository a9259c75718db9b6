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
 * and connect-node). Each call must have its body within the body timeout (or its deadline,
 * whichever is first). Calls are kept in order of their last activity (headers, then each chunk
 * of body): when `maxWaiting` are waiting and another arrives, the call silent longest is ended
 * with RESOURCE_EXHAUSTED. So a client holding thousands of streams open without a body loses
 * them to honest calls, whose bodies follow their headers within a round trip, and never holds
 * the concurrency cap (a call counts against it only once its body has arrived).
 *
 * Mechanism, kept cheap because every call passes through it: the body timeout is the same for
 * every call, so calls expire in the order they registered and one timer, armed for the oldest,
 * serves them all (only a call whose deadline is shorter than the body timeout, given by
 * connect-node's path, gets a timer of its own); both orders are lists threaded through the
 * entries themselves. A timer per call and a `Set` of entries made the gateway's garbage
 * collector promote several kB per call out of V8's young generation, about a tenth of the
 * gateway's CPU per call (docs/architecture.md, "Cost per call").
 */
export function createRequestBodyWaits(limits: RequestBodyLimits = DEFAULT_BODY_LIMITS): RequestBodyWaits {
  const ended = { timedOut: 0, shed: 0 };
  /** Activity order: `byActivity.first` has been silent longest. */
  const byActivity = createList<Waiting>("a");
  /** Registration order, calls timed by the body timeout only: `byTimeout.first` expires first. */
  const byTimeout = createList<Waiting>("t");
  let waiting = 0;
  let sweep: ReturnType<typeof setTimeout> | undefined;
  let sweepAt = 0;

  /** Arms the one timer for the oldest call by the body timeout, unless it is armed already. */
  const arm = (): void => {
    const first = byTimeout.first;
    if (sweep !== undefined || first === undefined) return;
    sweepAt = first.expiresAt;
    // At least 1 ms: a timer that fires a little early by Date.now re-arms instead of spinning.
    sweep = setTimeout(expireDue, Math.max(1, sweepAt - Date.now()));
    // It stays armed after the last call is done (cheaper than clearing it per call): it must not
    // hold a stopping process open. A waiting call's own connection does that while it matters.
    sweep.unref();
  };
  const expireDue = (): void => {
    sweep = undefined;
    const now = Date.now();
    for (let e = byTimeout.first; e !== undefined && e.expiresAt <= now; e = byTimeout.first) {
      ended.timedOut++;
      e.expire(requestBodyTimeout(limits.timeoutMs));
    }
    arm();
  };
  /** Oldest first, for `shedVictim`; only walked when the register is full. */
  function* silentLongestFirst(): Generator<Waiting> {
    for (let e = byActivity.first; e !== undefined; e = e.aNext) yield e;
  }

  /** One waiting call: a class, not closures, so a call costs one object here. */
  class Waiting implements BodyWait {
    open = true;
    expiresAt = 0;
    own: ReturnType<typeof setTimeout> | undefined = undefined;
    aPrev: Waiting | undefined = undefined;
    aNext: Waiting | undefined = undefined;
    tPrev: Waiting | undefined = undefined;
    tNext: Waiting | undefined = undefined;
    constructor(readonly onExpire: (error: ConnectError) => void) {}
    progress(): void {
      if (!this.open || byActivity.last === this) return;
      byActivity.remove(this);
      byActivity.push(this);
    }
    done(): void {
      if (!this.open) return;
      this.open = false;
      waiting--;
      byActivity.remove(this);
      // The shared timer stays armed: when it fires it finds this call gone and re-arms.
      if (this.own !== undefined) clearTimeout(this.own);
      else byTimeout.remove(this);
    }
    expire(error: ConnectError): void {
      if (!this.open) return;
      this.done();
      this.onExpire(error);
    }
  }

  return {
    get waiting() {
      return waiting;
    },
    ended,
    wait(expire, deadlineMs) {
      const victim =
        waiting < limits.maxWaiting ? undefined : shedVictim(silentLongestFirst(), waiting, limits.maxWaiting);
      if (victim !== undefined) {
        ended.shed++;
        victim.expire(requestBodyShed(limits.maxWaiting));
      }
      const entry = new Waiting(expire);
      waiting++;
      byActivity.push(entry);
      if (deadlineMs !== undefined && deadlineMs < limits.timeoutMs) {
        entry.own = setTimeout(() => entry.expire(deadlineExceeded()), Math.max(0, deadlineMs));
      } else {
        entry.expiresAt = Date.now() + limits.timeoutMs;
        byTimeout.push(entry);
        // A sweep armed for later than this call (the wall clock was set back) is moved up.
        if (sweep !== undefined && sweepAt > entry.expiresAt) {
          clearTimeout(sweep);
          sweep = undefined;
        }
        arm();
      }
      return entry;
    },
  };
}

/** Links of one list threaded through the entries ("a": activity, "t": timeout). */
interface Linked {
  aPrev: Linked | undefined;
  aNext: Linked | undefined;
  tPrev: Linked | undefined;
  tNext: Linked | undefined;
}

/** A doubly linked list through the entries' `a*` or `t*` links: push at the end, remove anywhere, O(1). */
function createList<T extends Linked>(
  which: "a" | "t",
): { readonly first: T | undefined; readonly last: T | undefined; push(e: T): void; remove(e: T): void } {
  const prev = which === "a" ? "aPrev" : "tPrev";
  const next = which === "a" ? "aNext" : "tNext";
  let first: T | undefined;
  let last: T | undefined;
  return {
    get first() {
      return first;
    },
    get last() {
      return last;
    },
    push(e) {
      e[prev] = last;
      e[next] = undefined;
      if (last === undefined) first = e;
      else last[next] = e;
      last = e;
    },
    remove(e) {
      const p = e[prev] as T | undefined;
      const n = e[next] as T | undefined;
      if (p === undefined) {
        if (first !== e) return;
        first = n;
      } else p[next] = n;
      if (n === undefined) last = p;
      else n[prev] = p;
      e[prev] = undefined;
      e[next] = undefined;
    },
  };
}
