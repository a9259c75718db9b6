/**
 * Token quota windows (README, "Rate limits and quotas"): fixed UTC windows of one minute and one
 * day. A call is admitted while the tokens used in the current window are below the limit; the
 * window's end is when a refused call will pass. Pure functions; the shared windows in Redis are
 * counted by the same rule with Redis server time (`limit-scripts.ts`).
 */

/** The two quota windows. */
export type QuotaWindow = "minute" | "day";

/** Length of each window in ms. */
export const WINDOW_MS: Readonly<Record<QuotaWindow, number>> = { minute: 60_000, day: 86_400_000 };

/** Index of the window containing `now` (ms since the epoch; UTC, so days start at 00:00 UTC). */
export function windowIndex(now: number, window: QuotaWindow): number {
  return Math.floor(now / WINDOW_MS[window]);
}

/** When the window containing `now` ends (ms since the epoch). */
export function windowEnd(now: number, window: QuotaWindow): number {
  return (windowIndex(now, window) + 1) * WINDOW_MS[window];
}

/** One window's state as a replica knows it. */
export interface WindowUse {
  /** The limit of the window; undefined = none. */
  readonly limit: number | undefined;
  /** Tokens used in the window (best knowledge). */
  readonly used: number;
  /** When the window ends (local ms). */
  readonly endsAt: number;
}

/** Tokens left in a window (0 when spent or overspent); undefined without a limit. */
export function tokensLeft(w: WindowUse): number | undefined {
  return w.limit === undefined ? undefined : Math.max(0, w.limit - w.used);
}

/**
 * Whether a call may start: undefined while every limited window has tokens left; otherwise the
 * ms until the last exhausted window ends (a call refused by both the minute and the day passes
 * only when the day ends), at least 1.
 */
export function quotaRetryAfterMs(windows: readonly WindowUse[], now: number): number | undefined {
  let until: number | undefined;
  for (const w of windows) {
    if (w.limit === undefined || w.used < w.limit) continue;
    until = Math.max(until ?? 0, w.endsAt);
  }
  return until === undefined ? undefined : Math.max(1, until - now);
}
