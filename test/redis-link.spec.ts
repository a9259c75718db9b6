import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Redis } from "ioredis";
import { CACHE_REDIS_MESSAGES } from "../src/cache/cache.js";
import type { HealthChange } from "../src/redis/health-state.js";
import { NOT_READY, createRedisLink } from "../src/redis/redis-link.js";
import type { LinkUser, RedisLink, RedisLinkOptions } from "../src/redis/redis-link.js";
import { HEALTH_SHARED_MSG } from "../src/routing/shared-node-health.js";
import { SLOTS_SHARED_MSG } from "../src/routing/slot-leases.js";
import { startSimulator } from "../src/simulator/simulator.js";
import { captureLogs } from "./helpers/log-capture.js";
import type { LogCapture } from "./helpers/log-capture.js";
import { startRedis } from "./helpers/redis-server.js";
import type { RedisServer } from "./helpers/redis-server.js";
import { startTestGateway } from "./helpers/test-gateway.js";

async function eventually(what: string, cond: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await sleep(10);
  }
}

/** The connections CLIENT LIST shows whose name starts with `prefix`, with their fields. */
async function connectionsNamed(raw: Redis, prefix: string): Promise<Record<string, string>[]> {
  const text = String(await raw.call("CLIENT", "LIST"));
  return text
    .trim()
    .split("\n")
    .map((line) =>
      Object.fromEntries(line.split(" ").map((f) => [f.slice(0, f.indexOf("=")), f.slice(f.indexOf("=") + 1)])),
    )
    .filter((c) => (c["name"] ?? "").startsWith(prefix));
}

/** A user of the link that records its changes of health and its messages. */
interface Recorder {
  user: LinkUser;
  changes: HealthChange[];
  messages: string[];
}

describe("the Redis link a replica shares between its cache, node health and slot leases", { timeout: 30_000 }, () => {
  let redis: RedisServer;
  let raw: Redis;
  const links: RedisLink[] = [];
  const servers: RedisServer[] = [];

  const link = (o: Partial<RedisLinkOptions> & { url: string }, logs: LogCapture = captureLogs()): RedisLink => {
    const l = createRedisLink({
      log: logs.log,
      commandTimeoutMs: 250,
      reconnect: { minDelayMs: 20, maxDelayMs: 100 },
      ...o,
    });
    links.push(l);
    return l;
  };
  const record = (l: RedisLink, channel?: string): Recorder => {
    const changes: HealthChange[] = [];
    const messages: string[] = [];
    const user = l.attach({
      subscription: channel === undefined ? undefined : { channel, onMessage: (m) => messages.push(m) },
      onChange: (change) => changes.push(change),
    });
    return { user, changes, messages };
  };

  before(async () => {
    redis = await startRedis();
    raw = new Redis(redis.url);
    raw.on("error", () => undefined);
  });
  after(async () => {
    await Promise.all(links.map((l) => l.close()));
    raw.disconnect();
    await Promise.all([redis, ...servers].map((s) => s.stop()));
  });

  it("gives a gateway replica two Redis connections, one command and one subscriber with both channels, for its cache, node health and slot leases", async () => {
    const sim = await startSimulator();
    const gw = await startTestGateway({ OLLAMA_URL: sim.url, REDIS_URL: redis.url });
    try {
      await eventually(
        "the cache, node health and slot leases all use Redis",
        () =>
          gw.cache.healthy() &&
          gw.logs.find(HEALTH_SHARED_MSG).length === 1 &&
          gw.logs.find(SLOTS_SHARED_MSG).length === 1,
      );
      assert.equal(gw.logs.find(CACHE_REDIS_MESSAGES.up).length, 1);
      const mine = await connectionsNamed(raw, "ogw");
      assert.deepEqual(mine.map((c) => c["name"]).sort(), ["ogw", "ogw-sub"]);
      const sub = mine.find((c) => c["name"] === "ogw-sub");
      assert.equal(sub?.["sub"], "2", "the subscriber carries the invalidation and the node-health channels");
      assert.equal(mine.find((c) => c["name"] === "ogw")?.["sub"], "0");
    } finally {
      await gw.close();
      await sim.close();
    }
    await eventually("closing the gateway closed both", async () => (await connectionsNamed(raw, "ogw")).length === 0);
  });

  it("opens no subscriber for users without a channel: slot leases alone hold one connection", async () => {
    const l = link({ url: redis.url, connectionName: "t-nosub" });
    const r = record(l);
    await eventually("healthy", () => r.user.healthy());
    assert.deepEqual(
      (await connectionsNamed(raw, "t-nosub")).map((c) => c["name"]),
      ["t-nosub"],
    );
    const out = await r.user.run((c) => c.ping());
    assert.deepEqual(out, { ok: true, value: "PONG" });
  });

  it("hands each channel's messages to that channel's handlers only, all on one subscriber, and survives a handler that throws", async () => {
    const logs = captureLogs();
    const l = link({ url: redis.url, connectionName: "t-chan" }, logs);
    const a = record(l, "t:one");
    const b = record(l, "t:one");
    const c = record(l, "t:two");
    l.attach({
      subscription: {
        channel: "t:two",
        onMessage: () => {
          throw new Error("handler bug");
        },
      },
    });
    await eventually("every user healthy", () => [a, b, c].every((r) => r.user.healthy()));
    const subs = (await connectionsNamed(raw, "t-chan")).filter((x) => x["name"] === "t-chan-sub");
    assert.equal(subs.length, 1, "one subscriber connection");
    assert.equal(subs[0]?.["sub"], "2", "subscribed to both channels");

    await raw.publish("t:one", "x");
    await raw.publish("t:two", "y");
    await eventually("both channels delivered", () => a.messages.length === 1 && c.messages.length === 1);
    assert.deepEqual([a.messages, b.messages, c.messages], [["x"], ["x"], ["y"]]);
    assert.equal(logs.find("redis message handler threw").length, 1);

    b.user.detach();
    await raw.publish("t:one", "z");
    await eventually("A hears z", () => a.messages.length === 2);
    // Handlers of one message run together: had B still been attached, it would have heard z by now.
    assert.deepEqual(b.messages, ["x"], "a detached user hears nothing more");

    a.user.detach();
    await eventually("t:one is unsubscribed once nobody listens", async () => {
      const [sub] = (await connectionsNamed(raw, "t-chan")).filter((x) => x["name"] === "t-chan-sub");
      return sub?.["sub"] === "1";
    });
    assert.deepEqual(l.stats().subscribedChannels, ["t:two"]);
    assert.equal(c.user.healthy(), true);
  });

  it("subscribes a channel added while the link is up without disturbing the users already on it", async () => {
    const l = link({ url: redis.url, connectionName: "t-late" });
    const first = record(l, "t:first");
    await eventually("first healthy", () => first.user.healthy());
    const late = record(l, "t:late");
    await eventually("the late user is healthy", () => late.user.healthy());
    await raw.publish("t:late", "hello");
    await eventually("the late channel is delivered", () => late.messages.length === 1);
    assert.deepEqual(first.changes, ["up"]);
    assert.deepEqual(late.changes, ["up"]);
    assert.equal(l.stats().readyCount, 1, "no reconnect");
  });

  it("tells each user once that Redis went away and once that it is back, however many reconnects fail in between", async () => {
    const own = await startRedis();
    servers.push(own);
    const l = link({ url: own.url, connectionName: "t-outage" });
    const withChannel = record(l, "t:outage");
    const commandsOnly = record(l);
    await eventually("both healthy", () => withChannel.user.healthy() && commandsOnly.user.healthy());

    await own.stop();
    await eventually("both told", () => withChannel.changes.length === 2 && commandsOnly.changes.length === 2);
    const attempts = l.stats().reconnectAttempts;
    await eventually("three more failed reconnects", () => l.stats().reconnectAttempts >= attempts + 3);
    const started = performance.now();
    const out = await withChannel.user.run((c) => c.ping());
    // Well below the 250 ms command timeout: failed without being sent (generous for a loaded machine).
    assert.ok(performance.now() - started < 150, "commands fail at once while disconnected");
    assert.deepEqual(out, { ok: false, error: NOT_READY });
    assert.deepEqual(withChannel.changes, ["up", "down"]);
    assert.deepEqual(commandsOnly.changes, ["up", "down"]);

    await own.restart();
    await eventually("both back", () => withChannel.user.healthy() && commandsOnly.user.healthy());
    assert.deepEqual(withChannel.changes, ["up", "down", "up-again"]);
    assert.deepEqual(commandsOnly.changes, ["up", "down", "up-again"]);
    assert.equal(withChannel.user.subscribed(), true, "the channel was subscribed again on the new connection");
    const ownRaw = new Redis(own.url);
    try {
      await ownRaw.publish("t:outage", "after");
      await eventually("messages flow again", () => withChannel.messages.includes("after"));
    } finally {
      ownRaw.disconnect();
    }
  });

  it("drops and redials connections to a Redis that stops answering, and reports it back when it wakes", async () => {
    const own = await startRedis();
    servers.push(own);
    const l = link({ url: own.url, connectionName: "t-hang", commandTimeoutMs: 100 });
    const r = record(l, "t:hang");
    await eventually("healthy", () => r.user.healthy());
    own.pause();
    try {
      await eventually("the hang is detected", () => l.stats().hangsDetected >= 1, 8000);
      await eventually("the user is told", () => r.changes.includes("down"));
      const started = performance.now();
      await r.user.run((c) => c.ping());
      assert.ok(performance.now() - started < 100 + 150, "commands stay bounded");
    } finally {
      own.resume();
    }
    await eventually("back", () => r.user.healthy(), 8000);
    assert.deepEqual(r.changes, ["up", "down", "up-again"]);
  });

  it("fails a detached user's commands at once while the others keep theirs, and every user's after close", async () => {
    const l = link({ url: redis.url, connectionName: "t-detach" });
    const a = record(l, "t:detach");
    const b = record(l);
    await eventually("healthy", () => a.user.healthy() && b.user.healthy());
    a.user.detach();
    assert.equal(a.user.healthy(), false);
    assert.deepEqual(await a.user.run((c) => c.ping()), { ok: false, error: NOT_READY });
    assert.deepEqual(await b.user.run((c) => c.ping()), { ok: true, value: "PONG" });
    await l.close();
    assert.equal(b.user.healthy(), false);
    assert.deepEqual(await b.user.run((c) => c.ping()), { ok: false, error: NOT_READY });
    assert.deepEqual(b.changes, ["up"], "closing is no outage");
    await eventually("both connections closed", async () => (await connectionsNamed(raw, "t-detach")).length === 0);
  });
});
