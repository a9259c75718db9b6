import { randomBytes } from "node:crypto";
import { createHealthTracker, logHealthChanges } from "../redis/health-state.js";
import { NOT_READY, createRedisLink } from "../redis/redis-link.js";
import type { LinkUser, RedisCommands, RedisLink } from "../redis/redis-link.js";
import type { RedisLogger } from "../redis/redis-logger.js";
import type { Outcome } from "../util/with-timeout.js";

/** One slot held on a (node, model); the holder releases it when its request to the node ends. */
export interface SlotLease {
  /** Frees the slot (idempotent; never throws). */
  release(): Promise<void>;
}

/**
 * Counts the parallel slots of each (node, model) that requests occupy, across every gateway
 * replica when Redis is configured, so that together the replicas never send a node more than it
 * runs at once (Ollama queues the rest without bound) — README, "Routing across a fleet"; the
 * keys are listed in docs/architecture.md, "Redis keys and channels".
 */
export interface SlotLeases {
  /** Takes one of `limit` slots of (node, model) if any is free across all replicas; undefined when all are held. Never throws. */
  tryAcquire(node: string, model: string, limit: number): Promise<SlotLease | undefined>;
  /** Slots of (node, model) held across replicas right now (best knowledge). */
  held(node: string, model: string): Promise<number>;
  /** True when the shared view (Redis) is in use; false = counting this process only. */
  shared(): boolean;
  /** Releases everything this process holds and detaches from Redis (closing the link only if it made it). */
  close(): Promise<void>;
}

/** How slot leases are shared; every field except `log` has a default that suits one gateway. */
export interface SlotLeasesOptions {
  /**
   * The replica's Redis link (src/redis/redis-link.ts), shared with the cache and node health;
   * slot leases detach from it on close() but do not close it. Not with `redisUrl`.
   * Neither this nor `redisUrl` = in-process counting only (a single replica).
   */
  redis?: RedisLink;
  /**
   * A Redis of the leases' own, for leases used alone (tests, tools): `redis://`, `rediss://`,
   * `redis+sentinel://`, `redis+cluster://`, as for the cache. The link is closed with the leases.
   */
  redisUrl?: string;
  /** Prefix of every Redis key. @default "ogw:v1:" */
  namespace?: string;
  /** A lease not renewed for this long expires, so a crashed replica's slots come back. @default 10000 */
  leaseMs?: number;
  /** How often this process renews its leases; must be below leaseMs. @default leaseMs / 3 */
  renewEveryMs?: number;
  /** Bound of one Redis command on the leases' own link (`redisUrl`); a shared link has its own. @default 250 */
  commandTimeoutMs?: number;
  /** Where changes between the shared view and local counting are reported, one line per change. */
  log: RedisLogger;
}

/** Logged (warn) once each time the shared view is lost: from then on replicas may together exceed a node's slots. */
export const SLOTS_LOCAL_MSG = "redis unavailable, counting slots in this process only";
/** Logged (info) when the shared view is first established. */
export const SLOTS_SHARED_MSG = "slot leases shared through redis";
/** Logged (info) when the shared view is back after an outage. */
export const SLOTS_SHARED_AGAIN_MSG = "slot leases shared through redis again";

/** How often Redis is probed while the shared view is not in use (at most renewEveryMs). */
const PROBE_MS = 500;
/** Most releases remembered for a later ZREM while Redis is unreachable (each also expires by itself). */
const MAX_PENDING_REMOVALS = 10_000;

// All times are Redis server TIME (ms), read inside the scripts: the replicas' clocks never meet,
// so clock skew between replicas cannot shorten or stretch a lease. (In a cluster each key lives
// on one shard, so one clock governs each set; only a Sentinel failover to a master with a
// different clock shifts expiries, by that skew.) TIME before writes needs effects replication,
// the default since Redis 5.
// Scripts go as EVAL, not EVALSHA: a NOSCRIPT retry would send a renewal after a ZREM issued later
// on the same connection and resurrect a released lease; the bytes are cheap at request rates.
const NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)";

/** KEYS[1] = set, ARGV = id, limit, leaseMs → 1 taken, 0 all held. */
const ACQUIRE = `${NOW}
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1`;

/**
 * KEYS[1] = set, ARGV = leaseMs, ids… → how many ids were missing. Plain ZADD (not XX): a lease
 * this process still holds is (re-)registered even if it expired or was taken while Redis was
 * unreachable — the request really runs on the node, so the shared count must include it.
 */
const RENEW = `${NOW}
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local expiry = now + tonumber(ARGV[1])
local added = 0
for i = 2, #ARGV do added = added + redis.call('ZADD', KEYS[1], expiry, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return added`;

/** KEYS[1] = set → leases not yet expired. */
const HELD = `${NOW}
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')`;

interface LeaseRecord {
  readonly id: string;
  readonly key: string;
  /** Known to be in Redis (taken there, or renewed there since it was taken locally). */
  registered: boolean;
  released: boolean;
}

/** The Redis side of the accounting. */
interface SharedView {
  /** Redis is in use: connected, and nothing failed since the last successful renewal. */
  usable(): boolean;
  /** Runs commands bounded by the link's timeout (failing at once while disconnected); a failure makes the view unusable. Never rejects. */
  run<T>(op: (c: RedisCommands) => Promise<T>): Promise<Outcome<T>>;
  /** Remembers an id to ZREM with the next renewal. */
  queueRemoval(key: string, id: string): void;
  /** ZREMs one released lease now, or later with the renewals. */
  remove(key: string, id: string): Promise<void>;
  /** Removes these leases and every pending removal from Redis (bounded), then detaches from the link. */
  close(records: readonly LeaseRecord[]): Promise<void>;
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function positive(name: string, value: number): number {
  if (!(Number.isFinite(value) && value > 0)) throw new RangeError(`${name} must be a positive number of milliseconds`);
  return value;
}

/** `id` → its set, grouped by set, for one command per key (which keeps each command on one cluster slot). */
function groupByKey(entries: Iterable<{ id: string; key: string }>): Map<string, string[]> {
  const groups = new Map<string, string[]>();
  for (const { id, key } of entries) {
    const ids = groups.get(key);
    if (ids === undefined) groups.set(key, [id]);
    else ids.push(id);
  }
  return groups;
}

/**
 * Creates the slot accounting. Without Redis it counts this process's leases only. With it,
 * each (node, model) is a sorted set `<ns>slots:<node>:<model>` (node URI-encoded, so a ":" in it
 * cannot shift the boundary; model as given — pass the canonical name) of lease ids scored by
 * expiry, taken atomically by one Lua script on one key (so Redis Cluster works), renewed every
 * `renewEveryMs` in one auto-pipelined batch, and released by ZREM.
 *
 * Slot leases need only the link's command connection, not its subscriber: the shared view is
 * in use from the first successful renewal after the command connection is ready until the
 * connection is lost or any command fails or times out.
 *
 * Redis failures never fail or stall a caller: every command is bounded by the link's command
 * timeout, and while Redis is unreachable — or after any command failed or timed out, until a
 * background probe succeeds — leases are counted in this process only (`shared()` false, one
 * warning per change of state). During such an outage the replicas together may exceed a node's
 * slots. Leases held across an outage are re-registered: a lease taken during it gets an id like
 * any other, and the successful renewal that ends the outage writes every lease this process
 * holds (plain ZADD, also re-adding ones that expired meanwhile); so afterwards the shared count
 * shows what the nodes really run, possibly above `limit`, which blocks new leases until it
 * drains. Releases that could not reach Redis are removed by that same first renewal; any lease
 * left behind (a crashed replica, a lost ZREM) expires within `leaseMs`.
 *
 * Returns at once (Redis connects in the background; leases are local until it does). Throws only
 * for a malformed URL or bad bounds.
 */
export function createSlotLeases(options: SlotLeasesOptions): SlotLeases {
  const namespace = options.namespace ?? "ogw:v1:";
  const leaseMs = Math.ceil(positive("leaseMs", options.leaseMs ?? 10_000));
  const renewEveryMs = positive("renewEveryMs", options.renewEveryMs ?? leaseMs / 3);
  const commandTimeoutMs = positive("commandTimeoutMs", options.commandTimeoutMs ?? 250);
  if (renewEveryMs >= leaseMs) throw new RangeError("renewEveryMs must be below leaseMs");
  if (options.redis !== undefined && options.redisUrl !== undefined) {
    throw new RangeError(
      "give slot leases either a shared Redis link (redis) or a URL of their own (redisUrl), not both",
    );
  }
  const log = options.log;

  // Lease ids: this replica's random tag and a counter — short, unique, and `ZRANGE` shows who holds what.
  const replica = randomBytes(6).toString("base64url");
  let sequence = 0;
  const nextId = (): string => `${replica}.${(++sequence).toString(36)}`;
  const keyOf = (node: string, model: string): string => `${namespace}slots:${encodeURIComponent(node)}:${model}`;

  /** This process's leases by set key: the local count, and what the renewals send. */
  const leases = new Map<string, Map<string, LeaseRecord>>();
  const localCount = (key: string): number => leases.get(key)?.size ?? 0;
  let closed = false;
  let closing: Promise<void> | undefined;
  /** Acquisitions waiting on Redis; close() lets them finish so what they took is released too. */
  const acquiring = new Set<Promise<SlotLease | undefined>>();

  const ownLink =
    options.redisUrl === undefined
      ? undefined
      : createRedisLink({ url: options.redisUrl, commandTimeoutMs, connectionName: "ogw-slots", log });
  const link = options.redis ?? ownLink;
  const view = link === undefined ? undefined : createView(link);

  function createView(shared: RedisLink): SharedView {
    /** Releases (and denied acquisitions) still to ZREM, oldest first. */
    const pendingRemovals = new Map<string, { key: string; at: number }>();
    let timer: NodeJS.Timeout | undefined;
    let ticking = false;
    let tickAgain = false;
    // The shared view's own state (not the connection's): it goes up only with a successful
    // renewal, and down with a lost connection or any failed command.
    const state = createHealthTracker(
      logHealthChanges(log, shared.label, {
        up: SLOTS_SHARED_MSG,
        upAgain: SLOTS_SHARED_AGAIN_MSG,
        down: SLOTS_LOCAL_MSG,
      }),
    );
    const goDown = (reason: string): void => {
      if (closed) return;
      const wasDown = state.state() === "down";
      state.update(false, true, reason);
      if (!wasDown && !ticking) schedule(Math.min(renewEveryMs, PROBE_MS));
    };
    const user: LinkUser = shared.attach({
      onChange(change, reason) {
        if (change === "down") goDown(reason ?? "redis not ready");
        // Connected (again): register what this process holds and go shared without waiting for the timer.
        else if (ticking) tickAgain = true;
        else schedule(0);
      },
    });

    /** Runs commands bounded by the link; fails at once while disconnected. Never rejects. */
    const run = <T>(op: (c: RedisCommands) => Promise<T>): Promise<Outcome<T>> =>
      user.run(op).then((out) => {
        if (!out.ok && out.error !== NOT_READY) goDown(errorMessage(out.error));
        return out;
      });

    /** Forgets removals older than leaseMs (expired in Redis by themselves by now); the cap only guards memory. */
    const dropStaleRemovals = (): void => {
      const oldest = Date.now() - leaseMs;
      for (const [id, p] of pendingRemovals) {
        if (p.at >= oldest && pendingRemovals.size <= MAX_PENDING_REMOVALS) break;
        pendingRemovals.delete(id);
      }
    };
    const queueRemoval = (key: string, id: string): void => {
      pendingRemovals.set(id, { key, at: Date.now() });
      dropStaleRemovals();
    };

    function schedule(ms: number): void {
      if (closed) return;
      clearTimeout(timer);
      timer = setTimeout(startTick, ms);
      timer.unref();
    }
    function startTick(): void {
      if (closed) return;
      if (ticking) {
        tickAgain = true;
        return;
      }
      ticking = true;
      // tick() never rejects; the next one is scheduled when it is done.
      void tick().then(() => {
        ticking = false;
        if (closed) return;
        const again = tickAgain;
        tickAgain = false;
        schedule(again ? 0 : state.up() ? renewEveryMs : Math.min(renewEveryMs, PROBE_MS));
      });
    }

    /** Renews every lease of this process (registering ones taken locally), retries releases, and decides the state. */
    async function tick(): Promise<void> {
      try {
        dropStaleRemovals();
        // Not connected: the link reports the outage (and redials hung connections) by itself.
        if (!user.healthy()) return;
        const snapshot = [...leases.values()].flatMap((m) => [...m.values()]);
        const removals = [...pendingRemovals].map(([id, p]) => ({ id, ...p }));
        const out = await run((c) => {
          const commands: Promise<unknown>[] = [];
          for (const [key, ids] of groupByKey(removals)) commands.push(c.zrem(key, ...ids));
          for (const [key, ids] of groupByKey(snapshot)) commands.push(c.eval(RENEW, 1, key, leaseMs, ...ids));
          if (commands.length === 0) commands.push(c.ping());
          return Promise.all(commands);
        });
        if (closed || !out.ok) return;
        for (const r of snapshot) r.registered = true;
        for (const r of removals) if (pendingRemovals.get(r.id)?.at === r.at) pendingRemovals.delete(r.id);
        state.update(true, false);
        // Leases taken locally while this renewal was in flight are registered by another one at
        // once, and so are releases queued meanwhile: the renewal may have re-added those leases
        // in Redis, where they would block the slot for every replica until the next renewal.
        if (pendingRemovals.size > 0 || [...leases.values()].some((m) => [...m.values()].some((r) => !r.registered)))
          tickAgain = true;
      } catch (err) {
        log.warn({ redis: shared.label, err: errorMessage(err) }, "slot lease renewal failed");
      }
    }

    schedule(Math.min(renewEveryMs, PROBE_MS));

    const usable = (): boolean => state.up() && user.healthy();
    return {
      usable,
      run,
      queueRemoval,
      async remove(key: string, id: string): Promise<void> {
        if (!usable()) {
          queueRemoval(key, id);
          return;
        }
        const out = await run((c) => c.zrem(key, id));
        if (!out.ok) queueRemoval(key, id);
      },
      async close(records: readonly LeaseRecord[]): Promise<void> {
        clearTimeout(timer);
        state.stop();
        for (const r of records) queueRemoval(r.key, r.id);
        const removals = [...pendingRemovals].map(([id, p]) => ({ id, ...p }));
        if (removals.length > 0) {
          await user.run((c) => Promise.all([...groupByKey(removals)].map(([key, ids]) => c.zrem(key, ...ids))));
        }
        pendingRemovals.clear();
        user.detach();
      },
    };
  }

  const grant = (key: string, id: string, registered: boolean): SlotLease => {
    const record: LeaseRecord = { id, key, registered, released: false };
    let set = leases.get(key);
    if (set === undefined) leases.set(key, (set = new Map()));
    set.set(id, record);
    return {
      async release() {
        if (record.released) return;
        record.released = true;
        const held = leases.get(key);
        held?.delete(id);
        if (held?.size === 0) leases.delete(key);
        if (view === undefined || closed) return;
        try {
          await view.remove(key, id);
        } catch (err) {
          log.warn({ err: errorMessage(err) }, "slot lease release failed");
        }
      },
    };
  };

  async function acquire(node: string, model: string, limit: number): Promise<SlotLease | undefined> {
    try {
      const max = Math.floor(limit);
      if (closed || !(max >= 1)) return undefined;
      const key = keyOf(node, model);
      // This process alone holds them all: Redis could only agree.
      if (localCount(key) >= max) return undefined;
      const id = nextId();
      if (view === undefined || !view.usable()) return grant(key, id, false);
      const out = await view.run((c) => c.eval(ACQUIRE, 1, key, id, max, leaseMs));
      if (out.ok) {
        if (out.value !== 1) return undefined;
        if (closed) {
          view.queueRemoval(key, id);
          return undefined;
        }
        return grant(key, id, true);
      }
      // Redis failed or timed out (now marked down): count locally. The script may still run
      // once Redis answers, so the id is either kept (renewed, released as usual) or removed.
      if (!closed && localCount(key) < max) return grant(key, id, false);
      view.queueRemoval(key, id);
      return undefined;
    } catch (err) {
      log.warn({ err: errorMessage(err) }, "slot lease acquisition failed");
      return undefined;
    }
  }

  return {
    tryAcquire(node, model, limit) {
      const p = acquire(node, model, limit);
      if (view !== undefined) {
        acquiring.add(p);
        void p.then(() => acquiring.delete(p)); // acquire() never rejects
      }
      return p;
    },

    async held(node, model) {
      const key = keyOf(node, model);
      if (view === undefined || !view.usable()) return localCount(key);
      try {
        const out = await view.run((c) => c.eval(HELD, 1, key));
        return out.ok && typeof out.value === "number" ? Math.max(out.value, localCount(key)) : localCount(key);
      } catch {
        return localCount(key);
      }
    },

    shared: () => view?.usable() ?? false,

    close() {
      if (closing !== undefined) return closing;
      closed = true;
      const records = [...leases.values()].flatMap((m) => [...m.values()]);
      for (const r of records) r.released = true;
      leases.clear();
      const shut = async (): Promise<void> => {
        if (view === undefined) return;
        // Acquisitions waiting on Redis end first (each within commandTimeoutMs); seeing `closed`,
        // they queue what they took for removal instead of handing it out.
        await Promise.all([...acquiring]);
        await view.close(records);
        await ownLink?.close();
      };
      closing = shut();
      return closing;
    },
  };
}
