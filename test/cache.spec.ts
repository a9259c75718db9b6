import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { createCache } from "../src/cache/cache.js";
import { createMemoryTier } from "../src/cache/memory-tier.js";
import { captureLogs } from "./helpers/log-capture.js";

const buf = (s: string): Buffer => Buffer.from(s, "utf8");

describe("memory tier", () => {
  it("returns a value until its TTL passes, then forgets it", () => {
    let now = 1000;
    const tier = createMemoryTier({ now: () => now });
    assert.equal(tier.set("a", buf("1"), 50), true);
    now += 49;
    assert.equal(tier.get("a")?.value.toString(), "1");
    now += 1;
    assert.equal(tier.get("a"), undefined);
    assert.equal(tier.size, 0, "an expired entry is deleted when read");
    assert.equal(tier.bytes, 0);
  });

  it("evicts the least recently used entry when it holds more than maxEntries", () => {
    const tier = createMemoryTier({ maxEntries: 3 });
    for (const k of ["a", "b", "c"]) tier.set(k, buf(k), 60_000);
    tier.get("a"); // a is now the most recently used; b the least
    tier.set("d", buf("d"), 60_000);
    assert.equal(tier.get("b"), undefined);
    assert.deepEqual(
      ["a", "c", "d"].map((k) => tier.get(k)?.value.toString()),
      ["a", "c", "d"],
    );
    assert.equal(tier.size, 3);
    assert.equal(tier.evictions, 1);
  });

  it("evicts by bytes (key length + value bytes) and refuses a value larger than maxBytes", () => {
    const tier = createMemoryTier({ maxBytes: 100 });
    tier.set("a", Buffer.alloc(39), 60_000); // 40 bytes
    tier.set("b", Buffer.alloc(39), 60_000); // 80
    assert.equal(tier.bytes, 80);
    tier.set("c", Buffer.alloc(39), 60_000); // 120 > 100: "a" goes
    assert.equal(tier.get("a"), undefined);
    assert.equal(tier.bytes, 80);
    assert.equal(tier.set("d", Buffer.alloc(100), 60_000), false);
    assert.equal(tier.get("d"), undefined);
    assert.equal(tier.size, 2, "a refused value evicts nothing");
  });

  it("keeps a private copy of the value", () => {
    const tier = createMemoryTier();
    const value = buf("abc");
    tier.set("k", value, 60_000);
    value.write("xyz");
    assert.equal(tier.get("k")?.value.toString(), "abc");
  });

  it("deletes keys under any of several prefixes in one pass, and everything for the empty prefix", () => {
    const tier = createMemoryTier();
    for (const k of ["tags:n1", "tags:n2", "ps:n1", "show:d1"]) tier.set(k, buf(k), 60_000);
    assert.equal(tier.deletePrefixes(["tags:", "ps:"]), 3);
    assert.deepEqual(tier.get("show:d1")?.value.toString(), "show:d1");
    assert.equal(tier.deletePrefixes([""]), 1);
    assert.equal(tier.size, 0);
  });

  it("keeps only the entries a clear() filter spares", () => {
    const tier = createMemoryTier();
    for (const k of ["tags:n1", "show:d1"]) tier.set(k, buf(k), 60_000);
    tier.clear((k) => k.startsWith("show:"));
    assert.equal(tier.get("tags:n1"), undefined);
    assert.equal(tier.get("show:d1")?.value.toString(), "show:d1");
  });
});

describe("memory-only cache (no redisUrl)", () => {
  it("is healthy, stores, expires and counts hits and misses per kind", async () => {
    const logs = captureLogs();
    const cache = createCache({ log: logs.log });
    try {
      assert.equal(cache.backend, "memory");
      assert.equal(cache.healthy(), true);
      await cache.set("tags:n1", buf("[1]"), 40);
      await cache.set("show:abc", buf("{}"), 60_000);
      assert.equal((await cache.get("tags:n1"))?.toString(), "[1]");
      assert.equal((await cache.get("show:abc"))?.toString(), "{}");
      assert.equal(await cache.get("show:nope"), undefined);
      await sleep(60);
      assert.equal(await cache.get("tags:n1"), undefined, "expired after its TTL");
      const s = cache.stats();
      assert.deepEqual(s.kinds["tags"], { hits: 1, memoryHits: 1, misses: 1, errors: 0 });
      assert.deepEqual(s.kinds["show"], { hits: 1, memoryHits: 1, misses: 1, errors: 0 });
      assert.equal(s.backend, "memory");
      assert.equal(s.healthy, true);
      assert.equal(s.memoryEntries, 1);
      assert.equal(s.memoryBytes, "show:abc".length + 2);
      assert.equal(s.redisErrors, 0);
      assert.equal(logs.lines.length, 0, "nothing to say without Redis");
    } finally {
      await cache.close();
    }
  });

  it("peeks at the memory tier at once, counting a hit, and says nothing of a miss", async () => {
    const cache = createCache({ log: captureLogs().log });
    try {
      await cache.set("tags:n1", buf("[1]"), 60_000);
      assert.equal(cache.peek("tags:n1")?.toString(), "[1]");
      assert.equal(cache.peek("tags:n2"), undefined);
      assert.deepEqual(cache.stats().kinds["tags"], { hits: 1, memoryHits: 1, misses: 0, errors: 0 });
    } finally {
      await cache.close();
    }
  });

  it("does not store a value larger than maxValueBytes and drops the older value under that key", async () => {
    const cache = createCache({ log: captureLogs().log, maxValueBytes: 10 });
    try {
      await cache.set("emb:k", Buffer.alloc(10), 60_000);
      assert.equal((await cache.get("emb:k"))?.length, 10);
      await cache.set("emb:k", Buffer.alloc(11), 60_000);
      assert.equal(await cache.get("emb:k"), undefined);
      assert.equal(cache.stats().oversizeSkipped, 1);
      assert.equal(cache.stats().memoryEntries, 0);
    } finally {
      await cache.close();
    }
  });

  it("bounds its memory by entries and bytes as configured", async () => {
    const cache = createCache({ log: captureLogs().log, memory: { maxEntries: 10, maxBytes: 1000 } });
    try {
      await cache.setMany(
        Array.from({ length: 20 }, (_, i) => ({ key: `emb:${i}`, value: Buffer.alloc(8), ttlMs: 60_000 })),
      );
      assert.equal(cache.stats().memoryEntries, 10);
      assert.equal(cache.stats().evictions, 10);
      const got = await cache.getMany(Array.from({ length: 20 }, (_, i) => `emb:${i}`));
      assert.deepEqual(
        got.map((v) => v !== undefined),
        Array.from({ length: 20 }, (_, i) => i >= 10),
        "the ten most recent entries are kept, in order",
      );
      await cache.set("emb:big", Buffer.alloc(995), 60_000); // 1002 bytes with its key: over maxBytes
      assert.equal(await cache.get("emb:big"), undefined);
      assert.ok(cache.stats().memoryBytes <= 1000);
    } finally {
      await cache.close();
    }
  });

  it("treats a TTL of zero as 'do not keep' and rejects a TTL that is not a number", async () => {
    const cache = createCache({ log: captureLogs().log });
    try {
      await cache.set("ps:n1", buf("x"), 60_000);
      await cache.set("ps:n1", buf("y"), 0);
      assert.equal(await cache.get("ps:n1"), undefined);
      await assert.rejects(cache.set("ps:n1", buf("z"), Number.NaN), RangeError);
    } finally {
      await cache.close();
    }
  });

  it("invalidates keys and prefixes locally and tells its listeners once", async () => {
    const cache = createCache({ log: captureLogs().log });
    try {
      await cache.setMany([
        { key: "tags:n1", value: buf("a"), ttlMs: 60_000 },
        { key: "tags:n2", value: buf("b"), ttlMs: 60_000 },
        { key: "ps:n1", value: buf("c"), ttlMs: 60_000 },
        { key: "show:d", value: buf("d"), ttlMs: 60_000 },
      ]);
      const seen: { keys: string[]; prefixes: string[] }[] = [];
      const off = cache.onInvalidate((w) => seen.push(w));
      await cache.invalidate({ keys: ["ps:n1", "ps:n1"], prefixes: ["tags:"] });
      assert.deepEqual(await cache.getMany(["tags:n1", "tags:n2", "ps:n1", "show:d"]), [
        undefined,
        undefined,
        undefined,
        buf("d"),
      ]);
      assert.deepEqual(seen, [{ keys: ["ps:n1"], prefixes: ["tags:"] }]);
      off();
      await cache.invalidate({ keys: ["show:d"] });
      assert.equal(seen.length, 1, "no calls after unsubscribing");
    } finally {
      await cache.close();
    }
  });

  it("keeps working when a listener throws, and logs it", async () => {
    const logs = captureLogs();
    const cache = createCache({ log: logs.log });
    try {
      let called = 0;
      cache.onInvalidate(() => {
        throw new Error("boom");
      });
      cache.onInvalidate(() => called++);
      await cache.invalidate({ keys: ["tags:x"] });
      assert.equal(called, 1);
      assert.equal(logs.find("cache invalidation listener threw").length, 1);
    } finally {
      await cache.close();
    }
  });

  it("counts at most 64 kinds and the rest as 'other'", async () => {
    const cache = createCache({ log: captureLogs().log });
    try {
      for (let i = 0; i < 70; i++) await cache.get(`k${i}:x`);
      const kinds = cache.stats().kinds;
      assert.equal(Object.keys(kinds).length, 64);
      assert.equal(kinds["other"]?.misses, 7);
    } finally {
      await cache.close();
    }
  });
});
