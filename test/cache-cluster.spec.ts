import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Redis } from "ioredis";
import { createCache } from "../src/cache/cache.js";
import type { Cache } from "../src/cache/cache.js";
import { createRedisLink } from "../src/redis/redis-link.js";
import { createSlotLeases } from "../src/routing/slot-leases.js";
import { captureLogs } from "./helpers/log-capture.js";
import { startRedis } from "./helpers/redis-server.js";
import type { RedisServer } from "./helpers/redis-server.js";

async function waitFor(what: string, cond: () => boolean | Promise<boolean>, ms = 6000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await sleep(25);
  }
}

describe("cache on a Redis Cluster", { timeout: 20_000 }, () => {
  let node: RedisServer;
  let raw: Redis;
  const caches: Cache[] = [];
  before(async () => {
    // A one-node cluster owning every slot: the Cluster client, slot routing, per-master SCAN
    // and cluster pub/sub all run for real.
    node = await startRedis({
      args: ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-announce-ip", "127.0.0.1"],
    });
    raw = new Redis(node.url);
    await raw.call("CLUSTER", "ADDSLOTSRANGE", "0", "16383");
    await waitFor("cluster_state:ok", async () =>
      String(await raw.call("CLUSTER", "INFO")).includes("cluster_state:ok"),
    );
  });
  after(async () => {
    await Promise.all(caches.map((c) => c.close()));
    await raw.quit();
    await node.stop();
  });

  it("stores, reads and invalidates keys in many slots through redis+cluster://", async () => {
    const url = `redis+cluster://127.0.0.1:${node.port}`;
    const a = createCache({ redisUrl: url, log: captureLogs().log, commandTimeoutMs: 1000 });
    const b = createCache({ redisUrl: url, log: captureLogs().log, commandTimeoutMs: 1000 });
    caches.push(a, b);
    await waitFor("both healthy", () => a.healthy() && b.healthy());

    const keys = Array.from({ length: 50 }, (_, i) => `tags:n${i}`); // spread over many slots
    await a.setMany(keys.map((key) => ({ key, value: Buffer.from(key), ttlMs: 60_000 })));
    await a.set("show:d1", Buffer.from("s"), 60_000);
    const got = await b.getMany(keys);
    assert.deepEqual(
      got.map((v) => v?.toString()),
      keys,
    );
    assert.ok((await raw.pttl("ogw:v1:tags:n7")) > 0);

    await a.invalidate({ keys: ["tags:n1", "tags:n2"], prefixes: ["tags:n3"] }); // n3, n30…n39
    await waitFor("B hears the invalidation", () => b.stats().invalidationsReceived >= 1, 1000);
    const after = await b.getMany(keys);
    const gone = keys.filter((_, i) => after[i] === undefined);
    assert.deepEqual(
      gone.sort(),
      ["tags:n1", "tags:n2", "tags:n3", ...Array.from({ length: 10 }, (_, i) => `tags:n3${i}`)].sort(),
    );
    assert.equal(await raw.exists("ogw:v1:tags:n35"), 0, "deleted in the cluster too");
    assert.equal(await raw.exists("ogw:v1:tags:n4"), 1);
    assert.equal((await b.get("show:d1"))?.toString(), "s");
    assert.equal(b.stats().redisErrors + a.stats().redisErrors, 0);
  });

  it("shares one link between the cache, slot leases and node health: one connection per master plus one subscriber, with scripts and pub/sub working", async () => {
    const logs = captureLogs();
    const link = createRedisLink({
      url: `redis+cluster://127.0.0.1:${node.port}`,
      connectionName: "t-cl",
      log: logs.log,
    });
    const cache = createCache({ redis: link, log: logs.log });
    const leases = createSlotLeases({ redis: link, log: logs.log });
    const heard: string[] = [];
    const health = link.attach({ subscription: { channel: "ogw:v1:node-health", onMessage: (m) => heard.push(m) } });
    try {
      await waitFor("every user on Redis", () => cache.healthy() && leases.shared() && health.healthy());
      // Keys in many slots (here all on the one master), and a lease script on its one key.
      await cache.setMany(
        Array.from({ length: 20 }, (_, i) => ({ key: `ps:n${i}`, value: Buffer.from("x"), ttlMs: 60_000 })),
      );
      const lease = await leases.tryAcquire("n1", "m", 1);
      assert.ok(lease !== undefined);
      assert.equal(await leases.tryAcquire("n1", "m", 1), undefined, "the one slot is held");
      assert.equal(await raw.zcard("ogw:v1:slots:n1:m"), 1);
      await raw.publish("ogw:v1:node-health", "ping");
      await waitFor("the node-health channel is heard", () => heard.length === 1);

      const text = String(await raw.call("CLIENT", "LIST"));
      // ioredis names its cluster connections after the one given to it; the slot refresher's
      // (every 5 s, closed at once) is transient and not counted.
      const names = [...text.matchAll(/ name=(\S*)/g)]
        .map((m) => m[1] ?? "")
        .filter((n) => n.includes("t-cl") && !n.startsWith("ioredis-cluster(refresher)"));
      assert.deepEqual(names.sort(), ["ioredis-cluster(subscriber):t-cl-sub", "t-cl"]);
      await lease.release();
      assert.equal(await raw.zcard("ogw:v1:slots:n1:m"), 0);
    } finally {
      await cache.close();
      await leases.close();
      health.detach();
      await link.close();
    }
  });
});
