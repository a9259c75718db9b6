import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { createClient } from "@connectrpc/connect";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { startSimulator } from "../src/simulator/simulator.js";
import type { Simulator } from "../src/simulator/simulator.js";
import { spawnGateway } from "./helpers/gateway-process.js";
import type { GatewayProcess } from "./helpers/gateway-process.js";
import { scrape } from "./helpers/prom-text.js";
import { freePort } from "./helpers/redis-server.js";
import { eventually } from "./helpers/sim-http.js";
import { TRANSPORTS } from "./helpers/transports.js";

describe("metrics with WORKERS=2 (node:cluster)", () => {
  let sim: Simulator;
  let gw: GatewayProcess;
  let metricsUrl: string;
  before(async () => {
    sim = await startSimulator({});
    const port = await freePort();
    gw = await spawnGateway({ OLLAMA_URL: sim.url, WORKERS: "2", METRICS_PORT: String(port) });
    assert.ok(
      await eventually(
        () =>
          gw.lines().filter((l) => l["msg"] === "gateway listening").length === 2 &&
          gw.lines().some((l) => l["msg"] === "metrics listening"),
        20_000,
      ),
      "both workers and the metrics endpoint are up",
    );
    metricsUrl = String(gw.lines().find((l) => l["msg"] === "metrics listening")!["url"]);
  });
  after(async () => {
    await gw.stop();
    await sim.close();
  });

  it("serves every worker's calls, aggregated, on the one METRICS_PORT of the primary", async () => {
    const calls = 12;
    // A new HTTP/1.1 connection per call, so node:cluster spreads them over both workers.
    const client = createClient(InferenceService, TRANSPORTS[2]!.make(gw.url));
    await Promise.all(
      Array.from({ length: calls }, (_, i) => client.embed({ model: "all-minilm", inputs: [`worker ${i}`] })),
    );
    assert.ok(await eventually(() => gw.lines().filter((l) => l["msg"] === "rpc").length === calls, 10_000));
    const servedBy = new Set(
      gw
        .lines()
        .filter((l) => l["msg"] === "rpc")
        .map((l) => l["pid"]),
    );
    assert.equal(servedBy.size, 2, "both workers served calls");
    const listening = gw.lines().find((l) => l["msg"] === "metrics listening")!;
    assert.equal(listening["pid"], gw.pid, "the primary serves the metrics");

    const page = await scrape(metricsUrl);
    assert.equal(page.sum("ollama_gateway_calls_total", { method: "Embed", code: "OK" }), calls);
    assert.equal(page.sum("ollama_gateway_call_duration_seconds_count", { method: "Embed" }), calls);
    assert.equal(page.sum("ollama_gateway_cache_misses_total", { kind: "emb" }), calls);
    // Configured values are the same in every worker: taken once, not summed.
    assert.equal(page.sum("ollama_gateway_node_slots_configured"), 1);
    assert.equal(page.sum("ollama_gateway_build_info"), 1);
    // Each worker sees the node's circuit closed: the gauge counts the workers that see a state.
    assert.equal(page.sum("ollama_gateway_node_circuit_state", { state: "closed" }), 2);
    assert.ok(page.sum("process_cpu_user_seconds_total") > 0);
  });
});
