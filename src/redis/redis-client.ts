import { Cluster, Redis } from "ioredis";
import type { ClusterOptions, RedisOptions } from "ioredis";
import type { RedisTarget } from "./redis-target.js";
import { withTimeout } from "../util/with-timeout.js";

/**
 * One connection to the Redis that gateway replicas share for fleet state (slot leases, …): a
 * standalone/Sentinel client or a Cluster. Separate from the cache's link, which also holds a
 * subscriber and reports cache-specific states.
 */
export type SharedRedisClient = Redis | Cluster;

/** How a shared-state connection connects. */
export interface SharedRedisClientOptions {
  target: RedisTarget;
  /** Shown in CLIENT LIST, to tell the gateway's connections apart. */
  connectionName: string;
  /** Longest a connect or its handshake may take before the attempt is dropped and retried. */
  connectTimeoutMs: number;
  /** Reconnect backoff: doubles from minDelayMs up to maxDelayMs, forever. */
  reconnect: { minDelayMs: number; maxDelayMs: number };
}

/**
 * Creates the client with the same failure policy as the cache's link (src/cache/redis-link.ts),
 * so a Redis outage never stalls a caller: no offline queue (commands fail at once while
 * disconnected), no retry or resend of commands that were in flight when a connection dropped
 * (their callers have moved on), reconnect forever in the background, and auto-pipelining so
 * commands issued in one tick leave in one write (per node in a cluster). Connects lazily in the
 * background; attach an "error" listener at once.
 */
export function createSharedRedisClient(o: SharedRedisClientOptions): SharedRedisClient {
  const { target } = o;
  const { minDelayMs, maxDelayMs } = o.reconnect;
  const retry = (times: number): number => Math.min(minDelayMs * 2 ** Math.min(Math.max(times - 1, 0), 20), maxDelayMs);
  // No ioredis `socketTimeout` (redis/ioredis#2147, see redis-link.ts): callers bound commands
  // themselves and drop hung connections with dropConnections().
  const perConnection = {
    username: target.username,
    password: target.password,
    connectTimeout: o.connectTimeoutMs,
    keepAlive: 10_000,
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    connectionName: o.connectionName,
  } satisfies RedisOptions;

  if (target.mode === "cluster") {
    const options: ClusterOptions = {
      enableOfflineQueue: false,
      enableAutoPipelining: true,
      clusterRetryStrategy: retry,
      slotsRefreshTimeout: o.connectTimeoutMs,
      redisOptions: perConnection,
    };
    return new Cluster(target.nodes, options);
  }
  const common: RedisOptions = {
    ...perConnection,
    db: target.db,
    enableOfflineQueue: false,
    enableAutoPipelining: true,
    retryStrategy: retry,
  };
  return new Redis(
    target.mode === "sentinel"
      ? {
          ...common,
          sentinels: target.sentinels,
          name: target.name,
          sentinelUsername: target.sentinelUsername,
          sentinelPassword: target.sentinelPassword,
          sentinelRetryStrategy: retry,
        }
      : { ...common, host: target.host, port: target.port, ...(target.tls ? { tls: {} } : {}) },
  );
}

/**
 * Destroys the client's sockets so it reconnects: the way out of a hung server or a half-open
 * TCP connection, on which commands would otherwise time out one by one until TCP keepalive
 * gives up minutes later. (`disconnect(true)` only half-closes, which a hung server never answers.)
 */
export function dropConnections(client: SharedRedisClient, why: string): void {
  const connections = client instanceof Cluster ? client.nodes() : [client];
  for (const c of connections) {
    if (c.status === "ready" || c.status === "connect") c.stream.destroy(new Error(why));
  }
}

/** Closes the client: QUIT when connected (bounded by `timeoutMs`), then drops the socket regardless. */
export async function closeSharedRedisClient(client: SharedRedisClient, timeoutMs: number): Promise<void> {
  if (client.status === "ready") await withTimeout(() => client.quit(), timeoutMs);
  client.disconnect();
}
