import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { createClient } from "@connectrpc/connect";
import type { Client } from "@connectrpc/connect";
import { GatewayService } from "../src/gen/ollama/gateway/v1/gateway_pb.js";
import { ModelService } from "../src/gen/ollama/gateway/v1/model_pb.js";
import type { ListModelsResponse, ListRunningModelsResponse } from "../src/gen/ollama/gateway/v1/model_pb.js";
import { startSimulator } from "../src/simulator/simulator.js";
import type { Simulator } from "../src/simulator/simulator.js";
import { spawnGateway } from "./helpers/gateway-process.js";
import type { GatewayProcess } from "./helpers/gateway-process.js";
import { startRedis } from "./helpers/redis-server.js";
import type { RedisServer } from "./helpers/redis-server.js";
import { TRANSPORTS } from "./helpers/transports.js";

const names = (res: ListModelsResponse): string[] => res.models.map((m) => m.name);
const running = (res: ListRunningModelsResponse): string[] => res.models.map((m) => m.name);

/*
 * Two gateway *processes* (the production entry point, `node --import tsx src/main.ts`) share one
 * real redis-server and one simulator. Every check below is an exact "the very next call on B
 * sees it" check, with no polling. Why that is not racy: a changing RPC on A deletes the Redis
 * entries and PUBLISHes the invalidation, then waits for the echo of its own message before it
 * returns. Redis writes a PUBLISH to all its subscribers in the same event-loop pass, so by the
 * time A has its echo, B's copy is already in B's socket. Only after that does A answer, and only
 * then does the client send its next request to B. B's event loop handles the Redis socket before
 * that request, because that socket became readable first. A bounded poll would hide an
 * invalidation that is published but not awaited before the RPC returns. That is exactly the bug
 * these tests must catch.
 *
 * Both TTLs are 60 s, and each test shows that B really does serve from its cache between
 * changes: asking again makes no upstream call. So only an invalidation can explain B seeing a
 * change at once.
 */
describe("two gateway processes sharing one Redis", { timeout: 60_000 }, () => {
  let redis: RedisServer | undefined;
  let sim: Simulator | undefined;
  const gateways: GatewayProcess[] = [];
  let modelsA: Client<typeof ModelService>;
  let modelsB: Client<typeof ModelService>;

  before(async () => {
    redis = await startRedis();
    sim = await startSimulator({ pullMs: 10 });
    const env = {
      OLLAMA_URL: sim.url,
      REDIS_URL: redis.url,
      CACHE_TAGS_TTL_MS: "60000",
      CACHE_PS_TTL_MS: "60000",
      HEALTH_PROBE_INTERVAL_MS: "500",
    };
    const started = await Promise.allSettled([spawnGateway(env), spawnGateway(env)]);
    for (const s of started) if (s.status === "fulfilled") gateways.push(s.value);
    const failed = started.find((s): s is PromiseRejectedResult => s.status === "rejected");
    if (failed !== undefined) throw failed.reason;
    const [a, b] = gateways as [GatewayProcess, GatewayProcess];
    modelsA = createClient(ModelService, TRANSPORTS[0]!.make(a.url));
    modelsB = createClient(ModelService, TRANSPORTS[0]!.make(b.url));
    // Each cache must be connected and subscribed to the invalidation channel before the checks.
    for (const g of gateways) {
      const status = createClient(GatewayService, TRANSPORTS[0]!.make(g.url));
      const until = Date.now() + 10_000;
      for (;;) {
        const s = await status.getStatus({}, { timeoutMs: 2000 });
        if (s.cache?.backend === "redis" && s.cache.healthy && s.nodes.every((n) => n.healthy)) break;
        if (Date.now() > until) throw new Error(`gateway ${g.pid} not ready: ${JSON.stringify(s.cache)}`);
        await sleep(25);
      }
    }
  });

  after(async () => {
    await Promise.all(gateways.map((g) => g.stop()));
    await sim?.close();
    await redis?.stop();
  });

  it("hides a model deleted through A from ListModels on B on the very next call, round after round", {
    timeout: 20_000,
  }, async () => {
    const s = sim!;
    await modelsB.listModels({}, { timeoutMs: 5000 }); // B caches the installed list
    for (let round = 0; round < 6; round++) {
      const copy = `replica-copy-${round}:latest`;
      await modelsA.copyModel({ source: "llama3.2", destination: copy }, { timeoutMs: 5000 });
      assert.ok(
        names(await modelsB.listModels({}, { timeoutMs: 5000 })).includes(copy),
        `round ${round}: B lists the copy at once`,
      );

      const tags = s.stats.requests["/api/tags"] ?? 0;
      assert.ok(names(await modelsB.listModels({}, { timeoutMs: 5000 })).includes(copy));
      assert.equal(
        s.stats.requests["/api/tags"] ?? 0,
        tags,
        `round ${round}: B answers from its cache between changes`,
      );

      await modelsA.deleteModel({ model: copy }, { timeoutMs: 5000 });
      const onB = names(await modelsB.listModels({}, { timeoutMs: 5000 }));
      assert.ok(!onB.includes(copy), `round ${round}: B still lists ${copy} after A deleted it: ${onB.join(", ")}`);
      assert.ok(onB.includes("llama3.2:latest"), "the source is still there");
    }
  });

  it("lists a model pulled through A on B at once, not after the 60 s tags TTL", { timeout: 15_000 }, async () => {
    const s = sim!;
    for (const model of ["mistral:latest", "tinyllama:latest"]) {
      assert.ok(
        !names(await modelsB.listModels({}, { timeoutMs: 5000 })).includes(model),
        `${model} is not installed yet`,
      );
      const tags = s.stats.requests["/api/tags"] ?? 0;
      assert.ok(!names(await modelsB.listModels({}, { timeoutMs: 5000 })).includes(model));
      assert.equal(s.stats.requests["/api/tags"] ?? 0, tags, "B answers from its cache");

      let success = false;
      for await (const p of modelsA.pullModel({ model }, { timeoutMs: 10_000 })) success ||= p.status === "success";
      assert.ok(success, `the pull of ${model} through A succeeded`);
      assert.ok(names(await modelsB.listModels({}, { timeoutMs: 5000 })).includes(model), `B lists ${model} at once`);
    }
  });

  it("shows LoadModel and UnloadModel through A in ListRunningModels on B at once, not after the 60 s ps TTL", {
    timeout: 15_000,
  }, async () => {
    const s = sim!;
    for (let round = 0; round < 3; round++) {
      assert.ok(
        !running(await modelsB.listRunningModels({}, { timeoutMs: 5000 })).includes("llama3.2:latest"),
        `round ${round}: not loaded yet`,
      );
      const ps = s.stats.requests["/api/ps"] ?? 0;
      assert.ok(!running(await modelsB.listRunningModels({}, { timeoutMs: 5000 })).includes("llama3.2:latest"));
      assert.equal(s.stats.requests["/api/ps"] ?? 0, ps, `round ${round}: B answers ListRunningModels from its cache`);

      await modelsA.loadModel({ model: "llama3.2", keepAlive: { seconds: 600n } }, { timeoutMs: 5000 });
      assert.ok(
        s.loaded().some((r) => r.name === "llama3.2:latest"),
        "the simulator has it loaded",
      );
      const loaded = running(await modelsB.listRunningModels({}, { timeoutMs: 5000 }));
      assert.ok(
        loaded.includes("llama3.2:latest"),
        `round ${round}: B shows the model A loaded: [${loaded.join(", ")}]`,
      );

      const unloaded = await modelsA.unloadModel({ model: "llama3.2" }, { timeoutMs: 5000 });
      assert.equal(unloaded.nodes.length, 1);
      assert.ok(!s.loaded().some((r) => r.name === "llama3.2:latest"), "the simulator unloaded it");
      const after = running(await modelsB.listRunningModels({}, { timeoutMs: 5000 }));
      assert.ok(
        !after.includes("llama3.2:latest"),
        `round ${round}: B still shows the model A unloaded: [${after.join(", ")}]`,
      );
    }
  });
});
