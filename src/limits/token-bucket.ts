/**
 * Token bucket arithmetic (README, "Rate limits and quotas"): a bucket holds up to `capacity`
 * tokens (the burst) and refills at `ratePerSec`; a request takes one. Pure functions over
 * numbers, shared by this replica's local buckets and mirrored by the Lua script of the shared
 * bucket in Redis (`limit-scripts.ts`), so both count the same way.
 */

/** The level of a bucket that held `level` tokens at `at` (ms), refilled up to `capacity` by `now`. Levels below 0 (debts) refill too. */
export function refilled(level: number, at: number, now: number, ratePerSec: number, capacity: number): number {
  if (level >= capacity) return Math.min(level, capacity);
  const elapsed = Math.max(0, now - at);
  return Math.min(capacity, level + (elapsed * ratePerSec) / 1000);
}

/** Milliseconds until a bucket at `level` holds `need` tokens (0 when it already does), rounded up. */
export function msUntilTokens(level: number, need: number, ratePerSec: number): number {
  if (level >= need) return 0;
  if (!(ratePerSec > 0)) return Number.POSITIVE_INFINITY;
  return Math.ceil(((need - level) * 1000) / ratePerSec);
}

/**
 * One replica's share of a limit while it cannot coordinate with the others: the limit divided
 * by the replicas it knows of, never below `floor` (so every replica can still serve someone).
 */
export function shareOf(limit: number, replicas: number, floor: number): number {
  return Math.max(floor, limit / Math.max(1, replicas));
}
