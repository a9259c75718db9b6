import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Redis } from "ioredis";
import { createRedisLink } from "../src/redis/redis-link.js";
import type { RedisLink } from "../src/redis/redis-link.js";
import { SLOTS_LOCAL_MSG, SLOTS_SHARED_AGAIN_MSG, createSlotLeases } from "../src/routing/slot-leases.js";
import type { SlotLease, SlotLeases, SlotLeasesOptions } from "../src/routing/slot-leases.js";
import { captureLogs } from "./helpers/log-capture.js";
import { startRedis, startTcpProxy } from "./helpers/redis-server.js";
import type { RedisServer, TcpProxy } from "./helpers/redis-server.js";

const TIMEOUT_MS = 250;
/** Scheduling slack on a loaded 2-core CI machine. */
const MARGIN_MS = 150;
const KEY = "ogw:v1:slots:n1:llama3:8b";

async function waitFor(what: string, cond: () => boolean | Promise<boolean>, ms = 4000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await sleep(10);
  }
}

/** Runs `call` and returns its value with how long it took. */
async function timed<T>(call: () => Promise<T>): Promise<{ value: T; ms: number }> {
  const start = performance.now();
  const value = await call();
  return { value, ms: performance.now() - start };
}

function definedLease(lease: SlotLease | undefined, what: string): SlotLease {
  assert.ok(lease !== undefined, what);
  return lease;
}

describe("slot leases", { timeout: 15_000 }, () => {
  const opened: SlotLeases[] = [];
  const servers: RedisServer[] = [];
  const proxies: TcpProxy[] = [];
  const raws: Redis[] = [];
  const links: RedisLink[] = [];
  let redis: RedisServer;
  let raw: Redis;

  /** A replica's slot leases, closed after the file. */
  const replica = (o: Partial<SlotLeasesOptions> & Pick<SlotLeasesOptions, "log">): SlotLeases => {
    const leases = createSlotLeases(o.redis === undefined ? { commandTimeoutMs: TIMEOUT_MS, ...o } : o);
    opened.push(leases);
    return leases;
  };
  const rawClient = (url: string): Redis => {
    const r = new Redis(url);
    r.on("error", () => undefined); // a stopped server is part of the test
    raws.push(r);
    return r;
  };

  before(async () => {
    redis = await startRedis();
    servers.push(redis);
    raw = rawClient(redis.url);
  });
  after(async () => {
    await Promise.all(opened.map((l) => l.close()));
    await Promise.all(links.map((l) => l.close()));
    await Promise.all(raws.map((r) => r.quit()));
    await Promise.all(proxies.map((p) => p.close()));
    await Promise.all(servers.map((s) => s.stop()));
  });

  it("counts in this process without Redis: the limit holds, a release frees one slot, and a second release frees nothing", async () => {
    const leases = replica({ log: captureLogs().log });
    assert.equal(leases.shared(), false);
    const a = definedLease(await leases.tryAcquire("n1", "m", 2), "first slot");
    definedLease(await leases.tryAcquire("n1", "m", 2), "second slot");
    assert.equal(await leases.tryAcquire("n1", "m", 2), undefined, "both slots are held");
    definedLease(await leases.tryAcquire("n2", "m", 2), "another node has its own slots");
    definedLease(await leases.tryAcquire("n1", "m2", 2), "another model has its own slots");
    assert.equal(await leases.held("n1", "m"), 2);

    await a.release();
    assert.equal(await leases.held("n1", "m"), 1);
    await a.release();
    assert.equal(await leases.held("n1", "m"), 1, "a second release of the same lease frees nothing");
    definedLease(await leases.tryAcquire("n1", "m", 2), "the freed slot");
    assert.equal(await leases.tryAcquire("n1", "m", 2), undefined, "the double release did not free a second slot");
    assert.equal(await leases.tryAcquire("n1", "m", 0), undefined, "a limit of 0 admits nothing");

    await leases.close();
    assert.equal(await leases.held("n1", "m"), 0, "close released everything");
    assert.equal(await leases.tryAcquire("n1", "m", 2), undefined, "a closed instance hands out nothing");
  });

  it("lets two replicas on one Redis hold no more than the limit together, and a release on one lets the other acquire", async () => {
    await raw.del(KEY);
    const a = replica({ redisUrl: redis.url, log: captureLogs().log });
    const b = replica({ redisUrl: redis.url, log: captureLogs().log });
    await waitFor("both replicas share the view", () => a.shared() && b.shared());

    const attempts = Array.from({ length: 50 }, (_, i) => (i % 2 === 0 ? a : b).tryAcquire("n1", "llama3:8b", 2));
    const won = (await Promise.all(attempts)).filter((l): l is SlotLease => l !== undefined);
    assert.equal(won.length, 2, "50 concurrent attempts from both replicas, 2 slots");
    assert.equal(await a.held("n1", "llama3:8b"), 2);
    assert.equal(await b.held("n1", "llama3:8b"), 2);
    assert.equal(await raw.zcard(KEY), 2, "the leases are the members of the node's and model's set");
    assert.ok((await raw.pttl(KEY)) > 0, "the set expires by itself");
    assert.equal(
      await raw.exists("ogw:v1:slots:n1%3Allama3:8b"),
      0,
      "a ':' in the model does not move the node/model boundary",
    );
    await Promise.all(won.map((l) => l.release()));
    assert.equal(await raw.zcard(KEY), 0);

    const a1 = definedLease(await a.tryAcquire("n1", "llama3:8b", 2), "A's first");
    definedLease(await a.tryAcquire("n1", "llama3:8b", 2), "A's second");
    assert.equal(await b.tryAcquire("n1", "llama3:8b", 2), undefined, "B sees A's slots");
    await a1.release();
    definedLease(await b.tryAcquire("n1", "llama3:8b", 2), "B gets the slot A released");
    assert.equal(await a.tryAcquire("n1", "llama3:8b", 2), undefined, "and A now sees B's");
  });

  it("keeps a lease alive by renewals well past leaseMs", async () => {
    const key = "ogw:v1:slots:n-renew:m";
    const a = replica({ redisUrl: redis.url, leaseMs: 300, renewEveryMs: 100, log: captureLogs().log });
    const b = replica({ redisUrl: redis.url, leaseMs: 300, renewEveryMs: 100, log: captureLogs().log });
    await waitFor("both replicas share the view", () => a.shared() && b.shared());
    const lease = definedLease(await a.tryAcquire("n-renew", "m", 1), "A's slot");

    await sleep(1200); // four lease lifetimes
    assert.equal(await b.tryAcquire("n-renew", "m", 1), undefined, "the renewed lease still holds the slot");
    assert.equal(await b.held("n-renew", "m"), 1);
    const [member, score] = await raw.zrange(key, 0, -1, "WITHSCORES");
    const [seconds, micros] = await raw.time();
    const serverNow = Number(seconds) * 1000 + Math.floor(Number(micros) / 1000);
    assert.ok(member !== undefined && score !== undefined, "the lease is in Redis");
    assert.ok(Number(score) > serverNow, "its expiry lies ahead on the server's clock");

    await lease.release();
    definedLease(await b.tryAcquire("n-renew", "m", 1), "B gets it once A releases");
  });

  it("gives a vanished replica's slots back after leaseMs, and re-registers them when it returns", async () => {
    const proxy = await startTcpProxy(redis.port);
    proxies.push(proxy);
    const aLogs = captureLogs();
    const leaseMs = 600;
    const renewEveryMs = 150;
    const a = replica({ redisUrl: `redis://127.0.0.1:${proxy.port}`, leaseMs, renewEveryMs, log: aLogs.log });
    const b = replica({ redisUrl: redis.url, leaseMs, renewEveryMs, log: captureLogs().log });
    await waitFor("both replicas share the view", () => a.shared() && b.shared());
    const held = [
      definedLease(await a.tryAcquire("n-crash", "m", 2), "A's first"),
      definedLease(await a.tryAcquire("n-crash", "m", 2), "A's second"),
    ];
    assert.equal(await b.tryAcquire("n-crash", "m", 2), undefined);

    proxy.cut(); // A can no longer reach Redis: it neither renews nor releases
    const cutAt = performance.now();
    const bLeases: SlotLease[] = [];
    while (bLeases.length < 2 && performance.now() - cutAt < leaseMs + 1000) {
      const l = await b.tryAcquire("n-crash", "m", 2);
      if (l !== undefined) {
        if (bLeases.length === 0) {
          const after = performance.now() - cutAt;
          // A's last renewal was at most renewEveryMs before the cut.
          assert.ok(
            after >= leaseMs - renewEveryMs - 50,
            `a slot came back after ${after.toFixed(0)} ms, before A's lease ran out`,
          );
        }
        bLeases.push(l);
      } else await sleep(20);
    }
    assert.equal(bLeases.length, 2, "both of A's slots came back within leaseMs");
    assert.equal(a.shared(), false, "A counts locally");
    assert.equal(aLogs.find(SLOTS_LOCAL_MSG).length, 1);

    proxy.restore();
    await waitFor("A shares the view again", () => a.shared());
    // A's requests never ended: its leases are back in Redis, above the limit until they drain.
    await waitFor("A's leases are registered again", async () => (await b.held("n-crash", "m")) === 4, 2000);
    assert.equal(await b.tryAcquire("n-crash", "m", 2), undefined, "the node is over its slots: nothing new");
    assert.equal(aLogs.find(SLOTS_SHARED_AGAIN_MSG).length, 1);
    await Promise.all([...held, ...bLeases.slice(1)].map((l) => l.release()));
    definedLease(await b.tryAcquire("n-crash", "m", 2), "once drained below the limit, slots are free again");
  });

  it("answers within the command timeout with local counting when Redis stops, and shares again after a restart", async () => {
    const own = await startRedis();
    servers.push(own);
    const ownRaw = rawClient(own.url);
    const logs = captureLogs();
    // The replica's shared link, as the gateway makes it, so the test can watch its reconnects.
    const link = createRedisLink({ url: own.url, commandTimeoutMs: TIMEOUT_MS, log: logs.log });
    links.push(link);
    const a = replica({ redis: link, leaseMs: 5000, log: logs.log });
    await waitFor("shared", () => a.shared());
    definedLease(await a.tryAcquire("n1", "llama3:8b", 2), "taken in Redis");

    await own.stop();
    const second = await timed(() => a.tryAcquire("n1", "llama3:8b", 2));
    assert.ok(second.ms < TIMEOUT_MS + MARGIN_MS, `tryAcquire took ${second.ms.toFixed(0)} ms`);
    const l2 = definedLease(second.value, "a free slot by local count");
    const third = await timed(() => a.tryAcquire("n1", "llama3:8b", 2));
    assert.ok(third.ms < TIMEOUT_MS + MARGIN_MS, `tryAcquire took ${third.ms.toFixed(0)} ms`);
    assert.equal(third.value, undefined, "the local count still enforces the limit");
    const held = await timed(() => a.held("n1", "llama3:8b"));
    assert.equal(held.value, 2);
    assert.ok(held.ms < TIMEOUT_MS + MARGIN_MS);
    const release = await timed(() => l2.release());
    assert.ok(release.ms < TIMEOUT_MS + MARGIN_MS);
    assert.equal(a.shared(), false);
    const attempts = link.stats().reconnectAttempts;
    await waitFor("several failed reconnects…", () => link.stats().reconnectAttempts >= attempts + 3);
    assert.equal(logs.find(SLOTS_LOCAL_MSG).length, 1, "…but one warning");

    await own.restart(); // an empty Redis: data is not kept
    await waitFor("shared again", () => a.shared());
    assert.equal(logs.find(SLOTS_SHARED_AGAIN_MSG).length, 1);
    assert.equal(
      await ownRaw.zcard(KEY),
      1,
      "the lease still held was registered in the new Redis, the released one was not",
    );
    assert.equal(logs.find(SLOTS_LOCAL_MSG).length, 1);
  });

  it("returns in bounded time while Redis hangs, and leaves Redis holding exactly its leases when it wakes", async () => {
    const own = await startRedis();
    servers.push(own);
    const ownRaw = rawClient(own.url);
    const key = "ogw:v1:slots:n-hang:m";
    const logs = captureLogs();
    const a = replica({ redisUrl: own.url, leaseMs: 4000, log: logs.log });
    await waitFor("shared", () => a.shared());
    const l0 = definedLease(await a.tryAcquire("n-hang", "m", 3), "l0");
    definedLease(await a.tryAcquire("n-hang", "m", 3), "l1");
    await ownRaw.del(key); // their entries vanish from Redis (as if expired): Redis now has room the replica does not

    own.pause();
    try {
      // Redis still looks connected: these wait on it and give up after the command timeout.
      // Three acquisitions race for the one free slot plus the one l0's release frees.
      const [released, x, y, z, held] = await Promise.all([
        timed(() => l0.release()),
        timed(() => a.tryAcquire("n-hang", "m", 3)),
        timed(() => a.tryAcquire("n-hang", "m", 3)),
        timed(() => a.tryAcquire("n-hang", "m", 3)),
        timed(() => a.held("n-hang", "m")),
      ]);
      for (const t of [x, y, z, held, released])
        assert.ok(t.ms < TIMEOUT_MS + MARGIN_MS, `call took ${t.ms.toFixed(0)} ms`);
      assert.ok(x.ms >= TIMEOUT_MS - 5, "tryAcquire really waited on Redis and gave up");
      const granted = [x, y, z].flatMap((t) => (t.value === undefined ? [] : [t.value]));
      assert.equal(granted.length, 2, "the local count admits exactly the free slots");
      assert.equal(a.shared(), false);
      // Now known to be down: answered locally, without waiting.
      const full = await timed(() => a.tryAcquire("n-hang", "m", 3));
      // Below the command timeout: answered locally, not after waiting on Redis.
      assert.ok(full.ms < TIMEOUT_MS - 100, `tryAcquire took ${full.ms.toFixed(0)} ms`);
      assert.equal(full.value, undefined, "l1 and the two new leases hold every slot");
      await granted[0]?.release();
      const fast = await timed(() => a.tryAcquire("n-hang", "m", 3));
      assert.ok(fast.ms < TIMEOUT_MS - 100, `tryAcquire took ${fast.ms.toFixed(0)} ms`);
      definedLease(fast.value, "a slot released while Redis hangs is free locally at once");
      assert.equal(logs.find(SLOTS_LOCAL_MSG).length, 1);
    } finally {
      own.resume();
    }
    await waitFor("shared again", () => a.shared());
    // The three scripts that timed out all took a slot when Redis woke; the one denied locally is
    // removed again, l1 is registered again.
    await waitFor("Redis holds exactly the 3 leases held", async () => (await ownRaw.zcard(key)) === 3, 1500);
    assert.equal(await a.held("n-hang", "m"), 3);
    await a.close();
    assert.equal(await ownRaw.zcard(key), 0, "close released everything in Redis");
  });
});
