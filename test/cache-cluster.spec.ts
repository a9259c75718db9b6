import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Redis } from "ioredis";
import { createCache } from "../src/cache/cache.js";
import type { Cache } from "../src/cache/cache.js";
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
});
