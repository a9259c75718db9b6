import { randomBytes } from "node:crypto";
import type { ConnectError } from "@connectrpc/connect";
import { NO_LIMITS, limitsEnabled, limitsFor } from "../config/limits-config.js";
import type { LimitsConfig } from "../config/limits-config.js";
import { rateLimited, tokenQuotaExceeded, tooManyStreams } from "../errors/domain-errors.js";
import { createHealthTracker, logHealthChanges } from "../redis/health-state.js";
import { NOT_READY } from "../redis/redis-link.js";
import type { LinkUser, RedisCommands, RedisLink } from "../redis/redis-link.js";
import type { RedisLogger } from "../redis/redis-logger.js";
import type { Outcome } from "../util/with-timeout.js";
import {
  HEARTBEAT_SCRIPT,
  REQUEST_SCRIPT,
  STREAM_SCRIPT,
  TOKEN_SCRIPT,
  requestAnswerOf,
  streamAnswerOf,
  tokenAnswerOf,
} from "./limit-scripts.js";
import {
  ANSWER_WAIT_MS,
  applyRequestAnswer,
  newRequestHolding,
  refuseRequest,
  remainingRequests,
  reportMatters,
  reportUrgent,
  requestReport,
  requestVerdict,
  sendRequestReport,
  takeRequest,
} from "./request-allowance.js";
import type { RequestHolding, RequestLimit, RequestReport } from "./request-allowance.js";
import {
  applyStreamAnswer,
  closeStream,
  newStreamHolding,
  openStream,
  refuseStream,
  streamReport,
  streamReportMatters,
  streamVerdict,
} from "./stream-allowance.js";
import type { StreamHolding, StreamReport } from "./stream-allowance.js";
import {
  applyTokenAnswer,
  chargeTokens,
  leastLeft,
  newTokenHolding,
  sendTokenReport,
  tokenReportFailed,
  tokenWindows,
} from "./token-allowance.js";
import { quotaRetryAfterMs } from "./quota-window.js";
import type { TokenHolding, TokenLimit } from "./token-allowance.js";

/** The outcome of one call's admission. */
export interface Admission {
  /** RESOURCE_EXHAUSTED (RATE_LIMITED, TOKEN_QUOTA_EXCEEDED or TOO_MANY_STREAMS) with a RetryInfo; undefined = admitted. */
  readonly refusal: ConnectError | undefined;
  /** Requests the principal may still make (undefined: no request limit). */
  readonly remainingRequests: number | undefined;
  /** Tokens the principal may still use (undefined: no token quota, or not an inference call). */
  readonly remainingTokens: number | undefined;
  /** For an admitted call with something to give back or charge: call once when it ends, with its tokens. */
  readonly end: ((tokens: number) => void) | undefined;
}

/** What one call asks for. */
export interface CallKind {
  /** A streamed response: counts against the concurrent-stream limit while it runs. */
  readonly streaming: boolean;
  /** An inference call: judged by, and charged to, the token quotas. */
  readonly metered: boolean;
}

/**
 * Per-principal rate limits and token quotas, shared by the replicas through Redis (README,
 * "Rate limits and quotas"; docs/architecture.md, "Rate limits"). `admit` decides at once from
 * what this replica holds (never waiting on Redis); reports and leases travel in the background.
 */
export interface Limiter {
  /**
   * Admits or refuses one call of principal `name` (a principal's name, or the client's address
   * while authentication is off: `anonymous`). Never throws, never waits.
   */
  admit(name: string, anonymous: boolean, kind: CallKind): Admission;
  /** Applies new limits (config reload): they govern the next call; running calls keep their slot and are charged as before. */
  update(limits: LimitsConfig): void;
  /** True while any principal has any limit. */
  enabled(): boolean;
  /** True while the limits are shared through Redis; false = each replica enforces its share. */
  shared(): boolean;
  /** The replicas this one divides limits by (live ones seen in Redis, else the configured processes). */
  replicas(): number;
  /** Principals this replica keeps state for (each forgotten after `idleMs` without calls): its memory. */
  tracked(): number;
  /** Gives back what this replica holds in Redis (bounded), stops its timer and detaches from the link. */
  close(): Promise<void>;
}

/** How the limiter is built; every field except `log` has a default. */
export interface LimiterOptions {
  /** The limits. @default none */
  limits?: LimitsConfig;
  /** The replica's Redis link (shared with the cache, node health and slot leases); none = each process alone. */
  redis?: RedisLink;
  /** Prefix of every Redis key. @default "ogw:v1:" */
  namespace?: string;
  /** The replicas to divide limits by until Redis tells (the WORKERS of this host; without Redis, always this). @default 1 */
  replicas?: number;
  /** Leases and reservations not renewed for this long expire in Redis, so a crashed replica's come back. @default 10000 */
  leaseMs?: number;
  /** How often the replica heartbeat runs, renewals and reads are due, and idle principals are forgotten. @default 1000 */
  tickMs?: number;
  /** A principal without calls (and open streams) for this long is forgotten here: its lease goes back. @default 10000 */
  idleMs?: number;
  /** The clock (tests). @default Date.now */
  now?: () => number;
  /** Where changes between shared and local enforcement are reported, one line per change. */
  log: RedisLogger;
}

/** Logged (warn) once each time Redis is lost: from then on each replica enforces its share. */
export const LIMITS_LOCAL_MSG = "redis unavailable, each replica enforces its share of the rate limits";
/** Logged (info) when the limits are first shared through Redis. */
export const LIMITS_SHARED_MSG = "rate limits shared through redis";
/** Logged (info) when they are shared again after an outage. */
export const LIMITS_SHARED_AGAIN_MSG = "rate limits shared through redis again";

/** How long a refused stream is told to wait when no slot is about to come: streams end when they end. */
const STREAM_RETRY_MS = 1_000;

interface Resolved {
  readonly requests: RequestLimit | undefined;
  readonly streams: number | undefined;
  readonly tokens: TokenLimit | undefined;
}

interface PrincipalState {
  /** The Redis key suffix: kind and name, URI-encoded. */
  readonly key: string;
  readonly name: string;
  readonly anonymous: boolean;
  version: number;
  limits: Resolved;
  lastSeen: number;
  req: RequestHolding | undefined;
  streams: StreamHolding | undefined;
  tokens: TokenHolding | undefined;
  syncing: boolean;
  again: boolean;
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function resolve(limits: LimitsConfig, name: string): Resolved {
  const s = limitsFor(limits, name);
  return {
    requests: s.requestsPerSecond === undefined ? undefined : { ratePerSec: s.requestsPerSecond, burst: s.burst ?? 1 },
    streams: s.concurrentStreams,
    tokens:
      s.tokensPerMinute === undefined && s.tokensPerDay === undefined
        ? undefined
        : { perMinute: s.tokensPerMinute, perDay: s.tokensPerDay },
  };
}

/** Creates the limiter; with a Redis link it starts sharing as soon as the link is usable. */
export function createLimiter(options: LimiterOptions): Limiter {
  const namespace = options.namespace ?? "ogw:v1:";
  const leaseMs = options.leaseMs ?? 10_000;
  const tickMs = options.tickMs ?? 1_000;
  const idleMs = options.idleMs ?? 10_000;
  const now = options.now ?? Date.now;
  const log = options.log;
  let limits = options.limits ?? NO_LIMITS;
  let enabled = limitsEnabled(limits);
  let version = 0;
  let replicas = Math.max(1, options.replicas ?? 1);
  let closed = false;
  const replica = randomBytes(6).toString("base64url");
  /** Every principal this replica tracks: by name, and (authentication off) by client address. */
  const named = new Map<string, PrincipalState>();
  const byAddress = new Map<string, PrincipalState>();
  const everyPrincipal = (): PrincipalState[] => [...named.values(), ...byAddress.values()];

  // --- The shared view: up only after a command succeeded, down with the link or any failed command.
  const link = options.redis;
  const state = link
    ? createHealthTracker(
        logHealthChanges(log, link.label, {
          up: LIMITS_SHARED_MSG,
          upAgain: LIMITS_SHARED_AGAIN_MSG,
          down: LIMITS_LOCAL_MSG,
        }),
      )
    : undefined;
  const user: LinkUser | undefined = link?.attach({
    onChange(change, reason) {
      // While no principal has limits there is nothing to share, and nothing to report about it.
      if (change === "down") {
        if (enabled) state?.update(false, true, reason ?? "redis not ready");
      }
      // Connected (again): heartbeat at once, which brings the shared view up and sends what waited.
      else void tick();
    },
  });
  const shared = (): boolean => (state?.up() ?? false) && (user?.healthy() ?? false);
  const run = async <T>(op: (c: RedisCommands) => Promise<T>): Promise<Outcome<T>> => {
    if (user === undefined) return { ok: false, error: NOT_READY };
    const out = await user.run(op);
    if (!out.ok && out.error !== NOT_READY && !closed) state?.update(false, true, errorMessage(out.error));
    return out;
  };
  const keyOf = (kind: string, p: PrincipalState): string => `${namespace}rl:${kind}:${p.key}`;

  // --- Per principal.
  function stateOf(name: string, anonymous: boolean, at: number): PrincipalState {
    const map = anonymous ? byAddress : named;
    let p = map.get(name);
    if (p === undefined) {
      p = {
        // Names and addresses apart (a principal may be called "10.0.0.1"); URI-encoded so a ":" in a name cannot shift the key.
        key: encodeURIComponent(anonymous ? `a:${name}` : `p:${name}`),
        anonymous,
        name,
        version,
        limits: resolve(limits, name),
        lastSeen: at,
        req: undefined,
        streams: undefined,
        tokens: undefined,
        syncing: false,
        again: false,
      };
      map.set(name, p);
    } else if (p.version !== version) {
      p.version = version;
      p.limits = resolve(limits, name);
    }
    p.lastSeen = at;
    return p;
  }

  /** Starts an urgent report for `p` unless one runs (then it runs again after it). Never rejects. */
  function report(p: PrincipalState): Promise<void> {
    if (!shared() || closed) return Promise.resolve();
    if (p.syncing) {
      p.again = true;
      return Promise.resolve();
    }
    p.syncing = true;
    return (async () => {
      try {
        do {
          p.again = false;
          await reportOnce(p, "urgent");
        } while (p.again && shared() && !closed);
      } catch (err) {
        log.warn({ err: errorMessage(err) }, "rate limit report failed");
      } finally {
        p.syncing = false;
      }
    })();
  }

  /**
   * One round trip for `p`, each report one EVAL on its own key: "urgent" (after a call) sends
   * what cannot wait — credit to charge, a lease or reservation to change, the first read of the
   * token use; "tick" also sends used pool tokens and token charges, renews leases and reservations
   * near their end and re-reads the token use of active principals; "release" gives everything back.
   */
  async function reportOnce(p: PrincipalState, mode: "urgent" | "tick" | "release"): Promise<void> {
    const at = now();
    const releasing = mode === "release";
    const tick = mode !== "urgent";
    const renewBy = at + (leaseMs * 2) / 3;
    const { requests, streams, tokens } = p.limits;
    let req: RequestReport | undefined;
    if (p.req !== undefined && requests !== undefined) {
      const r = requestReport(p.req, requests, replicas, at, releasing);
      const due = tick && p.req.pool > 0 && p.req.poolExpiresAt < renewBy;
      if (reportUrgent(r) || (tick && reportMatters(r)) || due) req = r;
    }
    let str: StreamReport | undefined;
    if (p.streams !== undefined && streams !== undefined) {
      const r = streamReport(p.streams, streams, replicas, at, releasing);
      const due = tick && p.streams.reserved > 0 && p.streams.reservedUntil < renewBy;
      if (streamReportMatters(p.streams, r, streams, replicas) || due) str = r;
    }
    let charge: number | undefined;
    const th = p.tokens;
    if (th !== undefined && tokens !== undefined && th.sending === 0) {
      const read = th.readAt === 0 || (mode === "tick" && at - th.readAt >= tickMs && at - p.lastSeen < idleMs);
      if (read || (tick && th.pending > 0)) charge = th.pending;
    }
    if (req === undefined && str === undefined && charge === undefined) return;

    if (req !== undefined) sendRequestReport(p.req!, req);
    if (charge !== undefined) sendTokenReport(th!);
    const out = await run((c) =>
      Promise.all([
        req === undefined
          ? undefined
          : c.eval(
              REQUEST_SCRIPT,
              1,
              keyOf("req", p),
              replica,
              requests!.ratePerSec,
              requests!.burst,
              req.used,
              req.debt,
              req.refund,
              req.want,
              leaseMs,
            ),
        str === undefined
          ? undefined
          : c.eval(STREAM_SCRIPT, 1, keyOf("streams", p), replica, streams!, str.open, str.want, leaseMs),
        charge === undefined ? undefined : c.eval(TOKEN_SCRIPT, 1, keyOf("tokens", p), charge),
      ]),
    );
    const done = now();
    const [ra, sa, ta] = out.ok ? out.value : [undefined, undefined, undefined];
    let odd = false;
    if (req !== undefined) {
      const a = requestAnswerOf(ra);
      // No answer: what was sent is forgiven (Redis may or may not have it); the pool stays until its lease ends.
      if (a !== undefined) applyRequestAnswer(p.req!, a, at, done, leaseMs);
      else odd ||= out.ok;
    }
    if (str !== undefined) {
      const a = streamAnswerOf(sa);
      if (a !== undefined) applyStreamAnswer(p.streams!, str, a, streams!, at, done, leaseMs);
      else odd ||= out.ok;
    }
    if (charge !== undefined) {
      const a = tokenAnswerOf(ta);
      if (a !== undefined) applyTokenAnswer(th!, a, done);
      else {
        tokenReportFailed(th!);
        odd ||= out.ok;
      }
    }
    if (odd) log.warn({ redis: link?.label }, "rate limit script gave an unexpected answer");
  }

  // --- The timer: heartbeat, renewals, reads, forgetting idle principals.
  let ticking = false;
  async function tick(): Promise<void> {
    if (ticking || closed) return;
    ticking = true;
    try {
      if (enabled && user?.healthy()) {
        const out = await run((c) => c.eval(HEARTBEAT_SCRIPT, 1, `${namespace}rl:replicas`, replica, 3 * tickMs));
        if (out.ok && typeof out.value === "number" && out.value >= 1) {
          replicas = out.value;
          state?.update(true, false);
        }
      }
      const at = now();
      const work: Promise<void>[] = [];
      for (const p of everyPrincipal()) {
        const forget = (): void => void (p.anonymous ? byAddress : named).delete(p.name);
        const idle = at - p.lastSeen >= idleMs && (p.streams?.open ?? 0) === 0;
        if (idle) {
          // Gives back its lease and reservation, sends its last charges, then forgets it. Without
          // Redis it is forgotten at once unless charges wait (kept 6× longer for them).
          const waiting = (p.tokens?.pending ?? 0) > 0;
          if (shared()) {
            const seen = p.lastSeen;
            work.push(
              exclusive(p, "release", () => {
                // A call that came meanwhile keeps it (what was given back is leased again when needed).
                if (p.lastSeen === seen && (p.streams?.open ?? 0) === 0) forget();
              }),
            );
          } else if (!waiting || at - p.lastSeen >= 6 * idleMs) forget();
        } else if (shared()) {
          work.push(exclusive(p, "tick"));
        }
      }
      await Promise.all(work);
    } catch (err) {
      log.warn({ err: errorMessage(err) }, "rate limit tick failed");
    } finally {
      ticking = false;
    }
  }
  /** Runs one report of `mode` unless another runs for `p` (then nothing: the next tick comes); urgent reports that queued meanwhile follow. */
  async function exclusive(p: PrincipalState, mode: "tick" | "release", after?: () => void): Promise<void> {
    if (p.syncing) return;
    p.syncing = true;
    try {
      await reportOnce(p, mode);
      after?.();
    } finally {
      p.syncing = false;
      if (p.again) void report(p);
    }
  }
  const timer = setInterval(() => void tick(), tickMs);
  timer.unref();

  // --- Admission.
  function admit(name: string, anonymous: boolean, kind: CallKind): Admission {
    const at = now();
    const p = stateOf(name, anonymous, at);
    const { requests, streams, tokens } = p.limits;
    const isShared = shared();
    let dirty = false;

    const th = kind.metered && tokens !== undefined ? (p.tokens ??= newTokenHolding()) : undefined;
    if (th !== undefined && th.readAt === 0) dirty = true;
    const rh = requests !== undefined ? (p.req ??= newRequestHolding(requests, replicas, at)) : undefined;
    const sh = kind.streaming && streams !== undefined ? (p.streams ??= newStreamHolding()) : undefined;

    let refusal: ConnectError | undefined;
    const windows = th === undefined ? undefined : tokenWindows(th, tokens!, replicas, isShared, at);
    const quotaWait = windows === undefined ? undefined : quotaRetryAfterMs(windows, at);
    const rv = rh === undefined ? undefined : requestVerdict(rh, requests!, replicas, isShared, at);
    const sv = sh === undefined ? undefined : streamVerdict(sh, streams!, replicas, isShared, at);
    if (quotaWait !== undefined) {
      refusal = tokenQuotaExceeded(name, quotaWait);
    } else if (rv !== undefined && !rv.admit) {
      refusal = rateLimited(name, requests!.ratePerSec, requests!.burst, rv.retryAfterMs);
    } else if (sv !== undefined && !sv.admit) {
      const soon = isShared && p.syncing && sh!.credit === 0;
      refusal = tooManyStreams(name, streams!, soon ? ANSWER_WAIT_MS : STREAM_RETRY_MS);
    }
    if (refusal !== undefined) {
      // A refusal asks for more: the next report leases more tokens or reserves one more slot.
      if (rh !== undefined && rv !== undefined && !rv.admit) {
        refuseRequest(rh);
        dirty = true;
      }
      if (sh !== undefined && sv !== undefined && !sv.admit && quotaWait === undefined && rv?.admit !== false) {
        refuseStream(sh);
        dirty = true;
      }
      if (dirty) void report(p);
      return {
        refusal,
        // Refused for the rate: none left now, whatever the estimate of the shared bucket says.
        remainingRequests:
          rh === undefined ? undefined : !rv!.admit ? 0 : remainingRequests(rh, requests!, replicas, isShared, at),
        remainingTokens: windows === undefined ? undefined : leastLeft(windows),
        end: undefined,
      };
    }

    if (rh !== undefined && rv?.admit === true) {
      takeRequest(rh, rv.from, requests!, replicas, at);
      dirty ||= reportUrgent(requestReport(rh, requests!, replicas, at, false));
    }
    if (sh !== undefined && sv?.admit === true) {
      openStream(sh, sv.from);
      dirty ||= streamReportMatters(sh, streamReport(sh, streams!, replicas, at, false), streams!, replicas);
    }
    if (dirty) void report(p);
    const end =
      sh === undefined && th === undefined
        ? undefined
        : (used: number): void => {
            const ended = now();
            p.lastSeen = ended;
            // Charges travel with the next tick (within tickMs); until then they count here.
            if (th !== undefined) chargeTokens(th, used, ended);
            if (sh === undefined) return;
            closeStream(sh);
            if (streamReportMatters(sh, streamReport(sh, streams!, replicas, ended, false), streams!, replicas))
              void report(p);
          };
    return {
      refusal: undefined,
      remainingRequests: rh === undefined ? undefined : remainingRequests(rh, requests!, replicas, isShared, at),
      // Nothing was charged by admitting: the windows judged are still the ones to tell.
      remainingTokens: windows === undefined ? undefined : leastLeft(windows),
      end,
    };
  }

  return {
    admit,
    update(next) {
      limits = next;
      enabled = limitsEnabled(next);
      version++;
    },
    enabled: () => enabled,
    shared,
    replicas: () => replicas,
    tracked: () => named.size + byAddress.size,
    async close() {
      if (closed) return;
      clearInterval(timer);
      if (user !== undefined && shared()) {
        // Give back leases and reservations and send the last charges (each bounded by the link's timeout).
        await Promise.all(everyPrincipal().map((p) => exclusive(p, "release")));
        await run((c) => c.zrem(`${namespace}rl:replicas`, replica));
      }
      closed = true;
      state?.stop();
      user?.detach();
    },
  };
}
