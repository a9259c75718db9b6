import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Code, createClient, createContextValues } from "@connectrpc/connect";
import { gatewayOverloaded } from "../src/errors/domain-errors.js";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { Role } from "../src/gen/ollama/gateway/v1/types_pb.js";
import { newRpcInfo } from "../src/observability/rpc-info.js";
import { createGatewayMetrics } from "../src/observability/telemetry/metrics.js";
import type { GatewayMetrics } from "../src/observability/telemetry/metrics.js";
import { listenMetrics } from "../src/observability/telemetry/metrics-endpoint.js";
import type { MetricsEndpoint } from "../src/observability/telemetry/metrics-endpoint.js";
import { kPrincipal, principalOf } from "../src/pipeline/principal.js";
import { fleet, run } from "./helpers/fleet.js";
import type { Fleet } from "./helpers/fleet.js";
import { holdSlot } from "./helpers/held-request.js";
import { scrape } from "./helpers/prom-text.js";
import { promtool, startPrometheus } from "./helpers/prometheus-server.js";
import type { PrometheusServer } from "./helpers/prometheus-server.js";
import { startRedis } from "./helpers/redis-server.js";
import type { RedisServer } from "./helpers/redis-server.js";
import { delay } from "./helpers/sim-http.js";
import { TRANSPORTS } from "./helpers/transports.js";

const repo = fileURLToPath(new URL("../", import.meta.url));
const DASHBOARD = join(repo, "deploy/grafana/dashboards/ollama-gateway.json");
const PROMETHEUS_DIR = join(repo, "deploy/prometheus");
const ALERTS = join(PROMETHEUS_DIR, "alerts.yml");
const JOB = "ollama-gateway";

/** A dashboard panel's queries, with Grafana's variables as they are when "All" is chosen. */
interface PanelQuery {
  panel: string;
  expr: string;
}

interface DashboardPanel {
  title: string;
  type: string;
  panels?: DashboardPanel[];
  targets?: { expr: string }[];
}

function dashboardQueries(): PanelQuery[] {
  const dash = JSON.parse(readFileSync(DASHBOARD, "utf8")) as { panels: DashboardPanel[] };
  const out: PanelQuery[] = [];
  const walk = (panels: DashboardPanel[]): void => {
    for (const p of panels) {
      for (const t of p.targets ?? []) {
        out.push({
          panel: p.title,
          expr: t.expr.replaceAll("$__rate_interval", "1m").replace(/\$(model|node|job)\b/g, ".*"),
        });
      }
      walk(p.panels ?? []);
    }
  };
  walk(dash.panels);
  return out;
}

/** An alert expression without its final comparison with a constant (what it measures, always data). */
function measured(query: string): string {
  const m = /^([\s\S]*?)\s*(?:==|!=|>=|<=|>|<)\s*-?[0-9.]+(?:e[+-]?[0-9]+)?\s*$/.exec(query.trim());
  return m ? m[1]! : query;
}

/** Polls `check` (async) every 100 ms until it holds or `ms` pass. */
async function until(what: string, check: () => Promise<boolean>, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    if (await check()) return;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await delay(100);
  }
}

/** `host:port` of a URL. */
const target = (url: string): string => new URL(url).host;

describe("a real Prometheus scraping the gateway", () => {
  let redis: RedisServer;
  let f: Fleet;
  let prom: PrometheusServer;
  let principals: GatewayMetrics;
  let principalEndpoint: MetricsEndpoint;
  /** What the traffic should have produced, counted as it is sent. */
  const sent = { generateOk: 0, outputTokens: 0, chatOk: 0, embedOk: 0, notFound: 0, internal: 0, queueRefused: 0 };

  /** A call by `principal` as authentication will leave it, fed straight into the principal source. */
  function principalCall(principal: string, tokens: [number, number], error?: ReturnType<typeof gatewayOverloaded>) {
    const values = createContextValues().set(kPrincipal, { name: principal, via: "api-key" });
    const info = newRpcInfo("10.0.0.1");
    info.model = "llama3.2";
    [info.promptTokens, info.completionTokens] = tokens;
    principals.beginCall({ method: InferenceService.method.generate, protocolName: "grpc", info, values })(error);
  }

  /** One round of every kind of traffic the dashboard shows. */
  async function traffic(tag: string): Promise<void> {
    const url = f.gw.url;
    const grpc = createClient(InferenceService, TRANSPORTS[0]!.make(url));
    const web = createClient(InferenceService, TRANSPORTS[1]!.make(url));
    const connect = createClient(InferenceService, TRANSPORTS[2]!.make(url));
    for (let i = 0; i < 3; i++) {
      const r = await run(grpc, { model: "llama3.2", prompt: `${tag} generate ${i}`, options: { numPredict: 2 } });
      assert.equal(r.error, undefined);
      sent.generateOk++;
      sent.outputTokens += 2;
    }
    for await (const _ of connect.chat({
      model: "llama3.2",
      messages: [{ role: Role.USER, content: `${tag} chat` }],
      options: { numPredict: 2 },
    })) {
      // to the end
    }
    sent.chatOk++;
    sent.outputTokens += 2;
    for (let i = 0; i < 2; i++) {
      await web.embed({ model: "all-minilm", inputs: [`${tag} one`, `${tag} two`] });
      sent.embedOk++;
    }
    assert.equal((await run(grpc, { model: `no-such-${tag}`, prompt: "x" })).error?.code, Code.NotFound);
    sent.notFound++;
    assert.equal((await run(grpc, { model: "llava", prompt: `${tag} broken` })).error?.code, Code.Internal);
    sent.internal++;
    // The first node this call reaches answers busy: a retry on the other node serves it.
    const prompt = `${tag} fail over`;
    const armed = f.sims.map((sim) =>
      sim.events.on("request", (e) => {
        if (!e.body?.toString().includes(prompt)) return;
        for (const off of armed) off();
        sim.faults.add({ kind: "busy", path: "/api/generate" });
      }),
    );
    assert.equal((await run(grpc, { model: "llama3.2", prompt, options: { numPredict: 2 } })).error, undefined);
    sent.generateOk++;
    sent.outputTokens += 2;
    // qwen3's slot held on both nodes: one more waits past QUEUE_MAX_WAIT_MS and is refused.
    const held = [
      await holdSlot(f, { model: "qwen3", prompt: `${tag} held 1` }),
      await holdSlot(f, { model: "qwen3", prompt: `${tag} held 2` }),
    ];
    const refused = await run(grpc, { model: "qwen3", prompt: `${tag} refused` });
    assert.equal(refused.error?.code, Code.ResourceExhausted);
    sent.queueRefused++;
    for (const h of held) await h.release();
    principalCall("alice", [10, 5]);
    principalCall("alice", [1, 2]);
    principalCall("bob", [0, 0], gatewayOverloaded(1));
  }

  /** Waits until Prometheus has scraped both targets as they are now. */
  async function scraped(): Promise<void> {
    const calls = (await scrape(f.gw.metricsUrl!)).sum("ollama_gateway_calls_total");
    const principalCalls = (await scrape(principalEndpoint.url)).sum("ollama_gateway_principal_calls_total");
    await until("Prometheus to scrape the traffic", async () => {
      const [c] = await prom.query(`sum(ollama_gateway_calls_total{instance="${target(f.gw.metricsUrl!)}"})`);
      const [p] = await prom.query("sum(ollama_gateway_principal_calls_total)");
      return c?.value === calls && p?.value === principalCalls;
    });
  }

  /** The one value of an instant query that must return one sample. */
  async function value(expr: string): Promise<number> {
    const r = await prom.query(expr);
    assert.equal(r.length, 1, `${expr} returned ${r.length} samples`);
    return r[0]!.value;
  }

  before(async () => {
    redis = await startRedis();
    f = await fleet(
      2,
      { loadMs: 60 },
      { METRICS_PORT: "0", REDIS_URL: redis.url, EMBED_BATCH_WINDOW_MS: "0", QUEUE_MAX_WAIT_MS: "50" },
      1,
      // Room on each node for all four models used (llava counts: a failed dispatch loads it as far
      // as the gateway knows), so the second held qwen3 call loads it on the other node.
      4,
    );
    // llava always fails on both nodes: server-side errors for the error-rate expressions.
    for (const sim of f.sims) {
      sim.faults.add({ kind: "error-before-stream", status: 500, message: "boom", model: "llava", times: Infinity });
    }
    // Per-principal series come from the same metrics code fed with calls carrying a principal, as
    // the authentication hook will set it.
    principals = createGatewayMetrics({
      maxModels: 10,
      maxPrincipals: 10,
      principalOf: (v) => principalOf(v)?.name,
      version: "test",
      runtime: false,
    });
    principalEndpoint = await listenMetrics({
      host: "127.0.0.1",
      port: 0,
      render: async () => ({ contentType: principals.registry.contentType, body: await principals.registry.metrics() }),
      onError: () => undefined,
    });
    prom = await startPrometheus({
      job: JOB,
      targets: [target(f.gw.metricsUrl!), target(principalEndpoint.url)],
      ruleFiles: [ALERTS],
    });
    await until("both targets up", async () => (await prom.query(`up{job="${JOB}"} == 1`)).length === 2);
    // Two rounds, each scraped: every counter and histogram exists before the second round increases it.
    await traffic("first");
    await scraped();
    await traffic("second");
    await scraped();
  });
  after(async () => {
    await prom?.stop();
    await principalEndpoint?.close();
    await f?.close();
    await redis?.stop();
  });

  it("has every call counted exactly, by method, code and model", async () => {
    const inference = `service="${InferenceService.typeName}"`;
    assert.equal(
      await value(
        `sum(ollama_gateway_calls_total{${inference}, method="Generate", code="OK", model="llama3.2:latest"})`,
      ),
      sent.generateOk,
    );
    assert.equal(
      await value(`sum(ollama_gateway_calls_total{${inference}, method="Chat", code="OK", protocol="connect"})`),
      sent.chatOk,
    );
    assert.equal(
      await value(`sum(ollama_gateway_calls_total{${inference}, method="Embed", code="OK", protocol="grpc-web"})`),
      sent.embedOk,
    );
    assert.equal(await value(`sum(ollama_gateway_calls_total{code="NotFound", model="other"})`), sent.notFound);
    assert.equal(await value(`sum(ollama_gateway_calls_total{code="Internal", model="llava:latest"})`), sent.internal);
    assert.equal(
      await value(`sum(ollama_gateway_refusals_total{reason="QUEUE_WAIT_TOO_LONG", model="qwen3:latest"})`),
      sent.queueRefused,
    );
    assert.equal(await value(`sum(ollama_gateway_tokens_total{type="output"})`), sent.outputTokens);
    assert.equal(await value(`sum(ollama_gateway_embed_batch_inputs_count)`), sent.embedOk / 2);
    assert.equal(await value(`sum(ollama_gateway_cache_hits_total{kind="emb"})`), sent.embedOk);
    assert.equal(await value(`sum(ollama_gateway_failovers_total{outcome="recovered"})`), 2);
    assert.equal(await value(`sum(ollama_gateway_retries_total{reason="UPSTREAM_BUSY"})`), 2);
    assert.equal(await value(`min(ollama_gateway_redis_up)`), 1);
  });

  it("has consistent histograms: +Inf bucket = count = calls, buckets cumulative", async () => {
    const calls = await value(`sum(ollama_gateway_calls_total{job="${JOB}"})`);
    assert.equal(await value(`sum(ollama_gateway_call_duration_seconds_count)`), calls);
    assert.equal(await value(`sum(ollama_gateway_call_duration_seconds_bucket{le="+Inf"})`), calls);
    // Cumulative: no bucket holds more than the next one up.
    const buckets = (await prom.query("sum by (le) (ollama_gateway_call_duration_seconds_bucket)"))
      .map((b) => ({
        le: b.metric["le"] === "+Inf" ? Number.POSITIVE_INFINITY : Number(b.metric["le"]),
        value: b.value,
      }))
      .sort((a, b) => a.le - b.le);
    assert.ok(buckets.length > 10);
    for (let i = 1; i < buckets.length; i++)
      assert.ok(buckets[i]!.value >= buckets[i - 1]!.value, `le=${buckets[i]!.le}`);
    assert.equal(buckets.at(-1)!.le, Number.POSITIVE_INFINITY);
    const streams = sent.generateOk + sent.chatOk;
    assert.equal(await value(`sum(ollama_gateway_time_to_first_token_seconds_count)`), streams);
    assert.equal(await value(`sum(ollama_gateway_output_tokens_per_second_count)`), streams);
    assert.ok((await value(`sum(ollama_gateway_time_to_first_token_seconds_sum)`)) > 0);
  });

  it("has the per-principal series", async () => {
    assert.equal(await value(`sum(ollama_gateway_principal_calls_total{principal="alice"})`), 4);
    assert.equal(await value(`sum(ollama_gateway_principal_tokens_total{principal="alice"})`), 36);
    assert.equal(
      await value(`sum(ollama_gateway_principal_refusals_total{principal="bob", reason="GATEWAY_OVERLOADED"})`),
      2,
    );
  });

  it("answers every query of the Grafana dashboard with data", async () => {
    const queries = dashboardQueries();
    assert.ok(queries.length >= 30, `only ${queries.length} queries found`);
    for (const q of queries) {
      const samples = await prom.query(q.expr).catch((e: unknown) => {
        throw new Error(`panel "${q.panel}": Prometheus rejects ${q.expr}: ${String(e)}`);
      });
      assert.ok(samples.length > 0, `panel "${q.panel}" has no data: ${q.expr}`);
      assert.ok(
        samples.some((s) => Number.isFinite(s.value)),
        `panel "${q.panel}" has no finite value: ${q.expr}`,
      );
    }
  });

  it("has values for the dashboard's variables", async () => {
    const dash = JSON.parse(readFileSync(DASHBOARD, "utf8")) as {
      templating: { list: { name: string; type: string; definition?: string }[] };
    };
    const variables = dash.templating.list.filter((v) => v.type === "query");
    assert.deepEqual(variables.map((v) => v.name).sort(), ["job", "model", "node"]);
    for (const v of variables) {
      const m = /^label_values\((\w+), (\w+)\)$/.exec(v.definition ?? "");
      assert.ok(m, `variable ${v.name}: ${v.definition}`);
      const values = await prom.labelValues(m[2]!, m[1]!);
      assert.ok(values.length > 0, `variable ${v.name} has no values`);
    }
  });

  it("loads the alert rules and evaluates each one without error, each measuring something", async () => {
    let rules: Awaited<ReturnType<PrometheusServer["rules"]>> = [];
    await until("every rule evaluated", async () => {
      rules = await prom.rules();
      return rules.length === 6 && rules.every((r) => r.health === "ok");
    });
    for (const r of rules as unknown as { name: string; query: string }[]) {
      const expr = measured(r.query);
      assert.notEqual(expr, r.query.trim(), `${r.name}: no threshold found in ${r.query}`);
      const samples = await prom.query(expr);
      assert.ok(samples.length > 0, `alert ${r.name} measures nothing: ${expr}`);
    }
  });

  it("passes promtool: the rules, their unit tests and the compose Prometheus config", () => {
    for (const args of [
      ["check", "rules", "alerts.yml"],
      ["test", "rules", "alerts.test.yml"],
      ["check", "config", "prometheus.yml"],
    ]) {
      const r = promtool(args, PROMETHEUS_DIR);
      assert.equal(r.status, 0, `promtool ${args.join(" ")}: ${r.output}`);
    }
  });
});
