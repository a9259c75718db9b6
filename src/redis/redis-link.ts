import { Cluster } from "ioredis";
import { startHeartbeat } from "./connection-heartbeat.js";
import { createHealthTracker } from "./health-state.js";
import type { HealthChange, HealthTracker } from "./health-state.js";
import { closeRedisClient, connectionsOf, createRedisClient, createSubscriberClient } from "./redis-client.js";
import type { RedisClient } from "./redis-client.js";
import type { RedisLogger } from "./redis-logger.js";
import { maskRedisUrl, parseRedisUrl } from "./redis-target.js";
import { withTimeout } from "../util/with-timeout.js";
import type { Outcome } from "../util/with-timeout.js";

/**
 * The Redis commands the gateway sends (cache, node health, slot leases), common to a
 * standalone/Sentinel client and a Cluster. In cluster mode every command must keep its keys in
 * one slot.
 */
export interface RedisCommands {
  getBuffer(key: string): Promise<Buffer | null>;
  pttl(key: string): Promise<number>;
  set(key: string, value: Buffer, px: "PX", ms: number): Promise<unknown>;
  unlink(...keys: string[]): Promise<number>;
  publish(channel: string, message: string): Promise<number>;
  eval(script: string, numKeys: number, ...args: (string | number)[]): Promise<unknown>;
  zrem(key: string, ...members: string[]): Promise<number>;
  ping(): Promise<string>;
}

/** One server whose keyspace a prefix invalidation must SCAN (each master in a cluster). */
export interface ScanNode {
  scan(cursor: string, match: "MATCH", pattern: string, count: "COUNT", n: number): Promise<[string, string[]]>;
}

/** The error of `run` while the command connection is not ready: nothing was sent, so it is no Redis error. */
export const NOT_READY: Error = new Error("redis not ready");

/** How the link connects; every field except `url` and `log` has a default. */
export interface RedisLinkOptions {
  /** `redis://`, `rediss://`, `redis+sentinel://` or `redis+cluster://` (see parseRedisUrl); masked in every log line. */
  url: string;
  /** Bound of every command (REDIS_COMMAND_TIMEOUT_MS); hung connections are dropped after 4× this (≥ 1 s). @default 250 */
  commandTimeoutMs?: number;
  /**
   * Reconnect backoff, doubling from min to max, forever. Short, because until Redis is back the
   * replicas may together oversubscribe nodes and route to nodes the others know are down.
   * @default { minDelayMs: 50, maxDelayMs: 1000 }
   */
  reconnect?: { minDelayMs?: number; maxDelayMs?: number };
  /** Name of the connections in CLIENT LIST: the command connection `<name>`, the subscriber `<name>-sub`. @default "ogw" */
  connectionName?: string;
  /** Where a message handler that threw is reported (users log their own changes of state). */
  log: RedisLogger;
}

/** A pub/sub channel a user listens on. */
export interface LinkSubscription {
  channel: string;
  /** Called for every message on `channel` (several users of one channel each get it). */
  onMessage(message: string): void;
}

/** What a user of the link needs and wants to hear. */
export interface LinkUserOptions {
  /** The channel this user listens on; with one, the user is healthy only while it is subscribed. */
  subscription?: LinkSubscription;
  /**
   * The user's health changed: called once per change, never for reconnect attempts that change
   * nothing — the place for the user's own log line and for what it does in or after an outage.
   */
  onChange?(change: HealthChange, reason: string | undefined): void;
}

/**
 * One user's view of the link (the cache, node-health sharing, slot leases). "Healthy" means what
 * this user needs: the command connection is ready and, for a user with a subscription, its
 * channel is subscribed on the subscriber connection (the cache and node health need both: a
 * replica that cannot hear invalidations or verdicts must not act as if it shared them); a user
 * without a subscription (slot leases) needs only the command connection.
 */
export interface LinkUser {
  /** The Redis URL, password masked, for log lines. */
  readonly label: string;
  /** Cluster mode: multi-key commands must not span slots; SCAN must visit every master. */
  readonly cluster: boolean;
  /** The bound of every command of `run`. */
  readonly commandTimeoutMs: number;
  /** See LinkUser: commands can be sent, and this user's channel (if any) is subscribed. */
  healthy(): boolean;
  /** This user's channel is subscribed, so this replica's own messages on it come back to it. */
  subscribed(): boolean;
  /** Runs commands bounded by commandTimeoutMs; fails at once with NOT_READY while the command connection is not ready or after detach(). Never rejects. */
  run<T>(op: (redis: RedisCommands) => Promise<T>): Promise<Outcome<T>>;
  /** Servers to SCAN for keys (every master in cluster mode). */
  scanNodes(): ScanNode[];
  /** Stops this user's listeners and subscription; its later commands fail at once. The link stays open for the others. */
  detach(): void;
}

/** Counters of the link's connection events, for diagnostics and for tests that wait on them. */
export interface RedisLinkStats {
  /** The command connection is ready now. */
  commandReady: boolean;
  /** Channels subscribed on the subscriber connection now. */
  subscribedChannels: string[];
  /** Times the command connection became ready. */
  readyCount: number;
  /** Reconnect attempts scheduled, both connections. */
  reconnectAttempts: number;
  /** Connections dropped by the heartbeat as hung. */
  hangsDetected: number;
  /** The last connection error seen (no secrets: ioredis messages name hosts only). */
  lastError: string | undefined;
}

/**
 * A replica's one connection layer to Redis, shared by the cache, node-health sharing and slot
 * leases: a replica holds **two connections** for standalone and Sentinel Redis — the command
 * connection (auto-pipelined, no offline queue, commands bounded by `commandTimeoutMs`) and one
 * subscriber carrying every channel, with per-channel handlers (plus a short-lived connection to a
 * Sentinel while the master is looked up). In cluster mode it holds one command connection per
 * master (as ioredis does) plus one subscriber connection on one node (which ioredis names
 * `ioredis-cluster(subscriber):<name>-sub`), and a short-lived one for each slot refresh. The
 * subscriber is opened with the first subscription, so a link without one holds one connection.
 * Connections reconnect forever by themselves, hung ones are detected and redialled (see
 * startHeartbeat), and each user's health changes are reported once per change.
 */
export interface RedisLink {
  readonly label: string;
  readonly cluster: boolean;
  readonly commandTimeoutMs: number;
  /** Adds a user; its first health report comes in a later microtask, never from inside attach(). */
  attach(user: LinkUserOptions): LinkUser;
  stats(): RedisLinkStats;
  /** Closes both connections (QUIT, bounded); every user's commands fail at once from then on. Users detach first, after their own clean-up. */
  close(): Promise<void>;
}

/** How often every connection is checked (and PINGed) for a hang. */
const HEARTBEAT_MS = 1000;

/** How long a connection may leave a PING (or its connect handshake) unanswered before it is dropped and redialled. */
function hangTimeoutMs(commandTimeoutMs: number): number {
  return Math.max(1000, 4 * commandTimeoutMs);
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

interface UserRecord {
  readonly channel: string | undefined;
  readonly tracker: HealthTracker;
  readonly attachedAt: number;
  detached: boolean;
}

/** Connects to Redis in the background; the returned link is usable at once (its users fail fast until it is ready). Throws only for a malformed URL or bad bounds. */
export function createRedisLink(o: RedisLinkOptions): RedisLink {
  const target = parseRedisUrl(o.url);
  const label = maskRedisUrl(o.url);
  const commandTimeoutMs = o.commandTimeoutMs ?? 250;
  if (!(Number.isFinite(commandTimeoutMs) && commandTimeoutMs > 0)) {
    throw new RangeError("commandTimeoutMs must be a positive number of milliseconds");
  }
  const name = o.connectionName ?? "ogw";
  const hangMs = hangTimeoutMs(commandTimeoutMs);
  const main = createRedisClient({
    target,
    connectionName: name,
    connectTimeoutMs: hangMs,
    reconnect: { minDelayMs: o.reconnect?.minDelayMs ?? 50, maxDelayMs: o.reconnect?.maxDelayMs ?? 1000 },
  });
  const cluster = main instanceof Cluster;
  let sub: RedisClient | undefined;
  let closing: Promise<void> | undefined;
  let lastError: string | undefined;
  /** A failure (error, lost connection) happened since the command connection was last ready. */
  let failing = false;
  const counts = { ready: 0, reconnecting: 0, hangs: 0 };
  const users = new Set<UserRecord>();
  /** Message handlers by channel: what the subscriber subscribes to. */
  const handlers = new Map<string, Set<(message: string) => void>>();
  /** Channels the subscriber's current connection has confirmed. */
  const subscribed = new Set<string>();
  /** Bumped whenever the subscriber's connection goes: a SUBSCRIBE answered for an older one confirms nothing. */
  let subGeneration = 0;

  const usable = (u: UserRecord): boolean =>
    closing === undefined && main.status === "ready" && (u.channel === undefined || subscribed.has(u.channel));
  const evaluate = (failure: boolean): void => {
    for (const u of users) u.tracker.update(usable(u), failure, lastError);
  };
  const onError = (err: unknown): void => {
    lastError = errorMessage(err);
    if (main.status !== "ready") failing = true;
    evaluate(true);
  };

  main.on("error", onError);
  main.on("ready", () => {
    counts.ready++;
    failing = false;
    lastError = undefined;
    evaluate(false);
  });
  for (const ev of ["close", "end", "reconnecting"]) {
    main.on(ev, () => {
      if (ev === "reconnecting") counts.reconnecting++;
      failing = true;
      evaluate(true);
    });
  }

  const subscribeTo = (s: RedisClient, channels: string[]): void => {
    if (channels.length === 0) return;
    const generation = subGeneration;
    s.subscribe(...channels).then(
      () => {
        if (generation !== subGeneration) return;
        for (const c of channels) if (handlers.has(c)) subscribed.add(c);
        evaluate(false);
      },
      (err: unknown) => {
        lastError = errorMessage(err);
        evaluate(true);
      },
    );
  };
  const dispatch = (channel: unknown, message: unknown): void => {
    if (typeof channel !== "string" || typeof message !== "string") return;
    for (const handler of [...(handlers.get(channel) ?? [])]) {
      try {
        handler(message);
      } catch (err) {
        o.log.warn({ redis: label, channel, err: errorMessage(err) }, "redis message handler threw");
      }
    }
  };
  /** The subscriber, opened with the first subscription. */
  const subscriber = (): RedisClient => {
    if (sub !== undefined) return sub;
    const s = createSubscriberClient(main, `${name}-sub`);
    sub = s;
    s.on("error", onError);
    // Every channel, again on each (re)connect: the subscriber does not resubscribe by itself.
    s.on("ready", () => subscribeTo(s, [...handlers.keys()]));
    for (const ev of ["close", "end", "reconnecting"]) {
      s.on(ev, () => {
        if (ev === "reconnecting") counts.reconnecting++;
        subGeneration++;
        subscribed.clear();
        evaluate(true);
      });
    }
    s.on("message", dispatch);
    return s;
  };

  const stopHeartbeat = startHeartbeat({
    connections: () => [main, ...(sub === undefined ? [] : [sub])].flatMap(connectionsOf),
    hangMs,
    everyMs: HEARTBEAT_MS,
    onHang(why) {
      counts.hangs++;
      lastError = why;
    },
    onBeat() {
      // Some failures raise no event at first (a Sentinel that keeps failing over, say): a user
      // still starting after a grace period is down.
      const now = Date.now();
      for (const u of users) {
        if (u.tracker.state() === "starting" && now - u.attachedAt > 2 * hangMs) {
          u.tracker.update(usable(u), true, lastError ?? "redis not ready");
        }
      }
    },
  });

  return {
    label,
    cluster,
    commandTimeoutMs,
    attach(uo) {
      const channel = uo.subscription?.channel;
      const record: UserRecord = {
        channel,
        tracker: createHealthTracker((change, reason) => uo.onChange?.(change, reason)),
        attachedAt: Date.now(),
        detached: closing !== undefined,
      };
      const onMessage = uo.subscription?.onMessage;
      if (!record.detached) {
        users.add(record);
        if (channel !== undefined && onMessage !== undefined) {
          let set = handlers.get(channel);
          const first = set === undefined;
          if (set === undefined) handlers.set(channel, (set = new Set()));
          set.add(onMessage);
          const s = subscriber();
          if (first && s.status === "ready") subscribeTo(s, [channel]);
        }
        // Not synchronously: the user's onChange may use what attach() returns.
        queueMicrotask(() => {
          if (!record.detached) record.tracker.update(usable(record), failing, lastError);
        });
      }
      return {
        label,
        cluster,
        commandTimeoutMs,
        healthy: () => !record.detached && record.tracker.up(),
        subscribed: () => !record.detached && channel !== undefined && subscribed.has(channel),
        run(op) {
          if (record.detached || closing !== undefined || main.status !== "ready") {
            return Promise.resolve({ ok: false, error: NOT_READY });
          }
          return withTimeout(() => op(main), commandTimeoutMs);
        },
        scanNodes: () => (main instanceof Cluster ? main.nodes("master") : [main]),
        detach() {
          if (record.detached) return;
          record.detached = true;
          record.tracker.stop();
          users.delete(record);
          if (channel === undefined || onMessage === undefined) return;
          const set = handlers.get(channel);
          set?.delete(onMessage);
          if (set?.size !== 0) return;
          handlers.delete(channel);
          subscribed.delete(channel);
          if (closing === undefined && sub?.status === "ready") void sub.unsubscribe(channel).catch(() => undefined);
        },
      };
    },
    stats: () => ({
      commandReady: main.status === "ready",
      subscribedChannels: [...subscribed],
      readyCount: counts.ready,
      reconnectAttempts: counts.reconnecting,
      hangsDetected: counts.hangs,
      lastError,
    }),
    close() {
      closing ??= (async () => {
        stopHeartbeat();
        for (const u of users) {
          u.detached = true;
          u.tracker.stop();
        }
        users.clear();
        await Promise.all(
          [main, ...(sub === undefined ? [] : [sub])].map((c) => closeRedisClient(c, commandTimeoutMs)),
        );
      })();
      return closing;
    },
  };
}
