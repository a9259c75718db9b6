import assert from "node:assert/strict";
import { after, afterEach, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Redis } from "ioredis";
import { createCache } from "../src/cache/cache.js";
import type { Cache, CacheOptions } from "../src/cache/cache.js";
import { captureLogs } from "./helpers/log-capture.js";
import type { LogCapture } from "./helpers/log-capture.js";
import { startRedis, startTcpProxy } from "./helpers/redis-server.js";
import type { RedisServer } from "./helpers/redis-server.js";

const buf = (s: string): Buffer => Buffer.from(s, "utf8");

async function waitFor(what: string, cond: () => boolean | Promise<boolean>, ms = 3000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await sleep(10);
  }
}

describe("cache with a shared Redis", { timeout: 20_000 }, () => {
  let redis: RedisServer;
  let raw: Redis;
  let caches: Cache[] = [];
  let ns = "";
  let testNo = 0;

  before(async () => {
    redis = await startRedis();
    raw = new Redis(redis.url, { lazyConnect: true });
    await raw.connect();
  });
  after(async () => {
    await raw.quit();
    await redis.stop();
  });
  afterEach(async () => {
    await Promise.all(caches.map((c) => c.close()));
    caches = [];
  });

  /**
   * A connected cache in this test's own namespace (like a replica of the gateway). Timeouts are
   * not under test here (see cache-outage.spec.ts): a roomy bound keeps batches of thousands of
   * commands from falling back to memory on a loaded machine.
   */
  async function replica(extra: Partial<CacheOptions> = {}, logs: LogCapture = captureLogs()): Promise<Cache> {
    const cache = createCache({
      redisUrl: redis.url,
      namespace: ns,
      log: logs.log,
      commandTimeoutMs: 2000,
      reconnect: { maxDelayMs: 200 },
      ...extra,
    });
    caches.push(cache);
    await waitFor("cache healthy", () => cache.healthy());
    return cache;
  }

  // Every test gets a fresh namespace, so keys and channels never collide.
  const fresh = (): void => {
    ns = `t${++testNo}:`;
  };

  it("shares values between two replicas through Redis, every Redis key with a TTL", async () => {
    fresh();
    const a = await replica();
    const b = await replica();
    await a.set("tags:n1", buf("[1]"), 60_000);
    await a.setMany([
      { key: "show:d1", value: buf("s1"), ttlMs: 30_000 },
      { key: "emb:x", value: Buffer.from(new Float32Array([1.5, -2]).buffer), ttlMs: 10_000 },
    ]);
    assert.equal((await b.get("tags:n1"))?.toString(), "[1]");
    assert.deepEqual(
      (await b.getMany(["show:d1", "missing:1", "emb:x", "tags:n1"])).map((v) => v?.toString("hex")),
      [
        buf("s1").toString("hex"),
        undefined,
        Buffer.from(new Float32Array([1.5, -2]).buffer).toString("hex"),
        buf("[1]").toString("hex"),
      ],
    );
    const pttl = await raw.pttl(`${ns}tags:n1`);
    assert.ok(pttl > 55_000 && pttl <= 60_000, `PTTL ${pttl}`);
    const pttlShow = await raw.pttl(`${ns}show:d1`);
    assert.ok(pttlShow > 25_000 && pttlShow <= 30_000, `PTTL ${pttlShow}`);
    for (const key of await raw.keys(`${ns}*`)) assert.ok((await raw.pttl(key)) > 0, `${key} has a TTL`);
    const kinds = b.stats().kinds;
    assert.deepEqual(
      kinds["tags"],
      { hits: 2, memoryHits: 1, misses: 0, errors: 0 },
      "first from Redis, then from memory",
    );
    assert.deepEqual(kinds["missing"], { hits: 0, memoryHits: 0, misses: 1, errors: 0 });
    assert.equal(b.stats().backend, "redis");
    assert.equal(b.stats().healthy, true);
  });

  it("keeps a value read from Redis in memory only for the TTL Redis has left", async () => {
    fresh();
    const a = await replica();
    const b = await replica();
    await a.set("ps:n1", buf("p"), 1000);
    await waitFor("less than half the TTL left in Redis", async () => (await raw.pttl(`${ns}ps:n1`)) < 500);
    assert.equal((await b.get("ps:n1"))?.toString(), "p"); // into B's memory with < 500 ms left
    await waitFor("Redis expired it", async () => (await raw.exists(`${ns}ps:n1`)) === 0);
    // Had B kept the full 1000 ms from its read, it would still hold the value for another 500 ms.
    await sleep(100);
    assert.equal(await b.get("ps:n1"), undefined);
    assert.equal(b.stats().kinds["ps"]?.memoryHits, 0, "never served from B's memory after Redis dropped it");
  });

  it("drops an entry from another replica's memory at once when it invalidates a prefix", async () => {
    fresh();
    const a = await replica();
    const b = await replica();
    await a.setMany(["tags:n1", "tags:n2", "show:d1"].map((key) => ({ key, value: buf(key), ttlMs: 60_000 })));
    await b.getMany(["tags:n1", "tags:n2", "show:d1"]);
    await b.getMany(["tags:n1", "tags:n2", "show:d1"]);
    assert.equal(b.stats().kinds["tags"]?.memoryHits, 2, "B serves them from its memory tier");
    const seenByA: unknown[] = [];
    const seenByB: unknown[] = [];
    a.onInvalidate((w) => seenByA.push(w));
    b.onInvalidate((w) => seenByB.push(w));

    await a.invalidate({ prefixes: ["tags:"] });
    // B hears it through its own subscriber, a moment after A's echo: within milliseconds, not the TTL.
    await waitFor("B hears the invalidation", () => b.stats().invalidationsReceived === 1, 1000);

    assert.deepEqual(
      await b.getMany(["tags:n1", "tags:n2"]),
      [undefined, undefined],
      "gone from B right away, not after the TTL",
    );
    assert.equal((await b.get("show:d1"))?.toString(), "show:d1", "other prefixes untouched");
    assert.equal(await raw.exists(`${ns}tags:n1`, `${ns}tags:n2`), 0, "deleted in Redis");
    assert.equal(await raw.exists(`${ns}show:d1`), 1);
    assert.deepEqual(seenByB, [{ keys: [], prefixes: ["tags:"] }]);
    assert.deepEqual(seenByA, [{ keys: [], prefixes: ["tags:"] }], "the origin's listeners are told once");
    assert.equal(b.stats().invalidationsReceived, 1);
  });

  it("drops exact keys from every replica's memory and from Redis", async () => {
    fresh();
    const a = await replica();
    const b = await replica();
    const c = await replica();
    await a.set("ps:n1", buf("1"), 60_000);
    await a.set("ps:n2", buf("2"), 60_000);
    await b.getMany(["ps:n1", "ps:n2"]);
    await c.getMany(["ps:n1", "ps:n2"]);
    await a.invalidate({ keys: ["ps:n1"] });
    await waitFor(
      "B and C hear the invalidation",
      () => b.stats().invalidationsReceived === 1 && c.stats().invalidationsReceived === 1,
      1000,
    );
    assert.equal(await b.get("ps:n1"), undefined);
    assert.equal(await c.get("ps:n1"), undefined);
    assert.equal((await c.get("ps:n2"))?.toString(), "2");
    assert.equal(await raw.exists(`${ns}ps:n1`), 0);
  });

  it("splits a large invalidation into bounded messages that every replica applies", async () => {
    fresh();
    const a = await replica();
    const b = await replica();
    const keys = Array.from({ length: 1000 }, (_, i) => `show:${"d".repeat(40)}${i}`);
    await a.setMany(keys.map((key) => ({ key, value: buf("v"), ttlMs: 60_000 })));
    await b.getMany(keys);
    assert.equal(b.stats().memoryEntries, 1000);

    const listener = raw.duplicate();
    const sizes: number[] = [];
    listener.on("message", (_ch: string, msg: string) => sizes.push(Buffer.byteLength(msg)));
    await listener.subscribe(`${ns}invalidate`);
    try {
      await a.invalidate({ keys });
      await waitFor("all messages seen", () => sizes.length >= 4);
      assert.ok(
        sizes.every((s) => s <= 16 * 1024),
        `message sizes ${sizes.join(",")}`,
      );
      // B reads every message through its own subscriber, a moment after A's echo.
      await waitFor("B applied every message", () => b.stats().memoryEntries === 0, 1000);
      assert.deepEqual(new Set(await b.getMany(keys)), new Set([undefined]));
      assert.equal((await raw.keys(`${ns}*`)).length, 0);
    } finally {
      await listener.quit();
    }
  });

  it("matches prefixes literally in Redis (glob characters are escaped)", async () => {
    fresh();
    const a = await replica();
    await a.set("tags:a*b", buf("1"), 60_000);
    await a.set("tags:axb", buf("2"), 60_000);
    await a.set("tags:a?[c]", buf("3"), 60_000);
    await a.invalidate({ prefixes: ["tags:a*", "tags:a?["] });
    assert.deepEqual((await raw.keys(`${ns}*`)).sort(), [`${ns}tags:axb`]);
  });

  it("deletes thousands of keys under a prefix in Redis page by page", async () => {
    fresh();
    const a = await replica();
    await a.setMany(Array.from({ length: 3000 }, (_, i) => ({ key: `emb:m1:${i}`, value: buf("x"), ttlMs: 60_000 })));
    await a.set("emb:m2:0", buf("y"), 60_000);
    await a.invalidate({ prefixes: ["emb:m1:"] });
    assert.deepEqual(await raw.keys(`${ns}*`), [`${ns}emb:m2:0`]);
  });

  it("skips values over maxValueBytes in Redis too, and removes the older value there", async () => {
    fresh();
    const a = await replica({ maxValueBytes: 8 });
    await a.set("emb:k", buf("12345678"), 60_000);
    assert.equal(await raw.exists(`${ns}emb:k`), 1);
    await a.set("emb:k", buf("123456789"), 60_000);
    assert.equal(await raw.exists(`${ns}emb:k`), 0);
    assert.equal(await a.get("emb:k"), undefined);
  });

  it("flushes memory when Redis comes back (keeping keepOnReconnect kinds), since invalidations were missed meanwhile", async () => {
    fresh();
    const proxy = await startTcpProxy(redis.port);
    try {
      const logsA = captureLogs();
      const a = createCache({
        redisUrl: `redis://127.0.0.1:${proxy.port}`,
        namespace: ns,
        commandTimeoutMs: 2000,
        log: logsA.log,
        reconnect: { maxDelayMs: 100 },
        keepOnReconnect: ["show"],
      });
      // A2 is cut off the same way but keeps nothing (the default).
      const a2 = createCache({
        redisUrl: `redis://127.0.0.1:${proxy.port}`,
        namespace: ns,
        commandTimeoutMs: 2000,
        log: captureLogs().log,
        reconnect: { maxDelayMs: 100 },
      });
      caches.push(a, a2);
      await waitFor("A healthy", () => a.healthy() && a2.healthy());
      const b = await replica();
      await b.setMany(["tags:n1", "show:d1"].map((key) => ({ key, value: buf("old"), ttlMs: 60_000 })));
      await a.getMany(["tags:n1", "show:d1"]); // now in A's memory
      await a2.getMany(["tags:n1", "show:d1"]);

      proxy.cut();
      await waitFor("A sees the outage", () => !a.healthy() && !a2.healthy());
      await b.invalidate({ keys: ["tags:n1"] }); // A misses this message
      proxy.restore();
      await waitFor("A reconnects", () => a.healthy() && a2.healthy());

      assert.equal(await a.get("tags:n1"), undefined, "A did not serve its stale memory entry");
      assert.equal(await a2.get("tags:n1"), undefined);
      assert.equal((await a.get("show:d1"))?.toString(), "old");
      assert.equal(a.stats().kinds["show"]?.memoryHits, 1, "a content-addressed kind survived the flush");
      assert.equal((await a2.get("show:d1"))?.toString(), "old");
      assert.equal(
        a2.stats().kinds["show"]?.memoryHits,
        0,
        "by default everything is flushed and read again from Redis",
      );
      assert.equal(logsA.find("redis unavailable, serving from memory").length, 1);
      assert.equal(logsA.find("redis available again").length, 1);
    } finally {
      await proxy.close();
    }
  });

  it("replays an invalidation made while cut off from Redis once it reconnects", async () => {
    fresh();
    const proxy = await startTcpProxy(redis.port);
    try {
      const a = createCache({
        redisUrl: `redis://127.0.0.1:${proxy.port}`,
        namespace: ns,
        commandTimeoutMs: 2000,
        log: captureLogs().log,
        reconnect: { maxDelayMs: 100 },
      });
      caches.push(a);
      await waitFor("A healthy", () => a.healthy());
      const b = await replica();
      await b.set("tags:n1", buf("old"), 60_000);
      await b.get("tags:n1");

      proxy.cut();
      await waitFor("A sees the outage", () => !a.healthy());
      const started = Date.now();
      await a.invalidate({ prefixes: ["tags:"] });
      assert.ok(Date.now() - started < 300, "invalidate does not wait for Redis to return");
      assert.equal(a.stats().pendingInvalidations, 1);
      assert.equal((await b.get("tags:n1"))?.toString(), "old", "B could not know yet");

      proxy.restore();
      await waitFor("B drops the entry after A's replay", () => b.stats().invalidationsReceived === 1);
      assert.equal(await b.get("tags:n1"), undefined);
      assert.equal(await raw.exists(`${ns}tags:n1`), 0);
      assert.equal(a.stats().pendingInvalidations, 0);
    } finally {
      await proxy.close();
    }
  });
});
