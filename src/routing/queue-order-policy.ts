/**
 * Order of admission (README, "Routing across a fleet", Admission): within a model's queue higher
 * `x-priority` goes first and FIFO within a priority; across models, the queue heads are offered
 * the free slots highest priority first, then oldest first. Pure functions.
 */

/** What the order looks at in a queued request. */
export interface Queued {
  /** Higher goes first. */
  readonly priority: number;
  /** When it joined the queue, ms. */
  readonly enqueuedAt: number;
}

/** Where a request of `priority` joins `queue`: after everyone of the same or a higher priority. */
export function queueInsertIndex(queue: readonly Pick<Queued, "priority">[], priority: number): number {
  let i = queue.length;
  while (i > 0 && queue[i - 1]!.priority < priority) i--;
  return i;
}

/** Sort order of queue heads when slots are handed out: higher priority first, then the one waiting longest. */
export function compareHeads(a: Queued, b: Queued): number {
  return b.priority - a.priority || a.enqueuedAt - b.enqueuedAt;
}
