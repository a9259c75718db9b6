/**
 * The slot accounting the primary process keeps for its workers (WORKERS > 1 without Redis): one
 * count per (node, model) for the whole gateway, so that together the workers never send a node
 * more requests at once than its slots — README, "Several replicas". No I/O here: the IPC shell
 * is `ipc-slot-gate.ts` (worker side) and `cluster-primary.ts` (primary side).
 */
export interface SlotTable {
  /**
   * Takes one of `limit` slots of `key` for lease `lease` of worker `owner`; false when `limit`
   * are already held. Taking a lease id the owner already holds grants it again without counting twice.
   */
  acquire(owner: number, lease: number, key: string, limit: number): boolean;
  /** Gives a lease back; unknown leases (already freed, or freed with their worker) are ignored. */
  release(owner: number, lease: number): void;
  /** Frees every slot a worker held (it died: its requests to the nodes died with it). Returns how many. */
  dropOwner(owner: number): number;
  /** Slots of `key` held right now, by all workers. */
  held(key: string): number;
}

/** The key of one (node, model) pair in the table. */
export function slotKey(node: string, model: string): string {
  return `${node}\u0000${model}`;
}

/** Creates an empty table. */
export function createSlotTable(): SlotTable {
  /** Per key: slots held. */
  const counts = new Map<string, number>();
  /** Per owner: lease id → key. */
  const owners = new Map<number, Map<number, string>>();

  const free = (key: string): void => {
    const n = (counts.get(key) ?? 0) - 1;
    if (n > 0) counts.set(key, n);
    else counts.delete(key);
  };

  return {
    acquire(owner, lease, key, limit) {
      let leases = owners.get(owner);
      if (leases?.has(lease)) return true;
      const n = counts.get(key) ?? 0;
      if (n >= limit) return false;
      counts.set(key, n + 1);
      if (!leases) {
        leases = new Map();
        owners.set(owner, leases);
      }
      leases.set(lease, key);
      return true;
    },
    release(owner, lease) {
      const leases = owners.get(owner);
      const key = leases?.get(lease);
      if (leases === undefined || key === undefined) return;
      leases.delete(lease);
      if (leases.size === 0) owners.delete(owner);
      free(key);
    },
    dropOwner(owner) {
      const leases = owners.get(owner);
      if (!leases) return 0;
      owners.delete(owner);
      for (const key of leases.values()) free(key);
      return leases.size;
    },
    held: (key) => counts.get(key) ?? 0,
  };
}
