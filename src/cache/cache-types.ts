/**
 * The cache contract shared by the model-metadata code (tags, show, ps) and the embedding cache.
 * Keys are built by callers (without the namespace); values are opaque Buffers.
 */
import type { RedisLink } from "../redis/redis-link.js";
import type { RedisLogger } from "../redis/redis-logger.js";

/** The part of a pino logger the cache uses, so tests and callers can pass any pino-compatible logger. */
export type CacheLogger = RedisLogger;

/** How the cache is built; every field except `log` has a default that suits one gateway. */
export interface CacheOptions {
  /**
   * The replica's shared Redis link (src/redis/redis-link.ts), also used by node health and slot
   * leases; the cache detaches from it on close() but does not close it. Not with `redisUrl`.
   * @default undefined
   */
  redis?: RedisLink;
  /**
   * A Redis of the cache's own, for a cache used alone (tools, tests): the cache opens a link to
   * it and closes it on close(). Accepts `redis://`, `rediss://`,
   * `redis+sentinel://[[user]:password@]h1:26379,h2:26379/<masterName>[/<db>][?sentinelPassword=…]`
   * and `redis+cluster://[[user]:password@]h1:6379,h2:6379`. Neither this nor `redis` = memory only.
   * @default undefined
   */
  redisUrl?: string;
  /** Prefix of every Redis key and of the invalidation channel — namespaced and versioned keys. @default "ogw:v1:" */
  namespace?: string;
  /** Bounds of the in-process tier. @default { maxEntries: 50_000, maxBytes: 256 MiB } */
  memory?: { maxEntries?: number; maxBytes?: number };
  /** Upper bound of any single Redis command, ms, for the cache's own link (`redisUrl`); a shared link has its own. @default 250 */
  commandTimeoutMs?: number;
  /** Largest single value stored; larger values are not cached at all. @default 8 MiB */
  maxValueBytes?: number;
  /** Reconnect backoff of the cache's own link (`redisUrl`): doubles from min to max, retries forever. @default { minDelayMs: 100, maxDelayMs: 2000 } */
  reconnect?: { minDelayMs?: number; maxDelayMs?: number };
  /**
   * Kinds (first key segment) whose keys are content-addressed — a key's value never changes,
   * e.g. "show" by model digest, "emb" — and so survive the memory flush done when Redis comes
   * back (every other entry is dropped, as invalidations may have been missed meanwhile).
   * @default [] (the whole memory tier is flushed)
   */
  keepOnReconnect?: readonly string[];
  /** pino-compatible logger: `{ info(obj, msg), warn(obj, msg) }`. */
  log: CacheLogger;
}

/** What to invalidate: exact keys and/or key prefixes (both without the namespace). */
export interface InvalidationRequest {
  keys?: readonly string[];
  prefixes?: readonly string[];
}

/** An invalidation as delivered to `onInvalidate` listeners. */
export interface Invalidation {
  keys: string[];
  prefixes: string[];
}

/** Counters for one kind of key (e.g. "show", "tags", "emb"). */
export interface KindStats {
  /** get() answered with a value (from either tier). */
  hits: number;
  /** The part of `hits` answered by the in-process tier. */
  memoryHits: number;
  /** get() answered undefined. */
  misses: number;
  /** Redis commands for this kind that failed or timed out (callers were answered from memory). */
  errors: number;
}

/** A snapshot for metrics and GetStatus. */
export interface CacheStats {
  backend: "memory" | "redis";
  /** Redis reachable (always true for memory). */
  healthy: boolean;
  /** Per kind: the first key segment (up to ':'), at most 64 kinds, the rest counted as "other". */
  kinds: Record<string, KindStats>;
  /** Redis commands that failed or timed out, all kinds (including invalidation work). */
  redisErrors: number;
  memoryEntries: number;
  memoryBytes: number;
  /** Memory entries dropped to stay within maxEntries/maxBytes. */
  evictions: number;
  /** set() calls whose value exceeded maxValueBytes and was not stored. */
  oversizeSkipped: number;
  /** Invalidation messages received from other replicas. */
  invalidationsReceived: number;
  /** Invalidations waiting to be replayed in Redis once it is reachable again. */
  pendingInvalidations: number;
}

/**
 * A two-tier (memory, then Redis) cache of opaque Buffers that never fails its callers because of Redis.
 *
 * Every call that may wait on Redis takes the caller's `signal` (an RPC's deadline and cancel):
 * each Redis command is bounded by `commandTimeoutMs`, and the caller additionally stops waiting
 * as soon as its signal aborts — reads and writes then reject with the signal's reason (the
 * memory tier has already been read or written by then), invalidate() resolves (see there).
 */
export interface Cache {
  readonly backend: "memory" | "redis";
  /** Redis reachable and the invalidation channel subscribed (always true for memory). */
  healthy(): boolean;
  /** The value, or undefined on a miss. The Buffer may be shared with the cache: do not mutate it. */
  get(key: string, signal?: AbortSignal): Promise<Buffer | undefined>;
  /**
   * The memory tier's value, at once (counted as a hit when there is one); undefined says only
   * that this replica's memory has none, not that Redis has none. For per-call readers that can
   * skip a promise and a batch when the answer is at hand, and ask `get` otherwise.
   */
  peek(key: string): Buffer | undefined;
  /** Like get for many keys (fetched from Redis in one pipelined batch); order preserved. */
  getMany(keys: readonly string[], signal?: AbortSignal): Promise<(Buffer | undefined)[]>;
  /** Stores in both tiers with a TTL (ms, > 0). The value is copied. */
  set(key: string, value: Buffer, ttlMs: number, signal?: AbortSignal): Promise<void>;
  /** set() for many entries in one pipelined batch. */
  setMany(entries: readonly { key: string; value: Buffer; ttlMs: number }[], signal?: AbortSignal): Promise<void>;
  /**
   * Deletes keys (exact) and keys under prefixes, here, in Redis, and — via Redis pub/sub — in
   * the memory tier of every other replica at once. This replica's memory (and its
   * `onInvalidate` listeners) are done before the first await. Resolves once Redis has been
   * cleaned and the message has gone round (each step bounded), or as soon as `signal` aborts:
   * the Redis part then carries on in the background with the same bounds (and is replayed
   * once Redis is back if it fails) — the caller has made its change and must not lose its
   * answer to a slow Redis. Never rejects.
   */
  invalidate(what: InvalidationRequest, signal?: AbortSignal): Promise<void>;
  /** Subscribe to invalidations arriving from any replica (including this one); returns the unsubscribe. */
  onInvalidate(listener: (what: Invalidation) => void): () => void;
  /** Hit/miss/error counters per kind, plus memory-tier entries/bytes and backend state. */
  stats(): CacheStats;
  /** Closes the Redis connections and empties memory; later calls act as a memory-only cache. */
  close(): Promise<void>;
}
