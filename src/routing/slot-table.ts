import type { Queued } from "./queue-order-policy.js";
import { compareHeads } from "./queue-order-policy.js";

/**
 * The slot accounting the primary process keeps for its workers (WORKERS > 1 without Redis): one
 * count per (node, model) for the whole gateway, so that together the workers never send a node
 * more requests at once than its slots, and one admission order across the workers — README,
 * "Several replicas". An acquire refused because the slots are held leaves a *waiter* (one per
 * worker and key, carrying that worker's most recent rank for it); a slot that frees goes at once
 * to the best waiter (`compareWaiters`), not to whichever worker asks next. No I/O here: the IPC
 * shell is `ipc-slot-gate.ts` (worker side) and `cluster-primary.ts` (primary side).
 */
export interface SlotTable {
  /**
   * Takes one of the slots of `key` for lease `lease` of worker `owner`; false when they are all
   * held. `limit` is the node's slots for the model as that worker knows them: the table uses the
   * lowest limit the live workers last sent for the key (`effectiveLimit`). Taking a lease id the
   * owner already holds grants it again without counting twice. A refusal with a `rank` leaves (or
   * re-ranks) the owner's waiter for the key; a grant takes it away.
   */
  acquire(owner: number, lease: number, key: string, limit: number, rank?: SlotRank): boolean;
  /**
   * Gives a lease back; unknown leases (already freed, or freed with their worker) are ignored.
   * Returns the slots this handed to waiters (the shell tells their workers).
   */
  release(owner: number, lease: number, now?: number): readonly SlotGrant[];
  /**
   * Forgets a worker (it died: its requests to the nodes died with it): frees every slot it held,
   * drops its waiters and limits. Returns how many slots it held and the slots handed to waiters.
   */
  dropOwner(owner: number, now?: number): { freed: number; grants: readonly SlotGrant[] };
  /** Slots of `key` held right now, by all workers. */
  held(key: string): number;
  /** Workers waiting for a slot of `key` right now. */
  waiting(key: string): number;
  /** The slots of `key` the table enforces: the lowest limit the live workers last sent (undefined: none heard). */
  effectiveLimit(key: string): number | undefined;
}

/** Where a request stands in the admission order (see `compareWaiters`). */
export interface SlotRank extends Queued {
  /** The request's deadline, ms since the epoch: a waiter past it is dropped, not served. Absent = none. */
  readonly deadlineAt?: number | undefined;
}

/** A slot the table handed to a waiting worker: held under `lease` (negative, the table's own ids) until released. */
export interface SlotGrant {
  /** The worker it was handed to. */
  readonly owner: number;
  /** Its lease id; the worker releases it by this id. */
  readonly lease: number;
  /** The (node, model) key. */
  readonly key: string;
}

/** The key of one (node, model) pair in the table. */
export function slotKey(node: string, model: string): string {
  return `${node}\u0000${model}`;
}

/** The (node, model) pair of a key made by `slotKey`. */
export function splitSlotKey(key: string): { node: string; model: string } {
  const i = key.indexOf("\u0000");
  return { node: key.slice(0, i), model: key.slice(i + 1) };
}

/**
 * The order across workers in which a freed slot is handed out: the same as within one worker's
 * scheduler (`compareHeads`: higher priority first, then the one waiting longest), so the two
 * orders never disagree. The deadline does not reorder (it would put a younger request ahead of an
 * older one across workers but not within one); it only drops a waiter that can no longer be served.
 */
export function compareWaiters(a: SlotRank, b: SlotRank): number {
  return compareHeads(a, b);
}

/**
 * The limit the table enforces for a key, from the limits the live workers last sent for it: the
 * lowest, because a worker sends a lower one only after learning the node serves fewer at once
 * (slot learning) — trusting a higher one would let a request wait inside the node. Pure.
 */
export function lowestLimit(limits: Iterable<number>): number | undefined {
  let low: number | undefined;
  for (const l of limits) if (low === undefined || l < low) low = l;
  return low;
}

interface Waiter {
  readonly owner: number;
  readonly rank: SlotRank;
}

/** Creates an empty table. */
export function createSlotTable(): SlotTable {
  /** Per key: slots held. */
  const counts = new Map<string, number>();
  /** Per owner: lease id → key. */
  const owners = new Map<number, Map<number, string>>();
  /** Per key: each live worker's latest limit. */
  const limits = new Map<string, Map<number, number>>();
  /** Per key: each worker's waiter. */
  const waiters = new Map<string, Map<number, Waiter>>();
  /** Lease ids of slots handed to waiters: negative, so they never meet a worker's own (positive) ids. */
  let nextGrant = -1;

  const limitOf = (key: string): number => lowestLimit(limits.get(key)?.values() ?? []) ?? 1;

  const hold = (owner: number, lease: number, key: string): void => {
    counts.set(key, (counts.get(key) ?? 0) + 1);
    let leases = owners.get(owner);
    if (!leases) owners.set(owner, (leases = new Map()));
    leases.set(lease, key);
  };

  const unwait = (owner: number, key: string): void => {
    const w = waiters.get(key);
    if (w?.delete(owner) && w.size === 0) waiters.delete(key);
  };

  /** The best waiter of `key` still within its deadline (expired ones are dropped on the way). */
  const bestWaiter = (key: string, now: number): Waiter | undefined => {
    const w = waiters.get(key);
    if (!w) return undefined;
    let best: Waiter | undefined;
    for (const x of [...w.values()]) {
      if (x.rank.deadlineAt !== undefined && x.rank.deadlineAt <= now) {
        unwait(x.owner, key);
        continue;
      }
      if (best === undefined || compareWaiters(x.rank, best.rank) < 0) best = x;
    }
    return best;
  };

  /** Hands the free slots of `key` to its best waiters. */
  const handOut = (key: string, now: number, grants: SlotGrant[]): void => {
    while ((counts.get(key) ?? 0) < limitOf(key)) {
      const w = bestWaiter(key, now);
      if (w === undefined) return;
      unwait(w.owner, key);
      const lease = nextGrant--;
      hold(w.owner, lease, key);
      grants.push({ owner: w.owner, lease, key });
    }
  };

  const free = (key: string): void => {
    const n = (counts.get(key) ?? 0) - 1;
    if (n > 0) counts.set(key, n);
    else counts.delete(key);
  };

  return {
    acquire(owner, lease, key, limit, rank) {
      let known = limits.get(key);
      if (!known) limits.set(key, (known = new Map()));
      known.set(owner, Math.max(1, limit));
      if (owners.get(owner)?.has(lease)) return true;
      if ((counts.get(key) ?? 0) >= limitOf(key)) {
        if (rank !== undefined) {
          let w = waiters.get(key);
          if (!w) waiters.set(key, (w = new Map()));
          w.set(owner, { owner, rank });
        }
        return false;
      }
      unwait(owner, key);
      hold(owner, lease, key);
      return true;
    },
    release(owner, lease, now = Date.now()) {
      const leases = owners.get(owner);
      const key = leases?.get(lease);
      if (leases === undefined || key === undefined) return [];
      leases.delete(lease);
      if (leases.size === 0) owners.delete(owner);
      free(key);
      const grants: SlotGrant[] = [];
      handOut(key, now, grants);
      return grants;
    },
    dropOwner(owner, now = Date.now()) {
      for (const key of [...waiters.keys()]) unwait(owner, key);
      const touched = new Set<string>();
      for (const [key, known] of limits) {
        if (known.delete(owner)) touched.add(key);
        if (known.size === 0) limits.delete(key);
      }
      const leases = owners.get(owner);
      owners.delete(owner);
      for (const key of leases?.values() ?? []) {
        free(key);
        touched.add(key);
      }
      // Its slots are free, and its limits no longer hold the others back.
      const grants: SlotGrant[] = [];
      for (const key of touched) handOut(key, now, grants);
      return { freed: leases?.size ?? 0, grants };
    },
    held: (key) => counts.get(key) ?? 0,
    waiting: (key) => waiters.get(key)?.size ?? 0,
    effectiveLimit: (key) => lowestLimit(limits.get(key)?.values() ?? []),
  };
}
