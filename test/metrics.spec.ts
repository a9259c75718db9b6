import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { Code, ConnectError, createClient, createContextValues } from "@connectrpc/connect";
import { Registry } from "prom-client";
import type { Client } from "@connectrpc/connect";
import { gatewayOverloaded, modelNotFound } from "../src/errors/domain-errors.js";
import type { GatewayService } from "../src/gen/ollama/gateway/v1/gateway_pb.js";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { newRpcInfo } from "../src/observability/rpc-info.js";
import { createLabelBound, memoised, OTHER_LABEL } from "../src/observability/telemetry/label-bound.js";
import { fastCounter, fastHistogram } from "../src/observability/telemetry/fast-series.js";
import { createGatewayMetrics } from "../src/observability/telemetry/metrics.js";
import { kPrincipal, principalOf } from "../src/pipeline/principal.js";
import { fleet, run } from "./helpers/fleet.js";
import type { Fleet } from "./helpers/fleet.js";
import { holdSlot } from "./helpers/held-request.js";
import { parsePromText, scrape } from "./helpers/prom-text.js";
import type { PromPage } from "./helpers/prom-text.js";
import { startRedis } from "./helpers/redis-server.js";
import { delay } from "./helpers/sim-http.js";
import { startTestGateway } from "./helpers/test-gateway.js";
import { TRANSPORTS } from "./helpers/transports.js";

const INFERENCE = InferenceService.typeName;

/** Scrapes `url` until `check` holds for a page (every 25 ms, up to `ms`); resolves with that page. */
async function scrapeUntil(url: string, check: (page: PromPage) => boolean, ms = 10_000): Promise<PromPage> {
  const until = Date.now() + ms;
  for (;;) {
    const page = await scrape(url);
    if (check(page)) return page;
    if (Date.now() > until) throw new Error(`the metrics did not reach the expected state within ${ms} ms`);
    await delay(25);
  }
}

/** The change of `sum(name, labels)` between two scrapes. */
function delta(a: PromPage, b: PromPage, name: string, labels: Record<string, string> = {}): number {
  return b.sum(name, labels) - a.sum(name, labels);
}

/** Checks every histogram series of `name` on a page: cumulative buckets, +Inf = _count, a sum. */
function assertHistogramsConsistent(page: PromPage, name: string): void {
  const counts = page.find(`${name}_count`);
  assert.ok(counts.length > 0, `no ${name} series`);
  for (const c of counts) {
    const buckets = page
      .find(`${name}_bucket`, c.labels)
      .filter((b) => Object.keys(b.labels).length === Object.keys(c.labels).length + 1);
    const values = buckets.map((b) => b.value);
    for (let i = 1; i < values.length; i++) assert.ok(values[i]! >= values[i - 1]!, `${name} buckets not cumulative`);
    assert.equal(buckets.find((b) => b.labels["le"] === "+Inf")?.value, c.value, `${name} +Inf bucket != count`);
    assert.equal(page.find(`${name}_sum`, c.labels).length, 1, `${name}_sum missing`);
  }
}

describe("label bound", () => {
  const cases: { name: string; max: number; onSight: boolean; admit: string[]; ask: string[]; want: string[] }[] = [
    {
      name: "admitted values keep their name, others fold into other",
      max: 5,
      onSight: false,
      admit: ["a", "b"],
      ask: ["a", "b", "c"],
      want: ["a", "b", OTHER_LABEL],
    },
    {
      name: "only the first max admitted values get a label",
      max: 2,
      onSight: false,
      admit: ["a", "b", "c"],
      ask: ["c", "a", "b"],
      want: [OTHER_LABEL, "a", "b"],
    },
    {
      name: "admit on sight takes the first values asked for",
      max: 2,
      onSight: true,
      admit: [],
      ask: ["x", "y", "z", "x"],
      want: ["x", "y", OTHER_LABEL, "x"],
    },
    { name: "the empty value stays empty", max: 1, onSight: true, admit: [], ask: ["", "q"], want: ["", "q"] },
    {
      name: "a value named other never takes a slot",
      max: 1,
      onSight: true,
      admit: [OTHER_LABEL],
      ask: ["m"],
      want: ["m"],
    },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const bound = createLabelBound(c.max, { admitOnSight: c.onSight });
      for (const v of c.admit) bound.admit(v);
      assert.deepEqual(
        c.ask.map((v) => bound.label(v)),
        c.want,
      );
      assert.ok(bound.size <= c.max);
      assert.equal([...bound.values()].length, bound.size);
    });
  }

  it("memoises a function for at most max values and still answers past that", () => {
    let calls = 0;
    const upper = memoised((v) => {
      calls++;
      return v.toUpperCase();
    }, 2);
    assert.deepEqual(["a", "a", "b", "c", "c"].map(upper), ["A", "A", "B", "C", "C"]);
    assert.equal(calls, 4, "a and b remembered, c computed twice");
  });
});

describe("fast series (the per-call counters and histograms)", () => {
  it("count in prom-client's text format, buckets holding values up to and including their bound", async () => {
    const registry = new Registry();
    const c = fastCounter({ registry, name: "t_total", help: "t", labelNames: ["a", "b"] });
    const h = fastHistogram({ registry, name: "t_seconds", help: "t", labelNames: ["a"], buckets: [0.1, 1] });
    c.series("x", "y").inc();
    c.series("x", "y").inc(2);
    c.series("x", "z");
    const s = h.series("x");
    for (const v of [0.05, 0.1, 0.5, 1, 7, Number.NaN]) s.observe(v);
    const page = parsePromText(await registry.metrics());
    assert.equal(page.types.get("t_total"), "counter");
    assert.equal(page.types.get("t_seconds"), "histogram");
    assert.equal(page.sum("t_total", { a: "x", b: "y" }), 3);
    assert.equal(page.find("t_total", { a: "x", b: "z" })[0]?.value, 0);
    assert.deepEqual(
      page.find("t_seconds_bucket", { a: "x" }).map((b) => [b.labels["le"], b.value]),
      [
        ["0.1", 2],
        ["1", 4],
        ["+Inf", 5],
      ],
    );
    assert.equal(page.sum("t_seconds_count", { a: "x" }), 5, "NaN is not an observation");
    assert.equal(page.sum("t_seconds_sum", { a: "x" }), 8.65);
    assert.throws(() => c.series("only one"), /expected 2 label values/);
    assert.throws(() => fastHistogram({ registry, name: "bad", help: "b", labelNames: [], buckets: [1, 1] }), /ascend/);
  });
});

describe("metrics of one gateway (counted exactly from its /metrics page)", () => {
  let f: Fleet;
  before(async () => {
    f = await fleet(2, { tokenMs: 0, loadMs: 80 }, { METRICS_PORT: "0", EMBED_BATCH_WINDOW_MS: "0" }, 1, 3);
  });
  after(() => f.close());

  it("serves the Prometheus text format on its own port, only at /metrics", async () => {
    const url = f.gw.metricsUrl!;
    assert.ok(url !== undefined && !url.includes(`:${f.gw.port}/`), "metrics on a port of their own");
    const res = await fetch(url);
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
    const page = parsePromText(await res.text());
    assert.equal(page.types.get("ollama_gateway_calls_total"), "counter");
    assert.equal(page.types.get("ollama_gateway_call_duration_seconds"), "histogram");
    assert.ok(page.find("process_cpu_user_seconds_total").length === 1, "process metrics");
    assert.ok(page.find("nodejs_eventloop_lag_seconds").length === 1, "Node runtime metrics");
    assert.equal(page.find("ollama_gateway_build_info")[0]?.labels["version"], "0.1.0");
    assert.equal((await fetch(url.replace("/metrics", "/other"))).status, 404);
    assert.equal((await fetch(url, { method: "POST" })).status, 405);
    const head = await fetch(url, { method: "HEAD" });
    assert.equal(head.status, 200);
    assert.equal(await head.text(), "");
  });

  it("counts every call by service, method, protocol, code and model, with its duration", async () => {
    const a = await scrape(f.gw.metricsUrl!);
    let promptTokens = 0;
    for (const t of TRANSPORTS) {
      const client = createClient(InferenceService, t.make(f.gw.url));
      const r = await run(client, { model: "llama3.2", prompt: `count me (${t.name})`, options: { numPredict: 3 } });
      assert.equal(r.error, undefined, t.name);
      promptTokens += r.messages.at(-1)!.usage!.promptTokens;
    }
    const b = await scrape(f.gw.metricsUrl!);
    const ok = { service: INFERENCE, method: "Generate", code: "OK", model: "llama3.2:latest" };
    // Plain and gzip gRPC are "grpc" (fast path and connect-node); gRPC-Web once; Connect twice.
    assert.equal(delta(a, b, "ollama_gateway_calls_total", { ...ok, protocol: "grpc" }), 2);
    assert.equal(delta(a, b, "ollama_gateway_calls_total", { ...ok, protocol: "grpc-web" }), 1);
    assert.equal(delta(a, b, "ollama_gateway_calls_total", { ...ok, protocol: "connect" }), 2);
    assert.equal(delta(a, b, "ollama_gateway_call_duration_seconds_count", ok), 5);
    assert.ok(delta(a, b, "ollama_gateway_call_duration_seconds_sum", ok) > 0);
    assertHistogramsConsistent(b, "ollama_gateway_call_duration_seconds");
    // Per model and node: exactly what Ollama reported.
    const model = { model: "llama3.2:latest" };
    assert.equal(delta(a, b, "ollama_gateway_tokens_total", { ...model, type: "output" }), 15);
    assert.equal(delta(a, b, "ollama_gateway_tokens_total", { ...model, type: "input" }), promptTokens);
    assert.equal(delta(a, b, "ollama_gateway_time_to_first_token_seconds_count", model), 5);
    assert.equal(delta(a, b, "ollama_gateway_output_tokens_per_second_count", model), 5);
    assert.equal(delta(a, b, "ollama_gateway_queue_wait_seconds_count", model), 5);
    for (const h of [
      "ollama_gateway_time_to_first_token_seconds",
      "ollama_gateway_output_tokens_per_second",
      "ollama_gateway_queue_wait_seconds",
    ]) {
      assertHistogramsConsistent(b, h);
    }
    // Every node series names a configured node.
    for (const s of b.find("ollama_gateway_tokens_total")) assert.match(s.labels["node"]!, /^n[01]$/);
  });

  it("counts a model load once, from the load_duration Ollama reports", async () => {
    // qwen3 has not been used yet: the first call loads it (the simulator takes 80 ms).
    const a = await scrape(f.gw.metricsUrl!);
    const r = await run(f.client, { model: "qwen3", prompt: "load me", options: { numPredict: 1 } });
    assert.equal(r.error, undefined);
    const again = await run(f.client, { model: "qwen3", prompt: "loaded", options: { numPredict: 1 } });
    assert.equal(again.error, undefined);
    const b = await scrape(f.gw.metricsUrl!);
    assert.equal(delta(a, b, "ollama_gateway_model_loads_total", { model: "qwen3:latest" }), 1);
    assert.equal(delta(a, b, "ollama_gateway_model_load_duration_seconds_count", { model: "qwen3:latest" }), 1);
    assert.ok(b.sum("ollama_gateway_node_models_loaded") >= 1);
  });

  it("counts Embed batches, cache hits and misses per kind", async () => {
    const a = await scrape(f.gw.metricsUrl!);
    const inputs = ["metric one", "metric two", "metric three"];
    await f.client.embed({ model: "all-minilm", inputs });
    await f.client.embed({ model: "all-minilm", inputs });
    const b = await scrape(f.gw.metricsUrl!);
    const emb = { kind: "emb" };
    assert.equal(delta(a, b, "ollama_gateway_cache_misses_total", emb), 3);
    assert.equal(delta(a, b, "ollama_gateway_cache_hits_total", { ...emb, tier: "memory" }), 3);
    assert.equal(delta(a, b, "ollama_gateway_embed_batch_inputs_count", { model: "all-minilm:latest" }), 1);
    assert.equal(delta(a, b, "ollama_gateway_embed_batch_inputs_sum", { model: "all-minilm:latest" }), 3);
    assert.equal(
      delta(a, b, "ollama_gateway_calls_total", { method: "Embed", code: "OK", model: "all-minilm:latest" }),
      2,
    );
    assert.ok(b.sum("ollama_gateway_cache_memory_entries") >= 3);
    assert.equal(b.find("ollama_gateway_redis_up").length, 0, "no Redis configured: no redis_up series");
  });

  it("reports each node's circuit, configured slots and loaded models", async () => {
    const page = await scrape(f.gw.metricsUrl!);
    for (const node of ["n0", "n1"]) {
      assert.equal(page.sum("ollama_gateway_node_circuit_state", { node, state: "closed" }), 1);
      assert.equal(page.sum("ollama_gateway_node_circuit_state", { node }), 1, "one state at a time");
      assert.equal(page.sum("ollama_gateway_node_slots_configured", { node }), 1);
      assert.equal(page.sum("ollama_gateway_node_max_loaded_models", { node }), 3);
    }
    for (const s of page.find("ollama_gateway_node_slots")) assert.equal(s.value, 1);
  });

  it("counts failed tries by reason, the retry on another node and the recovered call", async () => {
    // The first node the call reaches answers busy (armed as the request arrives there); the other serves it.
    const armed = f.sims.map((sim) =>
      sim.events.on("request", (e) => {
        if (e.path !== "/api/generate" || !e.body?.toString().includes("fail over")) return;
        for (const off of armed) off();
        sim.faults.add({ kind: "busy", path: "/api/generate" });
      }),
    );
    const a = await scrape(f.gw.metricsUrl!);
    const r = await run(f.client, { model: "llama3.2", prompt: "fail over", options: { numPredict: 1 } });
    assert.equal(r.error, undefined);
    const b = await scrape(f.gw.metricsUrl!);
    const busy = { model: "llama3.2:latest", reason: "UPSTREAM_BUSY" };
    assert.equal(delta(a, b, "ollama_gateway_upstream_errors_total", busy), 1);
    assert.equal(delta(a, b, "ollama_gateway_retries_total", busy), 1);
    const failedNode = b.find("ollama_gateway_retries_total", busy)[0]!.labels["node"];
    assert.notEqual(failedNode, r.node, "the retry went to the other node");
    assert.equal(delta(a, b, "ollama_gateway_failovers_total", { outcome: "recovered" }), 1);
    assert.equal(delta(a, b, "ollama_gateway_failovers_total", { outcome: "failed" }), 0);
  });

  it("folds calls for unknown models into other, with their refusal-free error code", async () => {
    const a = await scrape(f.gw.metricsUrl!);
    for (let i = 0; i < 3; i++) await run(f.client, { model: `no-such-model-${i}`, prompt: "x" });
    const b = await scrape(f.gw.metricsUrl!);
    assert.equal(
      delta(a, b, "ollama_gateway_calls_total", { method: "Generate", code: "NotFound", model: OTHER_LABEL }),
      3,
    );
    for (const s of b.find("ollama_gateway_calls_total")) assert.doesNotMatch(s.labels["model"]!, /no-such-model/);
  });

  it("counts calls without a model (GetStatus) under an empty model label", async () => {
    const status: Client<typeof GatewayService> = f.status;
    const a = await scrape(f.gw.metricsUrl!);
    await status.getStatus({});
    const b = await scrape(f.gw.metricsUrl!);
    assert.equal(
      delta(a, b, "ollama_gateway_calls_total", { method: "GetStatus", code: "OK", model: "", protocol: "grpc" }),
      1,
    );
  });
});

describe("admission metrics", () => {
  let f: Fleet;
  before(async () => {
    f = await fleet(1, { tokenMs: 0 }, { METRICS_PORT: "0", QUEUE_MAX_PER_MODEL: "1" }, 1, 3);
  });
  after(() => f.close());

  it("shows queue depth and slots in use while a call waits, then counts the refusal by reason", async () => {
    const warm = await run(f.client, { model: "llama3.2", prompt: "warm", options: { numPredict: 1 } });
    assert.equal(warm.error, undefined);
    const a = await scrape(f.gw.metricsUrl!);
    const held = await holdSlot(f, { model: "llama3.2", prompt: "held", options: { numPredict: 1 } });
    const queued = run(f.client, { model: "llama3.2", prompt: "queued", options: { numPredict: 1 } });
    const model = { model: "llama3.2:latest" };
    // Queue depth 1 while one call waits.
    const page = await scrapeUntil(f.gw.metricsUrl!, (p) => p.sum("ollama_gateway_queue_depth", model) === 1);
    assert.equal(page.sum("ollama_gateway_node_slots_in_use", { ...model, node: "n0" }), 1);
    assert.equal(page.sum("ollama_gateway_calls_active"), 2);
    const refused = await run(f.client, { model: "llama3.2", prompt: "refused", options: { numPredict: 1 } });
    assert.equal(refused.error?.code, Code.ResourceExhausted);
    await held.release();
    assert.equal((await queued).error, undefined);
    const b = await scrape(f.gw.metricsUrl!);
    assert.equal(delta(a, b, "ollama_gateway_refusals_total", { reason: "QUEUE_FULL", ...model }), 1);
    assert.equal(
      delta(a, b, "ollama_gateway_calls_total", { method: "Generate", code: "ResourceExhausted", ...model }),
      1,
    );
    assert.equal(b.sum("ollama_gateway_queue_depth"), 0);
    assert.equal(delta(a, b, "ollama_gateway_queue_wait_seconds_count", model), 2, "held and queued were admitted");
  });
});

describe("the cardinality bound", () => {
  let f: Fleet;
  before(async () => {
    f = await fleet(1, { tokenMs: 0 }, { METRICS_PORT: "0", METRICS_MAX_MODELS: "2" }, 1, 4);
  });
  after(() => f.close());

  it("keeps at most METRICS_MAX_MODELS model labels however many names clients send", async () => {
    for (let i = 0; i < 40; i++) await run(f.client, { model: `made-up-${i}`, prompt: "x" });
    for (const model of ["llama3.2", "qwen3", "llava"]) {
      const r = await run(f.client, { model, prompt: "real", options: { numPredict: 1 } });
      assert.equal(r.error, undefined, model);
    }
    const page = await scrape(f.gw.metricsUrl!);
    const labels = new Set(
      page.samples
        .filter((s) => s.name.startsWith("ollama_gateway_") && "model" in s.labels)
        .map((s) => s.labels["model"]),
    );
    labels.delete("");
    assert.deepEqual([...labels].sort(), ["llama3.2:latest", OTHER_LABEL, "qwen3:latest"]);
    // The third real model and the made-up names share "other".
    assert.equal(page.sum("ollama_gateway_calls_total", { model: OTHER_LABEL, code: "NotFound" }), 40);
    assert.equal(page.sum("ollama_gateway_calls_total", { model: OTHER_LABEL, code: "OK" }), 1);
  });
});

describe("per-principal metrics", () => {
  const method = InferenceService.method.generate;
  /** A finished call as the pipeline sees it, by `principal` (none: authentication off). */
  function call(principal: string | undefined, tokens: [number, number] = [0, 0]) {
    const values = createContextValues();
    if (principal !== undefined) values.set(kPrincipal, { name: principal, via: "api-key" });
    const info = newRpcInfo("10.0.0.1");
    info.model = "llama3.2";
    [info.promptTokens, info.completionTokens] = tokens;
    return { method, protocolName: "grpc", info, values };
  }

  it("counts calls, tokens and refusals per principal, the names past the bound as other", async () => {
    const metrics = createGatewayMetrics({
      maxModels: 10,
      maxPrincipals: 2,
      principalOf: (v) => principalOf(v)?.name,
      version: "test",
      runtime: false,
    });
    metrics.beginCall(call("alice", [10, 5]))(undefined);
    metrics.beginCall(call("alice", [1, 2]))(undefined);
    metrics.beginCall(call("bob"))(gatewayOverloaded(1));
    metrics.beginCall(call("carol", [3, 4]))(undefined);
    metrics.beginCall(call("dave"))(modelNotFound("x"));
    metrics.beginCall(call(undefined, [100, 100]))(undefined);
    const page = parsePromText(await metrics.registry.metrics());
    assert.equal(page.sum("ollama_gateway_principal_calls_total", { principal: "alice" }), 2);
    assert.equal(page.sum("ollama_gateway_principal_calls_total", { principal: "bob" }), 1);
    assert.equal(page.sum("ollama_gateway_principal_calls_total", { principal: OTHER_LABEL }), 2);
    assert.equal(page.sum("ollama_gateway_principal_calls_total"), 5, "the call without a principal is not counted");
    assert.equal(page.sum("ollama_gateway_principal_tokens_total", { principal: "alice", type: "input" }), 11);
    assert.equal(page.sum("ollama_gateway_principal_tokens_total", { principal: "alice", type: "output" }), 7);
    assert.equal(page.sum("ollama_gateway_principal_tokens_total", { principal: OTHER_LABEL }), 7);
    assert.equal(
      page.sum("ollama_gateway_principal_refusals_total", { principal: "bob", reason: "GATEWAY_OVERLOADED" }),
      1,
    );
    // A NOT_FOUND is an error, not a refusal.
    assert.equal(page.sum("ollama_gateway_principal_refusals_total"), 1);
    assert.equal(page.sum("ollama_gateway_refusals_total", { reason: "GATEWAY_OVERLOADED" }), 1);
    assert.equal(page.sum("ollama_gateway_calls_total"), 6);
  });

  it("reads nothing at all when no principal function is given", async () => {
    const metrics = createGatewayMetrics({ maxModels: 10, maxPrincipals: 2, version: "test", runtime: false });
    metrics.beginCall(call("alice", [1, 1]))(new ConnectError("x", Code.Internal));
    const page = parsePromText(await metrics.registry.metrics());
    assert.equal(page.find("ollama_gateway_principal_calls_total").length, 0);
    assert.equal(page.sum("ollama_gateway_calls_total", { code: "Internal" }), 1);
  });
});

describe("Redis link metric", () => {
  it("is 1 while the Redis command connection is ready and 0 while Redis is down", async () => {
    const redis = await startRedis();
    const gw = await startTestGateway({
      OLLAMA_URL: "http://127.0.0.1:9",
      METRICS_PORT: "0",
      REDIS_URL: redis.url,
    });
    try {
      const up = (page: PromPage): number => page.sum("ollama_gateway_redis_up", {});
      await scrapeUntil(gw.metricsUrl!, (p) => p.find("ollama_gateway_redis_up").length === 1 && up(p) === 1);
      await redis.kill();
      await scrapeUntil(gw.metricsUrl!, (p) => up(p) === 0);
    } finally {
      await gw.close();
      await redis.stop();
    }
  });
});

describe("metrics off", () => {
  it("without METRICS_PORT there is no registry, no endpoint and no hook", async () => {
    const gw = await startTestGateway({ OLLAMA_URL: "http://127.0.0.1:9" });
    try {
      assert.equal(gw.metrics, undefined);
      assert.equal(gw.metricsUrl, undefined);
      assert.equal(gw.logs.find("metrics listening").length, 0);
    } finally {
      await gw.close();
    }
  });
});
