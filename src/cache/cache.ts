/**
 * The cache layer's public entry (README, "Caching"; its Redis keys and channel are listed in
 * docs/architecture.md, "Redis keys and channels"): a bounded in-process LRU, in front of a shared
 * Redis when one is configured, with cross-replica invalidation and single-flight loading. Import
 * from here.
 */
export type {
  Cache,
  CacheLogger,
  CacheOptions,
  CacheStats,
  Invalidation,
  InvalidationRequest,
  KindStats,
} from "./cache-types.js";
export { CACHE_REDIS_MESSAGES, createCache } from "./create-cache.js";
export { createSingleFlight, singleFlight } from "../util/single-flight.js";
export type { SingleFlight } from "../util/single-flight.js";
export { maskRedisUrl, parseRedisUrl } from "../redis/redis-target.js";
export type { RedisAddress, RedisAuth, RedisTarget } from "../redis/redis-target.js";
export { kindOf } from "./kind-stats.js";
