import { createSharedRedisClient } from "./redis-client.js";
import { Cluster, type Redis } from "ioredis";
import type { CacheLogger } from "../cache/cache-types.js";
import type { RedisTarget } from "./redis-target.js";
import { TimeoutError, withTimeout } from "../util/with-timeout.js";
import type { Outcome } from "../util/with-timeout.js";

/** The Redis commands the cache sends, common to a standalone/Sentinel client and a Cluster. */
export interface RedisCommands {
  getBuffer(key: string): Promise<Buffer | null>;
  pttl(key: string): Promise<number>;
  set(key: string, value: Buffer, px: "PX", ms: number): Promise<unknown>;
  unlink(...keys: string[]): Promise<number>;
  publish(channel: string, message: string): Promise<number>;
}

/** One server whose keyspace a prefix invalidation must SCAN (each master in a cluster). */
export interface ScanNode {
  scan(cursor: string, match: "MATCH", pattern: string, count: "COUNT", n: number): Promise<[string, string[]]>;
}

/** How the link connects and reports. */
export interface RedisLinkOptions {
  target: RedisTarget;
  /** The Redis URL with its password masked, for log lines. */
  label: string;
  /** Pub/sub channel for invalidations. */
  channel: string;
  /** Bound of every command. */
  commandTimeoutMs: number;
  /** Reconnect backoff: doubles from minDelayMs up to maxDelayMs, forever. */
  reconnect: { minDelayMs: number; maxDelayMs: number };
  log: CacheLogger;
  /** A message arrived on `channel`. */
  onMessage(message: string): void;
  /** The link became healthy (first connect, or again after an outage). */
  onUp?(): void;
  /** Prefix of the connections' names in CLIENT LIST (the subscriber adds "-sub"). @default "ogw-cache" */
  connectionName?: string;
  /** The log lines of the link's changes of state, for users other than the cache. */
  messages?: { up: string; upAgain: string; down: string };
}

/** The cache's log lines for its link's changes of state. */
const CACHE_MESSAGES = {
  up: "redis connected",
  upAgain: "redis available again",
  down: "redis unavailable, serving from memory",
};

/**
 * Connections to Redis for one pub/sub channel: a command connection (auto-pipelined, failing
 * fast while disconnected) and a dedicated subscriber. It tracks one health state for both, logs
 * once per change of state, detects hung connections, and reconnects forever by itself. The
 * cache uses it for invalidations, node-health sharing (src/routing/shared-node-health.ts) for
 * verdicts.
 */
export interface RedisLink {
  /** Cluster mode: multi-key commands must not span slots. */
  readonly cluster: boolean;
  /** Commands can be sent and the invalidation channel is subscribed. */
  healthy(): boolean;
  /** The subscriber is subscribed, so this replica's own messages come back to it. */
  subscribed(): boolean;
  /** Runs commands bounded by commandTimeoutMs; fails at once with NOT_READY while the command connection is not ready. */
  run<T>(op: (redis: RedisCommands) => Promise<T>): Promise<Outcome<T>>;
  /** Servers to SCAN for keys (every master in cluster mode). */
  scanNodes(): ScanNode[];
  /** The last connection error seen, for diagnostics (no secrets: ioredis messages name hosts only). */
  lastError(): string | undefined;
  close(): Promise<void>;
}

type Client = Redis | Cluster;

/** The error of `run` while the command connection is not ready: nothing was sent, so it is no Redis error. */
export const NOT_READY: Error = new Error("redis not ready");

/** How often every connection is checked (and PINGed) for a hang. */
const HEARTBEAT_MS = 1000;

/** How long a connection may leave a PING (or its connect handshake) unanswered before it is dropped and redialled. */
function hangTimeoutMs(commandTimeoutMs: number): number {
  return Math.max(1000, 4 * commandTimeoutMs);
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function createClients(o: RedisLinkOptions): { main: Client; sub: Client } {
  // No ioredis `socketTimeout` (redis/ioredis#2147): the link's heartbeat detects hung
  // connections instead; commands themselves are bounded by commandTimeoutMs. Commands in flight
  // when a connection drops fail at once and are never re-sent after the reconnect: their callers
  // have moved on, and a late SET could overwrite a newer invalidation.
  const main = createSharedRedisClient({
    target: o.target,
    connectionName: o.connectionName ?? "ogw-cache",
    connectTimeoutMs: hangTimeoutMs(o.commandTimeoutMs),
    reconnect: o.reconnect,
  });
  if (main instanceof Cluster) {
    return { main, sub: main.duplicate([], { enableAutoPipelining: false }) };
  }
  // The subscriber resubscribes itself on every "ready", so ioredis' own resubscription is off.
  const sub = main.duplicate({
    autoResubscribe: false,
    enableAutoPipelining: false,
    connectionName: `${o.connectionName ?? "ogw-cache"}-sub`,
  });
  return { main, sub };
}

/** Connects to Redis in the background; the returned link is usable at once (failing fast until ready). */
export function createRedisLink(o: RedisLinkOptions): RedisLink {
  const { main, sub } = createClients(o);
  let state: "starting" | "up" | "down" | "closed" = "starting";
  let subscribedNow = false;
  let lastError: string | undefined;
  const messages = o.messages ?? CACHE_MESSAGES;

  const evaluate = (failure: boolean): void => {
    if (state === "closed") return;
    const up = main.status === "ready" && subscribedNow;
    if (up && state !== "up") {
      const again = state === "down";
      state = "up";
      lastError = undefined;
      o.log.info({ redis: o.label }, again ? messages.upAgain : messages.up);
      o.onUp?.();
    } else if (!up && (state === "up" || (state === "starting" && failure))) {
      state = "down";
      o.log.warn({ redis: o.label, err: lastError }, messages.down);
    }
  };

  main.on("error", (err: unknown) => {
    lastError = errorMessage(err);
    evaluate(true);
  });
  main.on("ready", () => evaluate(false));
  for (const ev of ["close", "end", "reconnecting"]) main.on(ev, () => evaluate(true));

  sub.on("error", (err: unknown) => {
    lastError = errorMessage(err);
    evaluate(true);
  });
  sub.on("ready", () => {
    sub.subscribe(o.channel).then(
      () => {
        subscribedNow = true;
        evaluate(false);
      },
      (err: unknown) => {
        lastError = errorMessage(err);
        evaluate(true);
      },
    );
  });
  for (const ev of ["close", "end", "reconnecting"]) {
    sub.on(ev, () => {
      subscribedNow = false;
      evaluate(true);
    });
  }
  sub.on("message", (channel: unknown, message: unknown) => {
    if (channel === o.channel && typeof message === "string") o.onMessage(message);
  });

  const hangMs = hangTimeoutMs(o.commandTimeoutMs);
  // Some failures raise no event at first (a Sentinel that keeps failing over, say): call that
  // "down" after a grace period.
  const startupTimer = setTimeout(() => evaluate(true), 2 * hangMs);
  startupTimer.unref();

  // Hang detection: a ready connection whose PING goes unanswered for hangMs, or a connection
  // stuck in its handshake (the server accepted but answers nothing) that long, has its socket
  // destroyed, which makes ioredis reconnect — also on the otherwise idle subscriber, and for a
  // half-open TCP connection that would otherwise look fine until the next command.
  const pinging = new WeakSet<Redis>();
  const handshakeSince = new WeakMap<Redis, number>();
  const hangUp = (c: Redis, why: string): void => {
    lastError = why;
    c.stream.destroy(new Error(why));
  };
  const heartbeat = setInterval(() => {
    const connections = [main, sub].flatMap((c) => (c instanceof Cluster ? c.nodes() : [c]));
    for (const c of connections) {
      if (c.status === "connect") {
        const since = handshakeSince.get(c);
        if (since === undefined) handshakeSince.set(c, Date.now());
        else if (Date.now() - since > hangMs) {
          handshakeSince.delete(c);
          hangUp(c, `no answer during the connection handshake within ${hangMs} ms`);
        }
        continue;
      }
      handshakeSince.delete(c);
      if (c.status !== "ready" || pinging.has(c)) continue;
      pinging.add(c);
      const stream = c.stream;
      withTimeout(() => c.ping(), hangMs).then(
        (out) => {
          pinging.delete(c);
          if (!out.ok && out.error instanceof TimeoutError && c.stream === stream && state !== "closed") {
            hangUp(c, `no answer to PING within ${hangMs} ms`);
          }
        },
        () => pinging.delete(c),
      );
    }
  }, HEARTBEAT_MS);
  heartbeat.unref();

  const closeClient = async (c: Client): Promise<void> => {
    if (c.status === "ready") await withTimeout(() => c.quit(), o.commandTimeoutMs);
    c.disconnect();
  };

  return {
    cluster: main instanceof Cluster,
    healthy: () => state === "up",
    subscribed: () => subscribedNow,
    run(op) {
      if (state === "closed" || main.status !== "ready") {
        return Promise.resolve({ ok: false, error: NOT_READY });
      }
      return withTimeout(() => op(main), o.commandTimeoutMs);
    },
    scanNodes: () => (main instanceof Cluster ? main.nodes("master") : [main]),
    lastError: () => lastError,
    async close() {
      if (state === "closed") return;
      state = "closed";
      clearTimeout(startupTimer);
      clearInterval(heartbeat);
      await Promise.all([closeClient(main), closeClient(sub)]);
    },
  };
}
