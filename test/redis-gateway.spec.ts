import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { Redis } from "ioredis";
import { ConnectError, createClient } from "@connectrpc/connect";
import type { Client } from "@connectrpc/connect";
import { ModelService } from "../src/gen/ollama/gateway/v1/model_pb.js";
import { GatewayService } from "../src/gen/ollama/gateway/v1/gateway_pb.js";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { Role } from "../src/gen/ollama/gateway/v1/types_pb.js";
import { CACHE_REDIS_MESSAGES } from "../src/cache/cache.js";
import { SLOTS_LOCAL_MSG, SLOTS_SHARED_AGAIN_MSG } from "../src/routing/slot-leases.js";
import { startSimulator } from "../src/simulator/simulator.js";
import type { Simulator } from "../src/simulator/simulator.js";
import { startRedis } from "./helpers/redis-server.js";
import type { RedisServer } from "./helpers/redis-server.js";
import { json, post } from "./helpers/sim-http.js";
import { startTestGateway } from "./helpers/test-gateway.js";
import type { TestGateway } from "./helpers/test-gateway.js";
import { TRANSPORTS } from "./helpers/transports.js";

/** What the cache logs (src/cache/create-cache.ts) when Redis goes away and when it is back. */
const CACHE_DOWN_MSG = CACHE_REDIS_MESSAGES.down;
const CACHE_BACK_MSG = CACHE_REDIS_MESSAGES.upAgain;

async function waitFor(check: () => Promise<boolean> | boolean, ms: number): Promise<boolean> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (await check()) return true;
    await new Promise((r) => setTimeout(r, 25));
  }
  return false;
}

describe("two gateway replicas sharing one Redis", () => {
  let redis: RedisServer;
  let sim: Simulator;
  let a: TestGateway;
  let b: TestGateway;
  let modelsA: Client<typeof ModelService>;
  let modelsB: Client<typeof ModelService>;

  before(async () => {
    redis = await startRedis();
    sim = await startSimulator({ pullMs: 10 });
    // Long TTLs: anything seen fresh below was invalidated, not expired.
    const env = { OLLAMA_URL: sim.url, REDIS_URL: redis.url, CACHE_TAGS_TTL_MS: "600000", CACHE_PS_TTL_MS: "600000" };
    a = await startTestGateway(env);
    b = await startTestGateway(env);
    modelsA = createClient(ModelService, TRANSPORTS[0]!.make(a.url));
    modelsB = createClient(ModelService, TRANSPORTS[0]!.make(b.url));
  });
  after(async () => {
    await a.close();
    await b.close();
    await sim.close();
    await redis.stop();
  });

  it("share metadata: what A fetched, B serves without asking Ollama", async () => {
    await modelsA.getModel({ model: "llava" });
    const shows = sim.stats.requests["/api/show"] ?? 0;
    const onB = await modelsB.getModel({ model: "llava" });
    assert.equal(onB.name, "llava:latest");
    assert.equal(sim.stats.requests["/api/show"] ?? 0, shows);
  });

  it("see a model deleted through A disappear from ListModels on B at once", async () => {
    await modelsA.copyModel({ source: "llama3.2", destination: "short-lived" });
    assert.ok((await modelsB.listModels({})).models.some((m) => m.name === "short-lived:latest"));
    await modelsA.deleteModel({ model: "short-lived" });
    assert.ok(!(await modelsB.listModels({})).models.some((m) => m.name === "short-lived:latest"));
  });

  it("see a model pulled through B in ListModels on A at once", async () => {
    assert.ok(!(await modelsA.listModels({})).models.some((m) => m.name === "mistral:latest"));
    for await (const _ of modelsB.pullModel({ model: "mistral" })) void _;
    assert.ok((await modelsA.listModels({})).models.some((m) => m.name === "mistral:latest"));
  });

  it("share embedding vectors", async () => {
    const embA = createClient(InferenceService, TRANSPORTS[0]!.make(a.url));
    const embB = createClient(InferenceService, TRANSPORTS[0]!.make(b.url));
    const first = await embA.embed({ model: "all-minilm", inputs: ["shared vector"] });
    const second = await embB.embed({ model: "all-minilm", inputs: ["shared vector"] });
    assert.equal(second.cachedInputs, 1);
    assert.deepEqual(second.embeddings[0]!.values, first.embeddings[0]!.values);
  });

  it("keeps every RPC succeeding, streaming Generate and Chat included, while Redis is SIGKILLed and restarted, and says so in GetStatus", {
    timeout: 45_000,
  }, async () => {
    const gateways = [a, b].map((g, i) => ({
      name: i === 0 ? "A" : "B",
      gateway: g,
      models: createClient(ModelService, TRANSPORTS[0]!.make(g.url)),
      inference: createClient(InferenceService, TRANSPORTS[0]!.make(g.url)),
      status: createClient(GatewayService, TRANSPORTS[0]!.make(g.url)),
    }));
    const redisInUse = async (): Promise<boolean> => {
      for (const g of gateways) {
        const s = await g.status.getStatus({}, { timeoutMs: 2000 });
        if (s.cache?.backend !== "redis" || !s.cache.healthy || !s.slotsShared) return false;
      }
      return true;
    };
    assert.ok(await waitFor(redisInUse, 5000), "both replicas use Redis (cache and slot leases) before the outage");

    // A call counts for a phase only when it both started and ended in it.
    type Phase = "before" | "down" | "restarting" | "after";
    let phase: Phase = "before";
    const kinds = ["generate", "chat", "embed", "getModel", "listModels"] as const;
    type Kind = (typeof kinds)[number];
    const calls: Record<Phase, Record<Kind, number>> = {
      before: { generate: 0, chat: 0, embed: 0, getModel: 0, listModels: 0 },
      down: { generate: 0, chat: 0, embed: 0, getModel: 0, listModels: 0 },
      restarting: { generate: 0, chat: 0, embed: 0, getModel: 0, listModels: 0 },
      after: { generate: 0, chat: 0, embed: 0, getModel: 0, listModels: 0 },
    };
    let straddling = 0;
    // Each call is bounded; once Redis is back no call may be held up by leases released while
    // it was down (they are removed by the first renewal, not the next one ~3.3 s later).
    const CALL_MS = 8000;
    const afterMs: number[] = [];
    const failures: string[] = [];
    let stop = false;
    let seq = 0;
    const loop = async (
      g: (typeof gateways)[number],
      kind: Kind,
      call: (n: number) => Promise<void>,
    ): Promise<void> => {
      while (!stop) {
        const n = ++seq;
        const started = phase;
        const t0 = Date.now();
        try {
          await call(n);
          if (started === "after") afterMs.push(Date.now() - t0);
          if (phase === started) calls[started][kind]++;
          else straddling++;
        } catch (e) {
          failures.push(`${kind} on ${g.name} (${started} → ${phase}): ${ConnectError.from(e).message}`);
          await sleep(20); // a failure is recorded; do not spin on it
        }
      }
    };
    const traffic = gateways.flatMap((g) => [
      // With REDIS_URL set, each Generate and Chat takes a slot lease through Redis.
      loop(g, "generate", async (n) => {
        let done = false;
        let chunks = 0;
        for await (const m of g.inference.generate(
          { model: "llama3.2", prompt: `outage ${n}`, options: { numPredict: 4 } },
          { timeoutMs: CALL_MS },
        )) {
          chunks++;
          done ||= m.done;
        }
        if (!done || chunks < 2) throw new Error(`generate stream ended after ${chunks} chunks without done`);
      }),
      loop(g, "chat", async (n) => {
        let done = false;
        for await (const m of g.inference.chat(
          { model: "qwen3", messages: [{ role: Role.USER, content: `outage chat ${n}` }], options: { numPredict: 4 } },
          { timeoutMs: CALL_MS },
        )) {
          done ||= m.done;
        }
        if (!done) throw new Error("chat stream ended without done");
      }),
      // Fresh inputs each time: every call misses the cache, so each one needs Redis (or the fallback).
      loop(g, "embed", async (n) => {
        const r = await g.inference.embed(
          { model: "all-minilm", inputs: [`fresh ${g.name} ${n}`, `fresh ${g.name} ${n} bis`] },
          { timeoutMs: CALL_MS },
        );
        if (r.embeddings.length !== 2 || r.cachedInputs !== 0)
          throw new Error(`embed: ${r.embeddings.length} vectors, ${r.cachedInputs} cached`);
      }),
      loop(g, "getModel", async (n) => {
        const m = await g.models.getModel({ model: ["qwen3", "llava", "llama3.2"][n % 3]! }, { timeoutMs: CALL_MS });
        if (m.digest === "") throw new Error("getModel without digest");
      }),
      loop(g, "listModels", async () => {
        const r = await g.models.listModels({}, { timeoutMs: CALL_MS });
        if (!r.models.some((m) => m.name === "llama3.2:latest")) throw new Error("listModels without llama3.2");
      }),
    ]);
    // What each replica's GetStatus says, sampled throughout.
    const samples: { phase: Phase; gateway: string; healthy: boolean; slotsShared: boolean }[] = [];
    const sampling = gateways.map(async (g) => {
      while (!stop) {
        const p = phase;
        try {
          const s = await g.status.getStatus({}, { timeoutMs: 2000 });
          if (phase === p)
            samples.push({ phase: p, gateway: g.name, healthy: s.cache?.healthy === true, slotsShared: s.slotsShared });
        } catch (e) {
          failures.push(`getStatus on ${g.name} (${p}): ${ConnectError.from(e).message}`);
        }
        await sleep(50);
      }
    });

    try {
      const everyKind = (p: Phase): boolean => kinds.every((k) => calls[p][k] >= 2);
      assert.ok(
        await waitFor(() => everyKind("before"), 5000),
        `traffic flows before the outage: ${JSON.stringify(calls.before)}`,
      );

      await redis.kill(); // SIGKILL: a crash, not a shutdown
      phase = "down";
      const bothSeeItDown = (): boolean =>
        gateways.every((g) =>
          samples.some((s) => s.phase === "down" && s.gateway === g.name && !s.healthy && !s.slotsShared),
        );
      assert.ok(
        await waitFor(bothSeeItDown, 3000),
        "GetStatus on both replicas shows the cache unhealthy and slots not shared",
      );
      // Redis stays down, under traffic, until every kind of call has completed without it.
      const total = (p: Phase): number => kinds.reduce((n, k) => n + calls[p][k], 0);
      assert.ok(
        await waitFor(() => kinds.every((k) => calls.down[k] >= 1) && total("down") >= 10, 15_000),
        `every kind of call completes while Redis is down: ${JSON.stringify(calls.down)} (${straddling} straddled a change of phase)`,
      );

      phase = "restarting";
      await redis.restart(); // same port, empty
      phase = "after";
      assert.ok(await waitFor(redisInUse, 5000), "GetStatus on both replicas shows Redis in use again");
      assert.ok(
        await waitFor(() => everyKind("after"), 8000),
        `traffic flows after the outage: ${JSON.stringify(calls.after)}`,
      );
    } finally {
      stop = true;
      await Promise.all([...traffic, ...sampling]);
    }

    assert.deepEqual(failures, [], "no RPC failed");
    assert.ok(Math.max(...afterMs) < 2000, `slowest call after the restart took ${Math.max(...afterMs)} ms`);
    assert.ok(
      samples.filter((s) => s.phase === "after").some((s) => s.healthy),
      "GetStatus reported the cache healthy again after the restart",
    );

    // The cache is used again: a vector embedded through A is a hit on B, which never saw the
    // input (so it came through Redis, not B's memory), and Redis holds the gateway's keys again.
    const first = await gateways[0]!.inference.embed(
      { model: "all-minilm", inputs: ["after the outage"] },
      { timeoutMs: 5000 },
    );
    assert.equal(first.cachedInputs, 0);
    const second = await gateways[1]!.inference.embed(
      { model: "all-minilm", inputs: ["after the outage"] },
      { timeoutMs: 5000 },
    );
    assert.equal(second.cachedInputs, 1, "B got A's vector from the restarted Redis");
    assert.deepEqual(second.embeddings[0]!.values, first.embeddings[0]!.values);
    assert.ok((await redisKeys(redis.url, "ogw:v1:emb:*")).length >= 1, "embedding vectors are in Redis again");

    for (const g of gateways) {
      // One warning per component that uses Redis (cache, slot leases, ...) for the one outage,
      // not one per failed command; and one "back" line each.
      const warnings = g.gateway.logs.lines
        .filter((l) => l["level"] === "warn" && /redis/i.test(String(l["msg"])))
        .map((l) => String(l["msg"]));
      assert.equal(warnings.length, new Set(warnings).size, `${g.name}: ${JSON.stringify(warnings)}`);
      assert.ok(
        warnings.includes(CACHE_DOWN_MSG) && warnings.includes(SLOTS_LOCAL_MSG),
        `${g.name}: ${JSON.stringify(warnings)}`,
      );
      const msgs = g.gateway.logs.lines.map((l) => String(l["msg"]));
      assert.equal(msgs.filter((m) => m === CACHE_BACK_MSG).length, 1, `${g.name}: the cache logs its return once`);
      assert.equal(
        msgs.filter((m) => m === SLOTS_SHARED_AGAIN_MSG).length,
        1,
        `${g.name}: the slot leases log their return once`,
      );
    }
  });
});

/** Every key in Redis matching `pattern` (test databases are tiny, so KEYS is fine). */
async function redisKeys(url: string, pattern: string): Promise<string[]> {
  const raw = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  try {
    await raw.connect();
    return await raw.keys(pattern);
  } finally {
    raw.disconnect();
  }
}

describe("a gateway with Redis, when 100 GetModel calls miss at once", () => {
  let redis: RedisServer;
  let sim: Simulator;
  let gw: TestGateway;

  before(async () => {
    redis = await startRedis();
    sim = await startSimulator();
    gw = await startTestGateway({ OLLAMA_URL: sim.url, REDIS_URL: redis.url });
  });
  after(async () => {
    await gw.close();
    await sim.close();
    await redis.stop();
  });

  it("asks Ollama's /api/show exactly once, stores the answer in Redis, and then serves from the cache", {
    timeout: 15_000,
  }, async () => {
    const status = createClient(GatewayService, TRANSPORTS[0]!.make(gw.url));
    assert.ok(await waitFor(async () => (await status.getStatus({})).cache?.healthy === true, 5000), "Redis is in use");
    assert.deepEqual(await redisKeys(redis.url, "ogw:v1:show:*"), [], "nothing is cached yet");
    const models = createClient(ModelService, TRANSPORTS[0]!.make(gw.url));
    const before = sim.stats.requests["/api/show"] ?? 0;
    const answers = await Promise.all(
      Array.from({ length: 100 }, () => models.getModel({ model: "llava" }, { timeoutMs: 10_000 })),
    );
    assert.ok(answers.every((r) => r.name === "llava:latest" && r.digest === answers[0]!.digest));
    assert.equal(
      (sim.stats.requests["/api/show"] ?? 0) - before,
      1,
      "one upstream /api/show for 100 concurrent misses",
    );
    assert.equal((await redisKeys(redis.url, "ogw:v1:show:*")).length, 1, "the description went to Redis");
    await models.getModel({ model: "llava" });
    assert.equal((sim.stats.requests["/api/show"] ?? 0) - before, 1, "then served from the cache");
  });
});

describe("a gateway with EMBED_CACHE=off", () => {
  let redis: RedisServer;
  let sim: Simulator;
  let gw: TestGateway;

  before(async () => {
    redis = await startRedis();
    sim = await startSimulator();
    gw = await startTestGateway({ OLLAMA_URL: sim.url, REDIS_URL: redis.url, EMBED_CACHE: "off" });
  });
  after(async () => {
    await gw.close();
    await sim.close();
    await redis.stop();
  });

  it("sends every input to Ollama on every call, repeats included, and stores no vectors", {
    timeout: 15_000,
  }, async () => {
    const inputs = ["the same sentence", "and another, somewhat longer, sentence"];
    // How many prompt tokens Ollama counts for exactly these inputs, asked directly.
    const direct = json<{ prompt_eval_count: number }>(
      await post(`${sim.url}/api/embed`, { model: "all-minilm", input: inputs }),
    );
    assert.ok(direct.prompt_eval_count > 0);
    const client = createClient(InferenceService, TRANSPORTS[0]!.make(gw.url));
    const before = sim.stats.requests["/api/embed"] ?? 0;
    for (let i = 0; i < 3; i++) {
      const r = await client.embed({ model: "all-minilm", inputs }, { timeoutMs: 5000 });
      assert.equal(r.embeddings.length, 2);
      assert.equal(r.cachedInputs, 0, `call ${i}: nothing came from a cache`);
      assert.equal(r.usage?.promptTokens, direct.prompt_eval_count, `call ${i}: Ollama embedded both inputs`);
    }
    assert.equal((sim.stats.requests["/api/embed"] ?? 0) - before, 3, "one upstream call per Embed");
    const status = await createClient(GatewayService, TRANSPORTS[0]!.make(gw.url)).getStatus({});
    assert.equal(status.cache?.embeddingsEnabled, false);
    assert.equal(status.cache?.healthy, true, "Redis is in use, for metadata");
    assert.deepEqual(await redisKeys(redis.url, "ogw:v1:emb:*"), [], "no vector went to Redis");
  });
});
