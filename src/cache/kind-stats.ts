import type { KindStats } from "./cache-types.js";

/** Most distinct kinds tracked, "other" included; keys of any further kind are counted under "other". */
const MAX_KINDS = 64;

/** The kind of a key: its first segment, up to the first ':' (the whole key if it has none). */
export function kindOf(key: string): string {
  const colon = key.indexOf(":");
  return colon < 0 ? key : key.slice(0, colon);
}

/** Per-kind counters with a bounded number of kinds, so odd keys cannot grow the stats without end. */
export interface KindCounters {
  hit(key: string, fromMemory: boolean): void;
  miss(key: string): void;
  error(key: string): void;
  snapshot(): Record<string, KindStats>;
}

/** Creates empty per-kind counters. */
export function createKindCounters(): KindCounters {
  const kinds = new Map<string, KindStats>();
  const of = (key: string): KindStats => {
    let kind = kindOf(key);
    let s = kinds.get(kind);
    if (s !== undefined) return s;
    if (kinds.size >= MAX_KINDS - 1) {
      kind = "other";
      s = kinds.get(kind);
      if (s !== undefined) return s;
    }
    s = { hits: 0, memoryHits: 0, misses: 0, errors: 0 };
    kinds.set(kind, s);
    return s;
  };
  return {
    hit(key, fromMemory) {
      const s = of(key);
      s.hits++;
      if (fromMemory) s.memoryHits++;
    },
    miss(key) {
      of(key).misses++;
    },
    error(key) {
      of(key).errors++;
    },
    snapshot() {
      const out: Record<string, KindStats> = {};
      for (const [kind, s] of kinds) out[kind] = { ...s };
      return out;
    },
  };
}
