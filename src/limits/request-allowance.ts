import { msUntilTokens, refilled, shareOf } from "./token-bucket.js";

/**
 * The request limit's policy on one replica (README, "Rate limits and quotas"; docs/architecture.md,
 * "Rate limits"): pure functions over the plain data one replica holds for one principal.
 *
 * The principal's token bucket lives in Redis, shared by every replica. A replica admits calls
 * without a Redis round trip, from tokens it **leased** from that bucket beforehand (its pool;
 * each already charged there, and counted there as held by this replica until used or expired,
 * so the bucket never refills past its burst while leases are out). When its pool is empty it may
 * admit **one** call on credit, charged with its next report; it gets that credit back with each
 * answer from Redis, but only from the moment the shared bucket has a token again. So the
 * replicas together admit at most burst + rate × time, plus one call per replica per Redis
 * answer. While Redis is unreachable each replica admits from its own share of the bucket: rate
 * and burst divided by the replicas it knows of.
 */

/** A request limit: a token bucket. */
export interface RequestLimit {
  /** Refill rate, tokens per second. */
  readonly ratePerSec: number;
  /** Capacity: requests that may come at once. */
  readonly burst: number;
}

/** What one replica holds and knows of one principal's request bucket. Mutated by the limiter's shell through the functions below. */
export interface RequestHolding {
  /** Tokens leased from the shared bucket and not used yet. */
  pool: number;
  /** When the lease of the pool expires in Redis unless renewed (local ms): the pool is void from then. */
  poolExpiresAt: number;
  /** Pool tokens used since the last report: Redis then stops counting them as held here. */
  used: number;
  /** Calls admitted on credit since the last report: charged to the shared bucket with it. */
  debt: number;
  /** Calls this replica may still admit on credit before the next answer (0 or 1). */
  credit: number;
  /** No credit before this moment (local ms): the shared bucket has no token until then. */
  creditFrom: number;
  /** The shared bucket's tokens at the last answer (negative: charged ahead of its refill), and when (local ms). */
  sharedTokens: number;
  sharedAt: number;
  /** This replica's share of the bucket, used alone while Redis is unreachable; drawn by every call so an outage starts from what it did. */
  localLevel: number;
  localAt: number;
  /** Calls seen (admitted or refused) since the last answer: how many tokens to lease next. */
  demand: number;
}

/** Where an admitted call's token came from. */
export type RequestSource = "pool" | "credit" | "local";

/** The decision on one call. */
export type RequestVerdict =
  | { readonly admit: true; readonly from: RequestSource }
  | { readonly admit: false; readonly retryAfterMs: number };

/** A call refused while the answer that brings new tokens is on its way is told to retry this soon. */
export const ANSWER_WAIT_MS = 20;

const FROM_POOL: RequestVerdict = { admit: true, from: "pool" };
const FROM_CREDIT: RequestVerdict = { admit: true, from: "credit" };
const FROM_LOCAL: RequestVerdict = { admit: true, from: "local" };

/** This replica's share of the bucket for use alone: burst / replicas (at least 1 token) refilled at rate / replicas. */
export function localBucket(limit: RequestLimit, replicas: number): { capacity: number; ratePerSec: number } {
  return { capacity: shareOf(limit.burst, replicas, 1), ratePerSec: limit.ratePerSec / Math.max(1, replicas) };
}

/** A principal seen for the first time: no pool, one call of credit, a full local share. */
export function newRequestHolding(limit: RequestLimit, replicas: number, now: number): RequestHolding {
  return {
    pool: 0,
    poolExpiresAt: 0,
    used: 0,
    debt: 0,
    credit: 1,
    creditFrom: 0,
    sharedTokens: limit.burst,
    sharedAt: now,
    localLevel: localBucket(limit, replicas).capacity,
    localAt: now,
    demand: 0,
  };
}

/** Admit or refuse one call: the pool first, then (Redis in use) the credit, or (Redis unreachable) the local share. */
export function requestVerdict(
  h: RequestHolding,
  limit: RequestLimit,
  replicas: number,
  shared: boolean,
  now: number,
): RequestVerdict {
  if (h.pool >= 1 && now < h.poolExpiresAt) return FROM_POOL;
  if (shared) {
    if (h.credit >= 1 && now >= h.creditFrom) return FROM_CREDIT;
    return { admit: false, retryAfterMs: Math.max(ANSWER_WAIT_MS, h.creditFrom - now) };
  }
  const local = localBucket(limit, replicas);
  const level = refilled(h.localLevel, h.localAt, now, local.ratePerSec, local.capacity);
  if (level >= 1) return FROM_LOCAL;
  return { admit: false, retryAfterMs: msUntilTokens(level, 1, local.ratePerSec) };
}

/** Records an admitted call. */
export function takeRequest(
  h: RequestHolding,
  from: RequestSource,
  limit: RequestLimit,
  replicas: number,
  now: number,
): void {
  h.demand++;
  const local = localBucket(limit, replicas);
  h.localLevel = Math.max(0, refilled(h.localLevel, h.localAt, now, local.ratePerSec, local.capacity) - 1);
  h.localAt = now;
  if (from === "pool") {
    h.pool--;
    h.used++;
  } else if (from === "credit") {
    h.credit--;
    h.debt++;
  }
}

/** Records a refused call (it raises the next lease). */
export function refuseRequest(h: RequestHolding): void {
  h.demand++;
}

/** What a replica tells the shared bucket in one report. */
export interface RequestReport {
  /** Pool tokens used since the last report. */
  readonly used: number;
  /** Calls admitted on credit, charged now. */
  readonly debt: number;
  /** Pool tokens given back (the principal is being forgotten here). */
  readonly refund: number;
  /** Tokens to lease. */
  readonly want: number;
}

/**
 * The next report. The pool is topped up to the replica's share of the burst (burst / replicas,
 * at least 1), or to the calls seen since the last answer when more came, when it falls below half
 * of that; never before the bucket has a token again. `releasing`: the principal is forgotten
 * here, so the pool goes back.
 */
export function requestReport(
  h: RequestHolding,
  limit: RequestLimit,
  replicas: number,
  now: number,
  releasing: boolean,
): RequestReport {
  const pool = now < h.poolExpiresAt ? h.pool : 0;
  if (releasing) return { used: h.used, debt: h.debt, refund: pool, want: 0 };
  const share = Math.max(1, Math.floor(limit.burst / Math.max(1, replicas)));
  const target = Math.min(limit.burst, Math.max(share, h.demand));
  const want = now >= h.creditFrom && pool < Math.max(1, target / 2) ? Math.ceil(target - pool) : 0;
  return { used: h.used, debt: h.debt, refund: 0, want };
}

/** True when a report changes something in Redis (a renewal is decided by the caller). */
export function reportMatters(r: RequestReport): boolean {
  return r.used > 0 || reportUrgent(r);
}

/**
 * True when a report cannot wait for the next tick: credit to charge, tokens to lease or give
 * back. Used pool tokens can: until reported they only keep the bucket from refilling past them,
 * the safe side.
 */
export function reportUrgent(r: RequestReport): boolean {
  return r.debt > 0 || r.refund > 0 || r.want > 0;
}

/** Takes a report's counts out of the holding as it is sent (calls admitted meanwhile go with the next one). */
export function sendRequestReport(h: RequestHolding, r: RequestReport): void {
  h.used -= r.used;
  h.debt -= r.debt;
  h.pool -= r.refund;
}

/** The shared bucket's answer to a report. */
export interface RequestAnswer {
  /** Tokens leased to this replica by this report. */
  readonly grant: number;
  /** Tokens Redis counts as leased to this replica and not used, the grant included. */
  readonly held: number;
  /** Tokens left in the shared bucket (negative: charged ahead of its refill). */
  readonly tokens: number;
  /** Ms until the shared bucket holds a token (0 = it does). */
  readonly waitMs: number;
}

/**
 * Applies an answer to a report sent at `sentAt`. Redis' count of this replica's lease is the
 * truth (a lease that expired there is gone here too): the pool is what it holds minus the pool
 * tokens used since the report left. Every answer renews the lease for `leaseMs`.
 */
export function applyRequestAnswer(
  h: RequestHolding,
  a: RequestAnswer,
  sentAt: number,
  now: number,
  leaseMs: number,
): void {
  h.pool = Math.max(0, a.held - h.used);
  h.poolExpiresAt = sentAt + leaseMs;
  h.sharedTokens = a.tokens;
  h.sharedAt = now;
  h.credit = 1;
  h.creditFrom = now + a.waitMs;
  h.demand = 0;
}

/** Requests this principal may still make here right now (best knowledge; the `x-ratelimit-remaining-requests` header). */
export function remainingRequests(
  h: RequestHolding,
  limit: RequestLimit,
  replicas: number,
  shared: boolean,
  now: number,
): number {
  const pool = now < h.poolExpiresAt ? h.pool : 0;
  if (!shared) {
    const local = localBucket(limit, replicas);
    return Math.floor(pool + refilled(h.localLevel, h.localAt, now, local.ratePerSec, local.capacity));
  }
  // Calls admitted on credit are not charged there yet.
  const tokens = refilled(h.sharedTokens, h.sharedAt, now, limit.ratePerSec, limit.burst) - h.debt;
  return Math.floor(pool + Math.max(0, tokens));
}
