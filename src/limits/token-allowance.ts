import { quotaRetryAfterMs, tokensLeft, windowEnd, windowIndex } from "./quota-window.js";
import type { QuotaWindow, WindowUse } from "./quota-window.js";
import { shareOf } from "./token-bucket.js";

/**
 * The token quotas' policy on one replica (README, "Rate limits and quotas"; docs/architecture.md,
 * "Rate limits"): pure functions over the plain data one replica holds for one principal.
 *
 * Redis counts the principal's tokens per UTC minute and day. A call's prompt and completion
 * tokens are charged when it ends (Ollama reports them with its last message), so a call is
 * admitted while the tokens known to be used are below the limit, and may itself go past it: a
 * running stream is never cut. A replica knows the shared count from its last answer (it reports
 * every charge at once and reads the count back at least every second while the principal calls
 * it) plus its own charges not yet answered. While Redis is unreachable it also admits only while
 * its own use in the window is below its share (limit / replicas), and sends its charges when
 * Redis is back.
 */

/** A principal's token quotas; undefined = none. */
export interface TokenLimit {
  readonly perMinute: number | undefined;
  readonly perDay: number | undefined;
}

/** What one replica holds and knows of one principal's token use. */
export interface TokenHolding {
  /** Tokens charged here and not sent to Redis yet. */
  pending: number;
  /** Tokens sent to Redis and not answered yet. */
  sending: number;
  /** The shared use of the minute at the last answer (this replica's answered charges included), and when that minute ends (local ms). */
  minuteUsed: number;
  minuteEndsAt: number;
  /** The same for the day. */
  dayUsed: number;
  dayEndsAt: number;
  /** This replica's own use in its current minute and day (the share it keeps to while Redis is unreachable). */
  ownMinute: number;
  ownMinuteIndex: number;
  ownDay: number;
  ownDayIndex: number;
  /** Its own use as it was when the report in flight left (`own*` then), and as of the last answered report: what Redis has counted. */
  sentMinute: number;
  sentMinuteIndex: number;
  sentDay: number;
  sentDayIndex: number;
  answeredMinute: number;
  answeredMinuteIndex: number;
  answeredDay: number;
  answeredDayIndex: number;
  /** When the shared use was last read (local ms). */
  readAt: number;
}

/** A principal seen for the first time: nothing known, nothing used. */
export function newTokenHolding(): TokenHolding {
  return {
    pending: 0,
    sending: 0,
    minuteUsed: 0,
    minuteEndsAt: 0,
    dayUsed: 0,
    dayEndsAt: 0,
    ownMinute: 0,
    ownMinuteIndex: 0,
    ownDay: 0,
    ownDayIndex: 0,
    sentMinute: 0,
    sentMinuteIndex: 0,
    sentDay: 0,
    sentDayIndex: 0,
    answeredMinute: 0,
    answeredMinuteIndex: 0,
    answeredDay: 0,
    answeredDayIndex: 0,
    readAt: 0,
  };
}

/**
 * The windows a call is judged by: the shared minute and day (Redis' count at the last answer,
 * while that window lasts, plus this replica's own use in it that Redis has not counted yet), and,
 * while Redis is unreachable, this replica's share of each.
 */
export function tokenWindows(
  h: TokenHolding,
  limit: TokenLimit,
  replicas: number,
  shared: boolean,
  now: number,
): WindowUse[] {
  const out: WindowUse[] = [];
  if (limit.perMinute !== undefined) {
    const index = windowIndex(now, "minute");
    const mine = h.ownMinuteIndex === index ? h.ownMinute : 0;
    const counted = h.answeredMinuteIndex === index ? h.answeredMinute : 0;
    addWindow(out, "minute", limit.perMinute, h.minuteUsed, h.minuteEndsAt, mine, counted, replicas, shared, now);
  }
  if (limit.perDay !== undefined) {
    const index = windowIndex(now, "day");
    const mine = h.ownDayIndex === index ? h.ownDay : 0;
    const counted = h.answeredDayIndex === index ? h.answeredDay : 0;
    addWindow(out, "day", limit.perDay, h.dayUsed, h.dayEndsAt, mine, counted, replicas, shared, now);
  }
  return out;
}

/** One window: the shared count while it lasts plus what of `mine` Redis has not `counted`; alone, also the share of `mine`. */
function addWindow(
  out: WindowUse[],
  w: QuotaWindow,
  max: number,
  sharedUsed: number,
  endsAt: number,
  mine: number,
  counted: number,
  replicas: number,
  shared: boolean,
  now: number,
): void {
  const current = now < endsAt;
  const end = current ? endsAt : windowEnd(now, w);
  out.push({ limit: max, used: (current ? sharedUsed : 0) + mine - counted, endsAt: end });
  if (!shared) out.push({ limit: shareOf(max, replicas, 1), used: mine, endsAt: windowEnd(now, w) });
}

/** undefined: the call may start; otherwise ms until it may (the end of the last exhausted window). */
export function tokenVerdict(
  h: TokenHolding,
  limit: TokenLimit,
  replicas: number,
  shared: boolean,
  now: number,
): number | undefined {
  return quotaRetryAfterMs(tokenWindows(h, limit, replicas, shared, now), now);
}

/** Tokens this principal may still use (the least of its windows; the `x-ratelimit-remaining-tokens` header). */
export function remainingTokens(
  h: TokenHolding,
  limit: TokenLimit,
  replicas: number,
  shared: boolean,
  now: number,
): number {
  return leastLeft(tokenWindows(h, limit, replicas, shared, now));
}

/** The tokens left in the tightest of `windows`, whole. */
export function leastLeft(windows: readonly WindowUse[]): number {
  let least = Number.POSITIVE_INFINITY;
  for (const w of windows) least = Math.min(least, tokensLeft(w) ?? least);
  return Math.floor(least);
}

/** Charges a finished call's tokens here (sent to Redis with the next report). */
export function chargeTokens(h: TokenHolding, tokens: number, now: number): void {
  if (!(tokens > 0)) return;
  h.pending += tokens;
  const minute = windowIndex(now, "minute");
  const day = windowIndex(now, "day");
  h.ownMinute = (h.ownMinuteIndex === minute ? h.ownMinute : 0) + tokens;
  h.ownMinuteIndex = minute;
  h.ownDay = (h.ownDayIndex === day ? h.ownDay : 0) + tokens;
  h.ownDayIndex = day;
}

/** Moves the pending charge into a report as it leaves (with a snapshot of this replica's own use, which Redis will have counted once it answers). Returns the charge. */
export function sendTokenReport(h: TokenHolding): number {
  const charge = h.pending;
  h.sending = charge;
  h.pending = 0;
  h.sentMinute = h.ownMinute;
  h.sentMinuteIndex = h.ownMinuteIndex;
  h.sentDay = h.ownDay;
  h.sentDayIndex = h.ownDayIndex;
  return charge;
}

/** Redis' answer: the shared use of the current minute and day (the charge just sent included) and the ms left in each. */
export interface TokenAnswer {
  readonly minuteUsed: number;
  readonly dayUsed: number;
  readonly minuteMsLeft: number;
  readonly dayMsLeft: number;
}

/** Applies an answer to the report that sent `h.sending`. */
export function applyTokenAnswer(h: TokenHolding, a: TokenAnswer, now: number): void {
  h.sending = 0;
  h.answeredMinute = h.sentMinute;
  h.answeredMinuteIndex = h.sentMinuteIndex;
  h.answeredDay = h.sentDay;
  h.answeredDayIndex = h.sentDayIndex;
  h.minuteUsed = a.minuteUsed;
  h.minuteEndsAt = now + a.minuteMsLeft;
  h.dayUsed = a.dayUsed;
  h.dayEndsAt = now + a.dayMsLeft;
  h.readAt = now;
}

/** A report that got no answer: its charge goes with the next one (counted twice if Redis applied it after all — the safe side). */
export function tokenReportFailed(h: TokenHolding): void {
  h.pending += h.sending;
  h.sending = 0;
}
