import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { ConnectError, createClient } from "@connectrpc/connect";
import type { Client } from "@connectrpc/connect";
import { Redis } from "ioredis";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import type { GenerateRequest } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import {
  HEALTH_LOCAL_MSG,
  HEALTH_REMOTE_MSG,
  HEALTH_SHARED_AGAIN_MSG,
  HEALTH_SHARED_MSG,
  MAX_MESSAGE_BYTES,
} from "../src/routing/shared-node-health.js";
import { startSimulator } from "../src/simulator/simulator.js";
import type { Simulator } from "../src/simulator/simulator.js";
import { laterPort, startRedis } from "./helpers/redis-server.js";
import type { RedisServer } from "./helpers/redis-server.js";
import { startTestGateway } from "./helpers/test-gateway.js";
import type { TestGateway } from "./helpers/test-gateway.js";
import { TRANSPORTS } from "./helpers/transports.js";

const CHANNEL = "ogw:v1:node-health";
/** Long enough that neither a probe nor the open timer can be what tells a replica about a node. */
const NEVER_MS = "60000";

async function waitFor(what: string, cond: () => boolean, ms = 4000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await sleep(10);
  }
}

interface Replica {
  gw: TestGateway;
  client: Client<typeof InferenceService>;
}

/** Two simulated nodes n0, n1 and the replicas in front of them; `replica()` adds one. */
interface Fleet {
  sims: Simulator[];
  urls: string;
  replica(env?: Record<string, string>): Promise<Replica>;
  close(): Promise<void>;
}

async function fleet(redisUrl: string): Promise<Fleet> {
  const sims = await Promise.all([0, 1].map(() => startSimulator({ tokenMs: 10, numParallel: 1, maxLoadedModels: 2 })));
  const urls = sims.map((s, i) => `n${i}=${s.url}`).join(",");
  const replicas: Replica[] = [];
  return {
    sims,
    urls,
    async replica(env = {}) {
      const gw = await startTestGateway({
        OLLAMA_URLS: urls,
        OLLAMA_NUM_PARALLEL: "1",
        OLLAMA_MAX_LOADED_MODELS: "2",
        CACHE_PS_TTL_MS: "200",
        REDIS_URL: redisUrl,
        HEALTH_PROBE_INTERVAL_MS: NEVER_MS,
        CIRCUIT_OPEN_MS: NEVER_MS,
        ...env,
      });
      const r = { gw, client: createClient(InferenceService, TRANSPORTS[0]!.make(gw.url)) };
      replicas.push(r);
      return r;
    },
    async close() {
      for (const r of replicas) await r.gw.close();
      await Promise.all(sims.map((s) => s.close().catch(() => undefined)));
    },
  };
}

/** One Generate call; the node that served it, or the error. */
async function generate(r: Replica, prompt: string, numPredict = 2): Promise<{ node?: string; error?: ConnectError }> {
  try {
    let node: string | undefined;
    for await (const m of r.client.generate({ model: "llama3.2", prompt, options: { numPredict } } as GenerateRequest))
      node = m.usage?.node ?? node;
    return { node };
  } catch (e) {
    return { error: ConnectError.from(e) };
  }
}

/** Both calls at once, so with one slot per node both nodes are asked (if routable). */
async function generateOnBoth(r: Replica, tag: string): Promise<{ node?: string; error?: ConnectError }[]> {
  return Promise.all([0, 1].map((i) => generate(r, `${tag}${i}`, 20)));
}

const waitShared = (...rs: Replica[]): Promise<void> =>
  waitFor("both replicas share node health", () =>
    rs.every((r) => r.gw.logs.find(HEALTH_SHARED_MSG).length + r.gw.logs.find(HEALTH_SHARED_AGAIN_MSG).length > 0),
  );

/** Closes the node that served a first call through `a`, then sends traffic through `a` until its circuit for that node opens. */
async function killNodeThroughA(
  f: Fleet,
  a: Replica,
): Promise<{ victim: string; index: number; port: number; openedAt: number }> {
  const first = await generate(a, "where");
  assert.equal(first.error, undefined);
  const victim = first.node!;
  const index = Number(victim.slice(1));
  const port = f.sims[index]!.port;
  let openedAt = 0;
  const stop = a.gw.nodeHealth.onChange((node, healthy) => {
    if (node === victim && !healthy) openedAt = Date.now();
  });
  try {
    await f.sims[index]!.close();
    for (let i = 0; i < 10 && openedAt === 0; i++) {
      const results = await generateOnBoth(a, `after-kill-${i}-`);
      assert.deepEqual(
        results.map((x) => x.error?.message),
        [undefined, undefined],
        "retried on the other node",
      );
    }
  } finally {
    stop();
  }
  assert.ok(openedAt > 0, "A's traffic opened the dead node's circuit");
  return { victim, index, port, openedAt };
}

describe("node health shared between gateway replicas through Redis", { timeout: 60_000 }, () => {
  let redis: RedisServer;
  let raw: Redis;
  let listener: Redis;
  /** Every message seen on the channel, in order. */
  const seen: string[] = [];

  before(async () => {
    redis = await startRedis();
    raw = new Redis(redis.url);
    listener = new Redis(redis.url);
    for (const c of [raw, listener]) c.on("error", () => undefined);
    listener.on("message", (channel: string, message: string) => {
      if (channel === CHANNEL) seen.push(message);
    });
    await listener.subscribe(CHANNEL);
  });

  after(async () => {
    raw.disconnect();
    listener.disconnect();
    await redis.stop();
  });

  it("makes replica B stop routing to a node within a second of replica A's circuit opening, without B sending it anything", {
    timeout: 20_000,
  }, async () => {
    const f = await fleet(redis.url);
    try {
      const a = await f.replica();
      const b = await f.replica();
      await waitShared(a, b);
      assert.ok(b.gw.nodeHealth.isHealthy("n0") && b.gw.nodeHealth.isHealthy("n1"), "B starts with both nodes healthy");
      const mark = seen.length;

      const { victim, openedAt } = await killNodeThroughA(f, a);
      await waitFor("B sees the node unhealthy", () => !b.gw.nodeHealth.isHealthy(victim), 1500);
      const lag = Date.now() - openedAt;
      assert.ok(lag < 1000, `B knew ${lag} ms after A's circuit opened`);
      assert.equal(b.gw.nodeHealth.state(victim), "open");
      assert.equal(b.gw.nodeHealth.state(victim === "n0" ? "n1" : "n0"), "closed", "the other node is untouched");
      assert.equal(b.gw.logs.find(HEALTH_REMOTE_MSG).length, 1);
      assert.equal(b.gw.logs.find("ollama node is unreachable").length, 1, "B's own health listeners saw the flip");

      // One message for one flip: B applied it without publishing it again (no echo).
      await sleep(200);
      const after = seen.slice(mark).map((m) => JSON.parse(m) as Record<string, unknown>);
      assert.equal(after.length, 1, JSON.stringify(after));
      assert.deepEqual({ ...after[0], o: "?" }, { v: 1, o: "?", n: victim, s: "down" });
    } finally {
      await f.close();
    }
  });

  it("lets replica B try a node again as soon as replica A sees it succeed, without waiting for B's probe or open timer", {
    timeout: 20_000,
  }, async () => {
    const f = await fleet(redis.url);
    try {
      // A half-opens after 300 ms so its traffic tries the node; B would wait a minute on its own.
      const a = await f.replica({ CIRCUIT_OPEN_MS: "300" });
      const b = await f.replica();
      await waitShared(a, b);
      const { victim, index, port } = await killNodeThroughA(f, a);
      await waitFor("B sees the node down", () => b.gw.nodeHealth.state(victim) === "open", 1500);

      f.sims[index] = await startSimulator({ port, tokenMs: 10, numParallel: 1, maxLoadedModels: 2 });
      // A's circuit half-opens after its 300 ms; B's stays open for a minute.
      await waitFor("A's circuit is half-open", () => a.gw.nodeHealth.state(victim) === "half-open", 3000);
      assert.equal(b.gw.nodeHealth.state(victim), "open");
      let served = false;
      for (let i = 0; i < 10 && !served; i++) {
        served = (await generateOnBoth(a, `back-${i}-`)).some((x) => x.node === victim);
      }
      assert.ok(served, "A's traffic reached the revived node");
      assert.equal(a.gw.nodeHealth.state(victim), "closed");

      await waitFor("B lets traffic try the node", () => b.gw.nodeHealth.isHealthy(victim), 1500);
      assert.equal(b.gw.nodeHealth.state(victim), "half-open", "trial only: B's own success decides");
      const both = await generateOnBoth(b, "through-b-");
      assert.deepEqual(new Set(both.map((x) => x.node)), new Set(["n0", "n1"]), "B routed to the revived node too");
      assert.equal(b.gw.nodeHealth.state(victim), "closed", "B's own success closed it");
    } finally {
      await f.close();
    }
  });

  it("ignores its own messages and anything malformed on the channel", { timeout: 20_000 }, async () => {
    const f = await fleet(redis.url);
    try {
      const a = await f.replica();
      const b = await f.replica();
      await waitShared(a, b);
      const ha = a.gw.nodeHealth;
      const hb = b.gw.nodeHealth;

      // A reports a failure (as traffic does): its message tells us its origin id.
      const mark = seen.length;
      ha.reportFailure("n0", "unreachable");
      await waitFor("A's verdict on the channel", () => seen.length > mark);
      const own = JSON.parse(seen[mark]!) as { o: string };
      await waitFor("B applied it", () => hb.state("n0") === "open");
      ha.reportSuccess("n0");
      await waitFor("B half-opened n0", () => hb.state("n0") === "half-open");
      assert.equal(ha.state("n0"), "closed");

      const published: string[] = [];
      const publish = async (message: string | Buffer): Promise<void> => {
        published.push(message.toString());
        await raw.publish(CHANNEL, message);
      };
      const since = seen.length;

      // A's own id on a verdict it never made: A ignores it, B (rightly) applies it.
      await publish(JSON.stringify({ v: 1, o: own.o, n: "n1", s: "down" }));
      await waitFor("B applied the replayed message", () => hb.state("n1") === "open");

      const padded = JSON.stringify({ v: 1, o: "tester", n: "n1", s: "down", pad: "x".repeat(MAX_MESSAGE_BYTES) });
      const garbage: (string | Buffer)[] = [
        "not json",
        "",
        "null",
        "42",
        '"down"',
        '[1,"tester","n1","down"]',
        JSON.stringify({ v: 2, o: "tester", n: "n1", s: "down" }),
        JSON.stringify({ v: "1", o: "tester", n: "n1", s: "down" }),
        JSON.stringify({ v: 1, n: "n1", s: "down" }),
        JSON.stringify({ v: 1, o: "", n: "n1", s: "down" }),
        JSON.stringify({ v: 1, o: "x".repeat(65), n: "n1", s: "down" }),
        JSON.stringify({ v: 1, o: "tester", n: "n9", s: "down" }),
        JSON.stringify({ v: 1, o: "tester", n: ["n1"], s: "down" }),
        JSON.stringify({ v: 1, o: "tester", n: "toString", s: "down" }),
        JSON.stringify({ v: 1, o: "tester", n: "n1", s: "sideways" }),
        '{"__proto__":{"v":1,"o":"tester","n":"n1","s":"down"}}',
        padded,
        Buffer.from([0xff, 0xfe, 0x00, 0x7b]),
      ];
      for (const g of garbage) await publish(g);
      // Delivered in order after the garbage: once A applies it, A has been through all of it.
      await publish(JSON.stringify({ v: 1, o: "tester", n: "n0", s: "down" }));
      await waitFor("A applied the valid message after the garbage", () => ha.state("n0") === "open");

      assert.equal(ha.state("n1"), "closed", "A ignored its own id and every malformed message about n1");
      const served = await generate(a, "still serving");
      assert.equal(served.error, undefined);
      assert.equal(served.node, "n1");

      // Nobody answered or re-published any of it.
      await sleep(200);
      assert.deepEqual(seen.slice(since), published);
    } finally {
      await f.close();
    }
  });

  it("starts, serves and judges nodes alone while Redis is unreachable, warning once, and shares again by itself once Redis is back", {
    timeout: 30_000,
  }, async () => {
    const port = await laterPort();
    const f = await fleet(`redis://127.0.0.1:${port}`);
    let late: RedisServer | undefined;
    try {
      const t0 = Date.now();
      const a = await f.replica();
      const b = await f.replica();
      assert.ok(Date.now() - t0 < 5000, `started in ${Date.now() - t0} ms`);
      assert.ok(a.gw.nodeHealth.isHealthy("n0") && a.gw.nodeHealth.isHealthy("n1"));

      const { victim } = await killNodeThroughA(f, a);
      // Nothing may happen here: time for a message, were there a way to send one, and for
      // several reconnect attempts (backoff 50 ms doubling to 1 s).
      await sleep(1500);
      assert.equal(b.gw.nodeHealth.state(victim), "closed", "B judges alone: it has not been told");
      for (const r of [a, b]) {
        assert.equal(r.gw.logs.find(HEALTH_LOCAL_MSG).length, 1, "one warning however many reconnects");
        assert.equal(r.gw.logs.find(HEALTH_SHARED_MSG).length, 0);
      }

      // Redis comes up: sharing resumes without a restart.
      late = await startRedis({ port });
      await waitFor(
        "sharing resumed",
        () => [a, b].every((r) => r.gw.logs.find(HEALTH_SHARED_AGAIN_MSG).length === 1),
        8000,
      );
      const other = victim === "n0" ? "n1" : "n0";
      a.gw.nodeHealth.reportFailure(other, "unreachable");
      await waitFor("B applies A's verdict again", () => b.gw.nodeHealth.state(other) === "open", 1500);
    } finally {
      await f.close();
      await late?.stop();
    }
  });
});
