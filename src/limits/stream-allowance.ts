/**
 * The concurrent-stream limit's policy on one replica (README, "Rate limits and quotas";
 * docs/architecture.md, "Rate limits"): pure functions over the plain data one replica holds for
 * one principal.
 *
 * Redis keeps, per principal, how many stream slots each replica **reserves**, and never lets the
 * reservations of all replicas together pass the limit. A replica opens streams within its
 * reservation without a Redis round trip; while it has streams of the principal open it keeps one
 * slot ahead of them (at least its share, limit / replicas), and when the last one ends it gives
 * the reservation back, so an idle replica holds nothing another could use. With its reservation
 * used up it may open **one** stream on credit until the next answer, and only while the last
 * answer showed a free slot (or it has none yet: a replica's first stream of a principal never
 * waits for Redis); so the replicas together run at most the limit plus one stream per replica.
 * A running stream is never cut. While Redis is unreachable each replica opens at most its share
 * (at least 1).
 */

/** What one replica holds and knows of one principal's stream slots. */
export interface StreamHolding {
  /** Streams open here now. */
  open: number;
  /** Slots Redis counts as reserved by this replica (at least `open` once reported). */
  reserved: number;
  /** When the reservation expires in Redis unless renewed (local ms). */
  reservedUntil: number;
  /** Streams this replica may still open on credit before the next answer (0 or 1). */
  credit: number;
  /** The most streams wanted since the last answer (open, plus refused). */
  demand: number;
  /** No larger reservation is asked for before this moment (local ms): the last answer had no room. */
  growAfter: number;
}

/** Where an opened stream's slot came from. */
export type StreamSource = "reserved" | "credit" | "local";

/** The decision on one stream. */
export type StreamVerdict = { readonly admit: true; readonly from: StreamSource } | { readonly admit: false };

/** Once Redis said every slot is taken, a larger reservation is asked for again only after this long (or a change here). */
export const STREAM_FULL_BACKOFF_MS = 100;

const RESERVED: StreamVerdict = { admit: true, from: "reserved" };
const CREDIT: StreamVerdict = { admit: true, from: "credit" };
const LOCAL: StreamVerdict = { admit: true, from: "local" };
const REFUSED: StreamVerdict = { admit: false };

/** This replica's share of the limit: limit / replicas, rounded down; `floor` at least. */
export function streamShare(max: number, replicas: number, floor: number): number {
  return Math.max(floor, Math.floor(max / Math.max(1, replicas)));
}

/** A principal seen for the first time: nothing reserved, one stream of credit. */
export function newStreamHolding(): StreamHolding {
  return { open: 0, reserved: 0, reservedUntil: 0, credit: 1, demand: 0, growAfter: 0 };
}

/** Open or refuse one stream: within the reservation, else on credit (Redis in use), or within the local share (Redis unreachable). */
export function streamVerdict(
  h: StreamHolding,
  max: number,
  replicas: number,
  shared: boolean,
  now: number,
): StreamVerdict {
  if (!shared) return h.open < streamShare(max, replicas, 1) ? LOCAL : REFUSED;
  if (h.open < h.reserved && now < h.reservedUntil) return RESERVED;
  return h.credit >= 1 ? CREDIT : REFUSED;
}

/** Records an opened stream. */
export function openStream(h: StreamHolding, from: StreamSource): void {
  h.open++;
  if (from === "credit") h.credit--;
  h.demand = Math.max(h.demand, h.open);
}

/** Records a refused stream: the next report asks for one more slot (after the backoff). */
export function refuseStream(h: StreamHolding): void {
  h.demand = Math.max(h.demand, h.open) + 1;
}

/** Records a stream that ended: the slot it frees serves what was wanted beyond it. */
export function closeStream(h: StreamHolding): void {
  h.open = Math.max(0, h.open - 1);
  h.demand = Math.min(h.demand, h.open);
}

/** What a replica reports: its open streams and the reservation it wants. */
export interface StreamReport {
  readonly open: number;
  readonly want: number;
}

/**
 * The reservation to ask for: with streams open (or refused), one slot ahead of them (or the
 * demand, when more were wanted), at least the share, at most the limit; only what is open while
 * Redis recently had no room; nothing when none is open or wanted, or when `releasing` (the
 * principal is forgotten here).
 */
export function streamReport(
  h: StreamHolding,
  max: number,
  replicas: number,
  now: number,
  releasing: boolean,
): StreamReport {
  if (releasing || (h.open === 0 && h.demand === 0)) return { open: h.open, want: 0 };
  let want = Math.min(max, Math.max(h.open + 1, streamShare(max, replicas, 0), h.demand));
  if (now < h.growAfter && want > h.reserved) want = Math.max(h.reserved, h.open);
  return { open: h.open, want };
}

/**
 * True when a report should go now (renewals are decided by the caller): to grow the
 * reservation, to register streams opened beyond it, to give it all back, or to shrink it once
 * it is more than one slot above what is wanted (so a stream ending and the next starting do not
 * each cost a round trip).
 */
export function streamReportMatters(h: StreamHolding, r: StreamReport, max: number, replicas: number): boolean {
  if (r.want > h.reserved || r.open > h.reserved) return true;
  if (r.want === 0) return h.reserved > 0;
  return h.reserved > Math.max(r.want + 1, streamShare(max, replicas, 0));
}

/** Redis' answer: the slots it now counts for this replica, and for all the others. */
export interface StreamAnswer {
  readonly mine: number;
  readonly others: number;
}

/** Applies an answer to a report sent at `sentAt`; the reservation lasts `leaseMs` unless renewed. */
export function applyStreamAnswer(
  h: StreamHolding,
  r: StreamReport,
  a: StreamAnswer,
  max: number,
  sentAt: number,
  now: number,
  leaseMs: number,
): void {
  h.reserved = a.mine;
  h.reservedUntil = sentAt + leaseMs;
  const room = a.mine + a.others < max;
  h.credit = room ? 1 : 0;
  h.growAfter = !room && a.mine < r.want ? now + STREAM_FULL_BACKOFF_MS : 0;
  h.demand = h.open;
}
