import { Cluster, Redis } from "ioredis";
import type { ClusterOptions, RedisOptions } from "ioredis";
import type { RedisTarget } from "./redis-target.js";
import { withTimeout } from "../util/with-timeout.js";

/** An ioredis client of any form: standalone or Sentinel (`Redis`), or `Cluster`. */
export type RedisClient = Redis | Cluster;

/** How a client connects. */
export interface RedisClientOptions {
  target: RedisTarget;
  /** Shown in CLIENT LIST, to tell the gateway's connections apart. */
  connectionName: string;
  /** Longest a connect or its handshake may take before the attempt is dropped and retried. */
  connectTimeoutMs: number;
  /** Reconnect backoff: doubles from minDelayMs up to maxDelayMs, forever. */
  reconnect: { minDelayMs: number; maxDelayMs: number };
}

/**
 * Creates the command client with the failure policy that keeps a Redis outage from stalling a
 * caller: no offline queue (commands fail at once while disconnected), no retry or resend of
 * commands that were in flight when a connection dropped (their callers have moved on, and a late
 * SET could overwrite a newer invalidation), reconnect forever in the background, and
 * auto-pipelining so commands issued in one tick leave in one write (per master in a cluster).
 * No ioredis `socketTimeout` (redis/ioredis#2147): the link's heartbeat detects hung connections
 * and callers bound their commands. Connects lazily in the background; attach an "error" listener
 * at once.
 */
export function createRedisClient(o: RedisClientOptions): RedisClient {
  const { target } = o;
  const { minDelayMs, maxDelayMs } = o.reconnect;
  const retry = (times: number): number => Math.min(minDelayMs * 2 ** Math.min(Math.max(times - 1, 0), 20), maxDelayMs);
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
 * A second client like `main`, for SUBSCRIBE (a connection in subscriber mode can send nothing
 * else), named `connectionName`. Not auto-pipelined, and it does not resubscribe by itself: its
 * owner subscribes on every "ready", so it knows when the subscription really is in place. In
 * cluster mode ioredis holds the subscription on one connection of its own (named
 * `ioredis-cluster(subscriber):<connectionName>`).
 */
export function createSubscriberClient(main: RedisClient, connectionName: string): RedisClient {
  if (main instanceof Cluster) {
    return main.duplicate([], {
      enableAutoPipelining: false,
      // No CLUSTER INFO ready check: it would hold a pool connection open just for that, and
      // pub/sub does not depend on the cluster's slot coverage.
      enableReadyCheck: false,
      redisOptions: { ...main.options.redisOptions, connectionName },
    });
  }
  return main.duplicate({ autoResubscribe: false, enableAutoPipelining: false, connectionName });
}

/** The single-server connections of a client (each node's in a cluster): what the heartbeat watches. */
export function connectionsOf(client: RedisClient): Redis[] {
  return client instanceof Cluster ? client.nodes() : [client];
}

/** Closes the client: QUIT when connected (bounded by `timeoutMs`), then drops the socket regardless. */
export async function closeRedisClient(client: RedisClient, timeoutMs: number): Promise<void> {
  if (client.status === "ready") await withTimeout(() => client.quit(), timeoutMs);
  client.disconnect();
}
