import { randomUUID } from "node:crypto";
import type { Cache, CacheOptions, CacheStats, Invalidation, InvalidationRequest } from "./cache-types.js";
import { decodeInvalidation, encodeInvalidation, splitInvalidation } from "./invalidation-message.js";
import { createKindCounters, kindOf } from "./kind-stats.js";
import { createMemoryTier } from "./memory-tier.js";
import { deleteInRedis } from "./redis-delete.js";
import { logHealthChanges } from "../redis/health-state.js";
import { NOT_READY, createRedisLink } from "../redis/redis-link.js";
import type { LinkUser, RedisCommands, RedisLink } from "../redis/redis-link.js";
import { untilAborted } from "../util/until-aborted.js";
import type { Outcome } from "../util/with-timeout.js";

const MiB = 1024 * 1024;
/** Most keys + prefixes remembered for replay while Redis is unreachable; beyond it the whole namespace is invalidated on return. */
const MAX_PENDING = 1000;

/** The cache's log lines for its changes of state (operators and tests match them exactly). */
export const CACHE_REDIS_MESSAGES = {
  up: "redis connected",
  upAgain: "redis available again",
  down: "redis unavailable, serving from memory",
} as const;

/**
 * Creates the gateway's cache: an in-process LRU, in front of Redis when a link (`redis`) or a
 * URL (`redisUrl`) is given. Returns at once; Redis connects (and reconnects) in the background,
 * and every Redis failure falls back to the memory tier instead of failing the caller. Throws
 * only for a malformed URL or bad bounds.
 *
 * Keys are `<namespace><kind>:…` with a TTL each; invalidations travel on the channel
 * `<namespace>invalidate` (docs/architecture.md, "Redis keys and channels"). The cache counts as
 * connected (`healthy()`) while the command connection is ready and that channel is subscribed:
 * without the subscription it would miss other replicas' invalidations.
 *
 * Memory flush on reconnect: whenever Redis becomes reachable again (and on the first connect),
 * every memory entry is dropped except kinds listed in `keepOnReconnect`, because invalidations
 * published while this replica was cut off were missed. Invalidations this replica could not
 * carry out in Redis meanwhile are remembered (bounded) and replayed then.
 */
export function createCache(options: CacheOptions): Cache {
  const namespace = options.namespace ?? "ogw:v1:";
  const maxValueBytes = options.maxValueBytes ?? 8 * MiB;
  const keepOnReconnect = new Set(options.keepOnReconnect ?? []);
  const log = options.log;
  if (options.redis !== undefined && options.redisUrl !== undefined) {
    throw new RangeError("give the cache either a shared Redis link (redis) or a URL of its own (redisUrl), not both");
  }
  if (!(maxValueBytes > 0)) throw new RangeError("maxValueBytes must be positive");
  const ownLink =
    options.redisUrl === undefined
      ? undefined
      : createRedisLink({
          url: options.redisUrl,
          commandTimeoutMs: options.commandTimeoutMs ?? 250,
          reconnect: {
            minDelayMs: options.reconnect?.minDelayMs ?? 100,
            maxDelayMs: options.reconnect?.maxDelayMs ?? 2000,
          },
          connectionName: "ogw-cache",
          log,
        });
  const shared: RedisLink | undefined = options.redis ?? ownLink;
  const commandTimeoutMs = shared?.commandTimeoutMs ?? options.commandTimeoutMs ?? 250;
  if (!(commandTimeoutMs > 0)) throw new RangeError("commandTimeoutMs must be positive");
  const channel = `${namespace}invalidate`;

  const memory = createMemoryTier(options.memory ?? {});
  const counters = createKindCounters();
  const listeners = new Set<(what: Invalidation) => void>();
  const origin = randomUUID();
  const echoWaiters = new Map<number, () => void>();
  const pending = { keys: new Set<string>(), prefixes: new Set<string>() };
  let messageSeq = 0;
  /** Bumped by every invalidation or flush: a Redis read that started before must not refill memory. */
  let epoch = 0;
  let redisErrors = 0;
  let oversizeSkipped = 0;
  let invalidationsReceived = 0;
  let replaying = false;
  /** Redis halves of invalidations still running (their callers may have stopped waiting). */
  const invalidating = new Set<Promise<void>>();

  const notify = (what: Invalidation): void => {
    for (const listener of [...listeners]) {
      try {
        listener({ keys: [...what.keys], prefixes: [...what.prefixes] });
      } catch (err) {
        log.warn({ err: err instanceof Error ? err.message : String(err) }, "cache invalidation listener threw");
      }
    }
  };

  const dropLocal = (keys: readonly string[], prefixes: readonly string[]): void => {
    for (const k of keys) memory.delete(k);
    memory.deletePrefixes(prefixes);
    epoch++;
  };

  const onMessage = (text: string): void => {
    const m = decodeInvalidation(text);
    if (m === undefined) return;
    dropLocal(m.keys, m.prefixes);
    if (m.origin === origin) {
      echoWaiters.get(m.id)?.();
      return;
    }
    invalidationsReceived++;
    notify({ keys: m.keys, prefixes: m.prefixes });
  };

  /** Connected (again): memory may have missed invalidations meanwhile, and ours may wait for replay. */
  const onUp = (): void => {
    if (keepOnReconnect.size === 0) memory.clear();
    else memory.clear((key) => keepOnReconnect.has(kindOf(key)));
    epoch++;
    replayPending().catch((err: unknown) => {
      log.warn({ err: err instanceof Error ? err.message : String(err) }, "cache invalidation replay failed");
    });
  };
  const logChange = shared === undefined ? undefined : logHealthChanges(log, shared.label, CACHE_REDIS_MESSAGES);
  const link: LinkUser | undefined = shared?.attach({
    subscription: { channel, onMessage },
    onChange(change, reason) {
      logChange?.(change, reason);
      if (change !== "down") onUp();
    },
  });

  /** Runs a Redis operation for `keys`' kinds, counting real failures (not "disconnected"). */
  const redis = async <T>(keys: readonly string[], op: (r: RedisCommands) => Promise<T>): Promise<Outcome<T>> => {
    if (link === undefined) return { ok: false, error: NOT_READY };
    const out = await link.run(op);
    if (!out.ok && out.error !== NOT_READY) {
      redisErrors++;
      for (const k of new Set(keys.map(kindOf))) counters.error(k);
    }
    return out;
  };

  const addPending = (keys: readonly string[], prefixes: readonly string[]): void => {
    for (const k of keys) pending.keys.add(k);
    for (const p of prefixes) pending.prefixes.add(p);
    if (pending.prefixes.has("") || pending.keys.size + pending.prefixes.size > MAX_PENDING) {
      // Too much to remember: invalidating the whole namespace is a safe over-approximation.
      pending.keys.clear();
      pending.prefixes.clear();
      pending.prefixes.add("");
    }
  };

  const expectEcho = (id: number): Promise<void> =>
    new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        echoWaiters.delete(id);
        resolve();
      };
      const timer = setTimeout(done, commandTimeoutMs);
      timer.unref();
      echoWaiters.set(id, done);
    });

  /** PUBLISHes the invalidation (split into bounded messages) and waits for its own echo. */
  const publish = async (keys: readonly string[], prefixes: readonly string[]): Promise<boolean> => {
    if (link === undefined) return true;
    const waitForEcho = link.subscribed();
    const echoes: Promise<void>[] = [];
    const out = await redis([...keys, ...prefixes], (r) =>
      Promise.all(
        splitInvalidation(keys, prefixes).map((group) => {
          const id = ++messageSeq;
          if (waitForEcho) echoes.push(expectEcho(id));
          return r.publish(channel, encodeInvalidation({ origin, id, ...group }));
        }),
      ),
    );
    if (!out.ok) return false;
    // The echo proves Redis has handed the message to every subscriber; one more turn of the
    // event loop lets other caches of this process read theirs too.
    await Promise.all(echoes);
    await new Promise((resolve) => setImmediate(resolve));
    return true;
  };

  /** The Redis half of an invalidation; false when it must be replayed once Redis is back. */
  const invalidateInRedis = async (keys: readonly string[], prefixes: readonly string[]): Promise<boolean> => {
    if (link === undefined) return true;
    const del = await deleteInRedis(link, namespace, keys, prefixes, Math.max(2000, 20 * commandTimeoutMs));
    redisErrors += del.errors;
    if (del.truncated) {
      log.warn(
        { prefixes: prefixes.slice(0, 10) },
        "cache prefix invalidation stopped at its time budget; the remaining Redis entries expire by TTL",
      );
    }
    if (!del.ok) return false;
    return publish(keys, prefixes);
  };

  /** Carries out remembered invalidations while Redis stays healthy (including ones added meanwhile). */
  const replayPending = async (): Promise<void> => {
    if (replaying) return;
    replaying = true;
    try {
      while ((pending.keys.size > 0 || pending.prefixes.size > 0) && link?.healthy() === true) {
        const keys = [...pending.keys];
        const prefixes = [...pending.prefixes];
        pending.keys.clear();
        pending.prefixes.clear();
        if (!(await invalidateInRedis(keys, prefixes))) {
          addPending(keys, prefixes);
          break;
        }
      }
    } finally {
      replaying = false;
    }
  };

  const readRedis = async (keys: readonly string[]): Promise<(Buffer | undefined)[]> => {
    const startEpoch = epoch;
    const out = await redis(keys, (r) =>
      Promise.all(keys.map((k) => Promise.all([r.getBuffer(namespace + k), r.pttl(namespace + k)]))),
    );
    if (!out.ok) return keys.map(() => undefined);
    return out.value.map(([value, pttl], i) => {
      const key = keys[i];
      if (value === null || key === undefined) return undefined;
      // PTTL ≤ 0: expired in between, or (never written by us) no TTL — do not keep it here.
      if (pttl > 0 && epoch === startEpoch && value.byteLength <= maxValueBytes) memory.set(key, value, pttl);
      return value;
    });
  };

  const writeAll = async (
    entries: readonly { key: string; value: Buffer; ttlMs: number }[],
    signal?: AbortSignal,
  ): Promise<void> => {
    const store: { key: string; value: Buffer; ttl: number }[] = [];
    const drop: string[] = [];
    for (const { key, value, ttlMs } of entries) {
      if (!Number.isFinite(ttlMs)) throw new RangeError(`cache ttlMs must be a finite number of ms (key ${key})`);
      if (value.byteLength > maxValueBytes || ttlMs <= 0) {
        // Not stored; an older value under the key is stale now, so it goes too.
        if (value.byteLength > maxValueBytes) oversizeSkipped++;
        memory.delete(key);
        drop.push(key);
        continue;
      }
      const ttl = Math.ceil(ttlMs);
      memory.set(key, value, ttl);
      store.push({ key, value, ttl });
    }
    if (link === undefined) return;
    const written = redis(
      entries.map((e) => e.key),
      (r) =>
        Promise.all([
          ...store.map((e) => r.set(namespace + e.key, e.value, "PX", e.ttl)),
          ...drop.map((k) => r.unlink(namespace + k)),
        ]),
    );
    await untilAborted(written, signal);
  };

  const getMany = async (keys: readonly string[], signal?: AbortSignal): Promise<(Buffer | undefined)[]> => {
    const result: (Buffer | undefined)[] = [];
    const missing: string[] = [];
    const missingAt: number[] = [];
    keys.forEach((key, i) => {
      const hit = memory.get(key);
      result.push(hit?.value);
      if (hit !== undefined) counters.hit(key, true);
      else {
        missing.push(key);
        missingAt.push(i);
      }
    });
    if (missing.length > 0) {
      const fetched =
        link === undefined ? missing.map(() => undefined) : await untilAborted(readRedis(missing), signal);
      fetched.forEach((value, j) => {
        const key = missing[j] ?? "";
        const at = missingAt[j] ?? 0;
        result[at] = value;
        if (value === undefined) counters.miss(key);
        else counters.hit(key, false);
      });
    }
    return result;
  };

  return {
    backend: link === undefined ? "memory" : "redis",
    healthy: () => link === undefined || link.healthy(),
    async get(key, signal) {
      const [value] = await getMany([key], signal);
      return value;
    },
    peek(key) {
      const hit = memory.get(key);
      if (hit === undefined) return undefined;
      counters.hit(key, true);
      return hit.value;
    },
    getMany,
    async set(key, value, ttlMs, signal) {
      await writeAll([{ key, value, ttlMs }], signal);
    },
    async setMany(entries, signal) {
      await writeAll(entries, signal);
    },
    async invalidate(what: InvalidationRequest, signal?: AbortSignal) {
      const keys = [...new Set(what.keys ?? [])];
      const prefixes = [...new Set(what.prefixes ?? [])];
      if (keys.length === 0 && prefixes.length === 0) return;
      dropLocal(keys, prefixes);
      notify({ keys, prefixes });
      if (link === undefined) return;
      // The Redis half runs to its own bounds whether or not the caller keeps waiting.
      const work = (async (): Promise<void> => {
        const done = await invalidateInRedis(keys, prefixes);
        if (!done) addPending(keys, prefixes);
        // Reads from Redis that raced with the deletion may have refilled memory: drop again.
        dropLocal(keys, prefixes);
      })().catch((err: unknown) => {
        addPending(keys, prefixes);
        log.warn(
          { err: err instanceof Error ? err.message : String(err) },
          "cache invalidation failed; it is replayed when Redis is back",
        );
      });
      invalidating.add(work);
      void work.finally(() => invalidating.delete(work));
      await untilAborted(work, signal).catch(() => undefined);
    },
    onInvalidate(listener) {
      const wrapped = (what: Invalidation): void => listener(what);
      listeners.add(wrapped);
      return () => {
        listeners.delete(wrapped);
      };
    },
    stats(): CacheStats {
      return {
        backend: link === undefined ? "memory" : "redis",
        healthy: link === undefined || link.healthy(),
        kinds: counters.snapshot(),
        redisErrors,
        memoryEntries: memory.size,
        memoryBytes: memory.bytes,
        evictions: memory.evictions,
        oversizeSkipped,
        invalidationsReceived,
        pendingInvalidations: pending.keys.size + pending.prefixes.size,
      };
    },
    async close() {
      listeners.clear();
      for (const done of [...echoWaiters.values()]) done();
      // A detached user's commands fail fast, so invalidations still running end at once.
      link?.detach();
      await Promise.all([...invalidating]);
      await ownLink?.close();
      memory.clear();
    },
  };
}
