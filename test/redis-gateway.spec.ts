import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { createClient } from "@connectrpc/connect";
import type { Client } from "@connectrpc/connect";
import { ModelService } from "../src/gen/ollama/gateway/v1/model_pb.js";
import { GatewayService } from "../src/gen/ollama/gateway/v1/gateway_pb.js";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { startSimulator } from "../src/simulator/simulator.js";
import type { Simulator } from "../src/simulator/simulator.js";
import { startRedis } from "./helpers/redis-server.js";
import { startTestGateway } from "./helpers/test-gateway.js";
import type { TestGateway } from "./helpers/test-gateway.js";
import { TRANSPORTS } from "./helpers/transports.js";

type RedisServer = Awaited<ReturnType<typeof startRedis>>;

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

  it("keep serving with zero failed calls while Redis dies and comes back, and say so in GetStatus", async () => {
    const status = createClient(GatewayService, TRANSPORTS[0]!.make(a.url));
    assert.equal((await status.getStatus({})).cache?.backend, "redis");
    const clients = [a, b].map((g) => ({
      models: createClient(ModelService, TRANSPORTS[0]!.make(g.url)),
      inference: createClient(InferenceService, TRANSPORTS[0]!.make(g.url)),
    }));
    let stop = false;
    let calls = 0;
    const failures: unknown[] = [];
    const traffic = clients.map(async (c, i) => {
      for (let n = 0; !stop && n < 100_000; n++) {
        try {
          if (n % 3 === 0) await c.models.listModels({});
          else if (n % 3 === 1) await c.models.getModel({ model: "qwen3" });
          else await c.inference.embed({ model: "all-minilm", inputs: [`r${i}-${n % 50}`] });
          calls++;
        } catch (e) {
          failures.push(e);
        }
      }
    });
    await new Promise((r) => setTimeout(r, 300));
    await redis.stop();
    assert.ok(await waitFor(async () => (await status.getStatus({})).cache?.healthy === false, 3000), "GetStatus shows Redis down");
    const downAt = calls;
    await new Promise((r) => setTimeout(r, 500));
    const callsWhileDown = calls - downAt;
    await redis.restart();
    assert.ok(await waitFor(async () => (await status.getStatus({})).cache?.healthy === true, 5000), "GetStatus shows Redis back");
    await new Promise((r) => setTimeout(r, 300));
    stop = true;
    await Promise.all(traffic);
    assert.deepEqual(failures, []);
    assert.ok(callsWhileDown > 0, "calls kept succeeding while Redis was down");
    assert.ok(calls > 20, `${calls} calls`);
    for (const g of [a, b]) {
      // One warning per component that uses Redis (cache, slot leases), not one per failed command.
      const warnings = g.logs.lines.filter((l) => l["level"] === "warn" && /redis/i.test(String(l["msg"]))).map((l) => String(l["msg"]));
      assert.equal(warnings.length, new Set(warnings).size, JSON.stringify(warnings));
      assert.ok(warnings.length >= 1 && warnings.length <= 2, JSON.stringify(warnings));
    }
  });
});
