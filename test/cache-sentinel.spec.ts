import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Redis } from "ioredis";
import { createCache } from "../src/cache/cache.js";
import type { Cache } from "../src/cache/cache.js";
import { createRedisLink } from "../src/redis/redis-link.js";
import { createSlotLeases } from "../src/routing/slot-leases.js";
import { captureLogs } from "./helpers/log-capture.js";
import { startRedis, startSentinel } from "./helpers/redis-server.js";
import type { RedisSentinel, RedisServer } from "./helpers/redis-server.js";

async function waitFor(what: string, cond: () => boolean, ms = 4000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await sleep(10);
  }
}

describe("cache through Redis Sentinel", { timeout: 15_000 }, () => {
  let master: RedisServer;
  let sentinel: RedisSentinel;
  const caches: Cache[] = [];
  before(async () => {
    master = await startRedis();
    sentinel = await startSentinel("cachemaster", master.port);
  });
  after(async () => {
    await Promise.all(caches.map((c) => c.close()));
    await sentinel.stop();
    await master.stop();
  });

  it("finds the master through the Sentinel and shares values and invalidations on it", async () => {
    const url = `redis+sentinel://127.0.0.1:${sentinel.port}/cachemaster/1`;
    const a = createCache({ redisUrl: url, log: captureLogs().log });
    const b = createCache({ redisUrl: url, log: captureLogs().log });
    caches.push(a, b);
    await waitFor("both healthy", () => a.healthy() && b.healthy());

    await a.set("tags:n1", Buffer.from("via-sentinel"), 60_000);
    const raw = new Redis(master.url, { db: 1 });
    try {
      assert.equal(await raw.get("ogw:v1:tags:n1"), "via-sentinel", "stored on the master, database 1");
      assert.equal((await b.get("tags:n1"))?.toString(), "via-sentinel");
      await a.invalidate({ prefixes: ["tags:"] });
      // B hears it through its own subscriber, a moment after A's echo: within milliseconds, not a TTL.
      await waitFor("B hears the invalidation", () => b.stats().invalidationsReceived === 1, 1000);
      assert.equal(await b.get("tags:n1"), undefined);
      assert.equal(await raw.exists("ogw:v1:tags:n1"), 0);
    } finally {
      await raw.quit();
    }
  });

  it("shares one link between the cache and slot leases through the Sentinel: two connections to the master, scripts included", async () => {
    const logs = captureLogs();
    const link = createRedisLink({
      url: `redis+sentinel://127.0.0.1:${sentinel.port}/cachemaster`,
      connectionName: "t-se",
      log: logs.log,
    });
    const cache = createCache({ redis: link, log: logs.log });
    const leases = createSlotLeases({ redis: link, log: logs.log });
    const raw = new Redis(master.url);
    try {
      await waitFor("both on Redis", () => cache.healthy() && leases.shared());
      const lease = await leases.tryAcquire("n1", "m", 1);
      assert.ok(lease !== undefined);
      assert.equal(await raw.zcard("ogw:v1:slots:n1:m"), 1, "the lease script ran on the master");
      const names = [...String(await raw.call("CLIENT", "LIST")).matchAll(/ name=(\S*)/g)].map((m) => m[1] ?? "");
      assert.deepEqual(names.filter((n) => n.startsWith("t-se")).sort(), ["t-se", "t-se-sub"]);
      await lease.release();
    } finally {
      await cache.close();
      await leases.close();
      await link.close();
      await raw.quit();
    }
  });
});
