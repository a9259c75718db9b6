import assert from "node:assert/strict";
import { createServer } from "node:net";
import type { Socket } from "node:net";
import { after, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Redis } from "ioredis";
import { CACHE_REDIS_MESSAGES, createCache } from "../src/cache/cache.js";
import type { Cache } from "../src/cache/cache.js";
import { createRedisLink } from "../src/redis/redis-link.js";
import type { RedisLink } from "../src/redis/redis-link.js";
import { captureLogs } from "./helpers/log-capture.js";
import { laterPort, startRedis } from "./helpers/redis-server.js";
import type { RedisServer } from "./helpers/redis-server.js";

const buf = (s: string): Buffer => Buffer.from(s, "utf8");
const TIMEOUT_MS = 250;
/** Scheduling slack on a loaded 2-core CI machine. */
const MARGIN_MS = 150;
const UNAVAILABLE = CACHE_REDIS_MESSAGES.down;
const AVAILABLE_AGAIN = CACHE_REDIS_MESSAGES.upAgain;

async function waitFor(what: string, cond: () => boolean, ms = 4000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await sleep(10);
  }
}

/** Runs `call`, returning how long it took; a rejection is recorded, not thrown. */
async function timed(call: () => Promise<unknown>, rejections: unknown[]): Promise<number> {
  const start = performance.now();
  try {
    await call();
  } catch (err) {
    rejections.push(err);
  }
  return performance.now() - start;
}

describe("cache when Redis fails", { timeout: 30_000 }, () => {
  const servers: RedisServer[] = [];
  const caches: Cache[] = [];
  const links: RedisLink[] = [];
  after(async () => {
    await Promise.all(caches.map((c) => c.close()));
    await Promise.all(links.map((l) => l.close()));
    await Promise.all(servers.map((s) => s.stop()));
  });

  it("starts at once and serves from memory while Redis is unreachable, then uses Redis when it appears", async () => {
    const port = await laterPort(); // nothing listens here yet
    const logs = captureLogs();
    const started = performance.now();
    // The replica's shared link, as the gateway makes it, so the test can watch its reconnects.
    const link = createRedisLink({
      url: `redis://127.0.0.1:${port}`,
      log: logs.log,
      commandTimeoutMs: TIMEOUT_MS,
      reconnect: { maxDelayMs: 200 },
    });
    links.push(link);
    const cache = createCache({ redis: link, log: logs.log });
    caches.push(cache);
    // Below the command timeout: it returned without waiting for Redis (generous for a loaded machine).
    assert.ok(performance.now() - started < TIMEOUT_MS, "createCache does not wait for Redis");
    assert.equal(cache.backend, "redis");
    assert.equal(cache.healthy(), false);

    await cache.set("tags:n1", buf("mem"), 60_000);
    assert.equal((await cache.get("tags:n1"))?.toString(), "mem");
    await waitFor("the outage is logged", () => logs.find(UNAVAILABLE).length > 0);
    const attempts = link.stats().reconnectAttempts;
    await waitFor("several failed reconnects…", () => link.stats().reconnectAttempts >= attempts + 3);
    assert.equal(logs.find(UNAVAILABLE).length, 1, "…but one warning");
    assert.equal(cache.stats().healthy, false);

    const redis = await startRedis({ port });
    servers.push(redis);
    await waitFor("healthy once Redis is up", () => cache.healthy(), 3000);
    assert.equal(logs.find(AVAILABLE_AGAIN).length, 1);
    await cache.set("tags:n2", buf("redis"), 60_000);
    const raw = new Redis(redis.url);
    try {
      assert.equal(await raw.get("ogw:v1:tags:n2"), "redis", "values go to Redis now");
      assert.ok((await raw.pttl("ogw:v1:tags:n2")) > 0);
    } finally {
      await raw.quit();
    }
    assert.equal(logs.find(UNAVAILABLE).length, 1);
  });

  it("serves from memory and logs one warning when Redis dies, then uses Redis again when it returns", async () => {
    const redis = await startRedis();
    servers.push(redis);
    const logs = captureLogs();
    const cache = createCache({
      redisUrl: redis.url,
      log: logs.log,
      commandTimeoutMs: TIMEOUT_MS,
      reconnect: { maxDelayMs: 200 },
    });
    caches.push(cache);
    await waitFor("healthy", () => cache.healthy());

    const rejections: unknown[] = [];
    const durations: number[] = [];
    // Traffic runs throughout; each phase lasts until it has seen its share of it.
    let rounds = 0;
    const untilRounds = (what: string, more: number): Promise<void> => {
      const target = rounds + more;
      return waitFor(what, () => rounds >= target, 10_000);
    };
    let trafficDone = false;
    const outage = (async () => {
      await untilRounds("traffic before the outage", 30);
      await redis.stop();
      await waitFor("the cache notices", () => !cache.healthy());
      await untilRounds("traffic while Redis is down", 30);
      await redis.restart();
      await waitFor("healthy again", () => cache.healthy(), 5000);
      await untilRounds("traffic once Redis is back", 30);
    })().finally(() => {
      trafficDone = true;
    });
    for (let i = 0; !trafficDone; i++) {
      const key = `emb:k${i % 50}`;
      const set = timed(() => cache.set(key, buf(`v${i}`), 60_000), rejections);
      const get = timed(() => cache.get(`emb:k${(i + 25) % 50}`), rejections);
      const many = timed(() => cache.getMany([key, "emb:none"]), rejections);
      durations.push(...(await Promise.all([set, get, many])));
      rounds++;
      await sleep(3); // pacing only
    }
    await outage;

    assert.deepEqual(rejections, [], "no call was rejected");
    const slowest = Math.max(...durations);
    assert.ok(slowest < TIMEOUT_MS + MARGIN_MS, `slowest call ${slowest.toFixed(0)} ms`);
    assert.equal(logs.find(UNAVAILABLE).length, 1);
    assert.equal(logs.find(AVAILABLE_AGAIN).length, 1);

    await cache.set("tags:after", buf("x"), 60_000);
    const raw = new Redis(redis.url);
    try {
      assert.equal(await raw.get("ogw:v1:tags:after"), "x", "writes reach the restarted Redis");
    } finally {
      await raw.quit();
    }
  });

  it("answers within the command timeout while Redis hangs, and recovers when it wakes", async () => {
    const redis = await startRedis();
    servers.push(redis);
    const logs = captureLogs();
    const cache = createCache({
      redisUrl: redis.url,
      log: logs.log,
      commandTimeoutMs: TIMEOUT_MS,
      reconnect: { maxDelayMs: 200 },
    });
    caches.push(cache);
    await waitFor("healthy", () => cache.healthy());
    await cache.set("show:d1", buf("v"), 60_000);

    redis.pause(); // the process stops answering; its sockets stay open
    try {
      const rejections: unknown[] = [];
      const took = await Promise.all([
        timed(() => cache.get("show:other"), rejections),
        timed(() => cache.set("show:d2", buf("w"), 60_000), rejections),
        timed(() => cache.getMany(["show:d1", "show:d3"]), rejections),
        timed(() => cache.invalidate({ prefixes: ["ps:"] }), rejections),
      ]);
      assert.deepEqual(rejections, []);
      for (const t of took) assert.ok(t < 2 * TIMEOUT_MS + MARGIN_MS, `call took ${t.toFixed(0)} ms`);
      assert.ok(took[0] !== undefined && took[0] >= TIMEOUT_MS - 5, "the get really waited on Redis and gave up");
      assert.equal((await cache.get("show:d2"))?.toString(), "w", "the write went to memory");
      assert.ok(cache.stats().redisErrors >= 3);
      assert.ok((cache.stats().kinds["show"]?.errors ?? 0) >= 2);
      await waitFor("marked unhealthy", () => !cache.healthy(), 3000);
      assert.equal(logs.find(UNAVAILABLE).length, 1);
    } finally {
      redis.resume();
    }
    await waitFor("healthy again", () => cache.healthy(), 3000);
    assert.equal(logs.find(AVAILABLE_AGAIN).length, 1);
    assert.equal(cache.stats().pendingInvalidations, 0, "the invalidation made during the hang was replayed");
  });

  it("answers within the timeout when the server accepts connections but never replies", async () => {
    const sockets = new Set<Socket>();
    let accepted = 0;
    const silent = createServer((s) => {
      accepted++;
      sockets.add(s);
      s.on("data", () => undefined); // read, never write
      s.on("error", () => undefined);
    });
    await new Promise<void>((r) => silent.listen(0, "127.0.0.1", r));
    const addr = silent.address();
    const port = typeof addr === "object" && addr !== null ? addr.port : 0;
    const logs = captureLogs();
    const cache = createCache({
      redisUrl: `redis://127.0.0.1:${port}`,
      log: logs.log,
      commandTimeoutMs: TIMEOUT_MS,
      reconnect: { maxDelayMs: 200 },
    });
    try {
      await waitFor("connected to the silent server", () => sockets.size > 0);
      const rejections: unknown[] = [];
      const took = await Promise.all([
        timed(() => cache.get("tags:n1"), rejections),
        timed(() => cache.set("tags:n1", buf("v"), 60_000), rejections),
        timed(() => cache.invalidate({ keys: ["ps:n1"] }), rejections),
      ]);
      assert.deepEqual(rejections, []);
      for (const t of took) assert.ok(t < TIMEOUT_MS + MARGIN_MS, `call took ${t.toFixed(0)} ms`);
      assert.equal((await cache.get("tags:n1"))?.toString(), "v");
      assert.equal(cache.healthy(), false);
      await waitFor("the outage is logged", () => logs.find(UNAVAILABLE).length > 0, 3000);
      // Both connections (command, subscriber) are dropped for their silent handshakes and redialled.
      const dialled = accepted;
      await waitFor("the hung handshakes are redialled", () => accepted >= dialled + 2, 8000);
      assert.equal(logs.find(UNAVAILABLE).length, 1, "one warning however many redials");
    } finally {
      await cache.close();
      for (const s of sockets) s.destroy();
      await new Promise((r) => silent.close(r));
    }
  });
});
