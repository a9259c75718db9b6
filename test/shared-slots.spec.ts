import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { createClient } from "@connectrpc/connect";
import { GatewayService } from "../src/gen/ollama/gateway/v1/gateway_pb.js";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { startSimulator } from "../src/simulator/simulator.js";
import { startRedis } from "./helpers/redis-server.js";
import { spawnGateway } from "./helpers/gateway-process.js";
import { TRANSPORTS } from "./helpers/transports.js";

/**
 * Runs 8 Generate calls through each of two gateway processes at once (separate OS processes, as
 * sidecars are); returns the node's peak of concurrent requests.
 */
async function peakWithTwoReplicas(
  redisUrl: string | undefined,
): Promise<{ peak: number; failures: number; shared: boolean[] }> {
  // The simulator accepts up to 8 at once, so its peak shows how many the
  // gateways sent; the gateways are told the node has 1 slot.
  const sim = await startSimulator({ tokenMs: 5, numParallel: 8 });
  const env: Record<string, string> = { OLLAMA_URL: sim.url, OLLAMA_NUM_PARALLEL: "1" };
  if (redisUrl) env["REDIS_URL"] = redisUrl;
  const replicas = await Promise.all([spawnGateway(env), spawnGateway(env)]);
  try {
    const status = replicas.map((g) => createClient(GatewayService, TRANSPORTS[0]!.make(g.url)));
    const until = Date.now() + 3000;
    let shared = [false, false];
    while (Date.now() < until) {
      shared = await Promise.all(status.map(async (s) => (await s.getStatus({})).slotsShared));
      if (!redisUrl || shared.every(Boolean)) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    let failures = 0;
    await Promise.all(
      replicas.flatMap((g) => {
        const client = createClient(InferenceService, TRANSPORTS[0]!.make(g.url));
        return Array.from({ length: 8 }, async (_, i) => {
          try {
            for await (const _m of client.generate({ model: "llama3.2", prompt: `r${i}`, options: { numPredict: 10 } }))
              void _m;
          } catch {
            failures++;
          }
        });
      }),
    );
    return { peak: sim.stats.maxInFlight["llama3.2:latest"] ?? 0, failures, shared };
  } finally {
    await Promise.all(replicas.map((g) => g.stop()));
    await sim.close();
  }
}

describe("slots shared between gateway replicas", { timeout: 60_000 }, () => {
  it("lets two replicas sharing Redis together never exceed a node's slots", async () => {
    const redis = await startRedis();
    try {
      const r = await peakWithTwoReplicas(redis.url);
      assert.deepEqual(r.shared, [true, true]);
      assert.equal(r.failures, 0);
      assert.equal(r.peak, 1);
    } finally {
      await redis.stop();
    }
  });

  it("shows why: without Redis each replica counts alone and the node gets more than its slots", async () => {
    const r = await peakWithTwoReplicas(undefined);
    assert.deepEqual(r.shared, [false, false]);
    assert.equal(r.failures, 0);
    assert.equal(r.peak, 2);
  });
});
