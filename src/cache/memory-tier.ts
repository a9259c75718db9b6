/** Bounds of the in-process LRU. */
export interface MemoryTierOptions {
  /** Most entries kept. @default 50_000 */
  maxEntries?: number;
  /** Most bytes kept (key length + value bytes per entry). @default 256 MiB */
  maxBytes?: number;
  /** Clock, ms; injectable so tests need not sleep. @default Date.now */
  now?: () => number;
}

/** A stored value with its absolute expiry time (ms on the tier's clock). */
export interface MemoryEntry {
  value: Buffer;
  expiresAt: number;
}

/**
 * The in-process tier: an LRU bounded by entries and bytes, with a TTL per entry (expired
 * entries are dropped lazily when read, or evicted as least recently used).
 */
export interface MemoryTier {
  /** The live entry, marked most recently used; expired entries are deleted and not returned. */
  get(key: string): MemoryEntry | undefined;
  /** Stores a private copy of `value`; false when it cannot fit (larger than maxBytes) or ttl ≤ 0. */
  set(key: string, value: Buffer, ttlMs: number): boolean;
  delete(key: string): boolean;
  /** Deletes every key starting with any of `prefixes`, in one pass over the entries; returns how many. */
  deletePrefixes(prefixes: readonly string[]): number;
  /** Deletes every entry, except those for which `keep(key)` is true. */
  clear(keep?: (key: string) => boolean): void;
  readonly size: number;
  readonly bytes: number;
  /** Entries dropped so far to respect the bounds. */
  readonly evictions: number;
}

const MiB = 1024 * 1024;

function costOf(key: string, value: Buffer): number {
  return key.length + value.byteLength;
}

/**
 * Copies into a buffer of its own: callers may reuse theirs, and slices of ioredis' or Node's
 * pooled buffers would otherwise keep much larger allocations alive behind the byte count.
 */
function ownCopy(value: Buffer): Buffer {
  const copy = Buffer.allocUnsafeSlow(value.byteLength);
  value.copy(copy);
  return copy;
}

/** Creates the bounded in-process LRU used in front of Redis (or alone without Redis). */
export function createMemoryTier(options: MemoryTierOptions = {}): MemoryTier {
  const maxEntries = options.maxEntries ?? 50_000;
  const maxBytes = options.maxBytes ?? 256 * MiB;
  const now = options.now ?? Date.now;
  if (!(maxEntries >= 1) || !(maxBytes >= 1)) throw new RangeError("memory tier bounds must be at least 1");
  // A Map iterates in insertion order: re-inserting on use keeps the least recently used first.
  const entries = new Map<string, MemoryEntry & { cost: number }>();
  let bytes = 0;
  let evictions = 0;

  const remove = (key: string): boolean => {
    const e = entries.get(key);
    if (e === undefined) return false;
    entries.delete(key);
    bytes -= e.cost;
    return true;
  };

  return {
    get(key) {
      const e = entries.get(key);
      if (e === undefined) return undefined;
      if (e.expiresAt <= now()) {
        remove(key);
        return undefined;
      }
      entries.delete(key);
      entries.set(key, e);
      return { value: e.value, expiresAt: e.expiresAt };
    },
    set(key, value, ttlMs) {
      remove(key);
      const cost = costOf(key, value);
      if (!(ttlMs > 0) || cost > maxBytes) return false;
      entries.set(key, { value: ownCopy(value), expiresAt: now() + ttlMs, cost });
      bytes += cost;
      while (entries.size > maxEntries || bytes > maxBytes) {
        const oldest = entries.keys().next();
        if (oldest.done === true) break;
        remove(oldest.value);
        evictions++;
      }
      return true;
    },
    delete: remove,
    deletePrefixes(prefixes) {
      if (prefixes.length === 0) return 0;
      if (prefixes.includes("")) {
        const n = entries.size;
        entries.clear();
        bytes = 0;
        return n;
      }
      let n = 0;
      for (const key of [...entries.keys()]) {
        if (prefixes.some((p) => key.startsWith(p)) && remove(key)) n++;
      }
      return n;
    },
    clear(keep) {
      if (keep === undefined) {
        entries.clear();
        bytes = 0;
        return;
      }
      for (const key of [...entries.keys()]) if (!keep(key)) remove(key);
    },
    get size() {
      return entries.size;
    },
    get bytes() {
      return bytes;
    },
    get evictions() {
      return evictions;
    },
  };
}
