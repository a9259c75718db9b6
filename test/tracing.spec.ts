import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { ConnectError, createClient } from "@connectrpc/connect";
import type { Client } from "@connectrpc/connect";
import { ConfigError, loadConfig, redactConfig } from "../src/config/load-config.js";
import { parseTracingConfig } from "../src/config/observability-config.js";
import { Health } from "../src/gen/grpc/health/v1/health_pb.js";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { Role } from "../src/gen/ollama/gateway/v1/types_pb.js";
import { TRACE_EXPORT_FAILED_MSG, TRACE_EXPORT_RECOVERED_MSG } from "../src/observability/telemetry/span-exporter.js";
import { sampleCall, traceIdBelowRatio } from "../src/observability/telemetry/sampling.js";
import {
  formatTraceparent,
  newSpanId,
  newTraceId,
  parseTraceparent,
  traceHeaders,
} from "../src/observability/telemetry/trace-context.js";
import type { SpanContext } from "../src/observability/telemetry/trace-context.js";
import { FIRST_MESSAGE_EVENT, SPAN } from "../src/observability/telemetry/tracing.js";
import type { RequestEvent } from "../src/simulator/events.js";
import { startSimulator } from "../src/simulator/simulator.js";
import type { Simulator } from "../src/simulator/simulator.js";
import { run } from "./helpers/fleet.js";
import { startOtlpReceiver } from "./helpers/otlp-receiver.js";
import type { OtlpReceiver, ReceivedSpan } from "./helpers/otlp-receiver.js";
import { eventually } from "./helpers/sim-http.js";
import { startTestGateway } from "./helpers/test-gateway.js";
import type { TestGateway } from "./helpers/test-gateway.js";
import { TRANSPORTS } from "./helpers/transports.js";

const INFERENCE = InferenceService.typeName;

/** A W3C trace context as a client sends it: fresh ids, `sampled` flag as asked. */
function clientContext(sampled = true): { traceId: string; spanId: string; header: string } {
  const traceId = randomBytes(16).toString("hex");
  const spanId = randomBytes(8).toString("hex");
  return { traceId, spanId, header: `00-${traceId}-${spanId}-${sampled ? "01" : "00"}` };
}

/** The spans of one trace: the server span (parent = the client's span) and its children. */
interface TraceTree {
  server: ReceivedSpan;
  children: ReceivedSpan[];
}

/** Waits for the spans of `traceId`: a server span and at least `children` spans under it. */
async function traceOf(rx: OtlpReceiver, traceId: string, children: number): Promise<TraceTree> {
  const spans = await rx.until((all) => {
    const mine = all.filter((s) => s.traceId === traceId);
    const server = mine.find((s) => s.kind === 2);
    return server !== undefined && mine.filter((s) => s.parentSpanId === server.spanId).length >= children;
  });
  const mine = spans.filter((s) => s.traceId === traceId);
  const server = mine.find((s) => s.kind === 2)!;
  return { server, children: mine.filter((s) => s.parentSpanId === server.spanId) };
}

/** The requests a simulator received, recorded from its events. */
function recordRequests(sim: Simulator): RequestEvent[] {
  const seen: RequestEvent[] = [];
  sim.events.on("request", (e) => seen.push(e));
  return seen;
}

describe("tracing configuration (the standard OTEL_* variables)", () => {
  const cases: { name: string; env: Record<string, string>; want: Partial<ReturnType<typeof parseTracingConfig>> }[] = [
    { name: "nothing set: tracing off", env: {}, want: { endpoint: undefined } },
    {
      name: "the base endpoint gets /v1/traces",
      env: { OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4318/" },
      want: { endpoint: "http://collector:4318/v1/traces", protocol: "http/protobuf" },
    },
    {
      name: "the traces endpoint is used as given and wins",
      env: {
        OTEL_EXPORTER_OTLP_ENDPOINT: "http://a:4318",
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "https://b/custom/path",
      },
      want: { endpoint: "https://b/custom/path" },
    },
    {
      name: "OTEL_SDK_DISABLED turns it off",
      env: { OTEL_EXPORTER_OTLP_ENDPOINT: "http://a:4318", OTEL_SDK_DISABLED: "true" },
      want: { endpoint: undefined },
    },
    {
      name: "OTEL_TRACES_EXPORTER=none turns it off",
      env: { OTEL_EXPORTER_OTLP_ENDPOINT: "http://a:4318", OTEL_TRACES_EXPORTER: "none" },
      want: { endpoint: undefined },
    },
    {
      name: "headers are URL-decoded; the traces-specific ones override",
      env: {
        OTEL_EXPORTER_OTLP_HEADERS: "api-key=a%20b,x=1",
        OTEL_EXPORTER_OTLP_TRACES_HEADERS: "x=2",
      },
      want: { headers: { "api-key": "a b", x: "2" } },
    },
    {
      name: "sampler, ratio, batch delay, service name and resource attributes",
      env: {
        OTEL_TRACES_SAMPLER: "parentbased_traceidratio",
        OTEL_TRACES_SAMPLER_ARG: "0.1",
        OTEL_BSP_SCHEDULE_DELAY: "250",
        OTEL_SERVICE_NAME: "gw",
        OTEL_RESOURCE_ATTRIBUTES: "deployment.environment=prod,service.name=ignored",
      },
      want: {
        sampler: "parentbased_traceidratio",
        samplerRatio: 0.1,
        scheduleDelayMs: 250,
        serviceName: "gw",
        resourceAttributes: { "deployment.environment": "prod", "service.name": "ignored" },
      },
    },
    {
      name: "defaults",
      env: {},
      want: {
        sampler: "parentbased_always_on",
        samplerRatio: 1,
        scheduleDelayMs: 5000,
        serviceName: "ollama-grpc-gateway",
        maxQueueSize: 2048,
        maxExportBatchSize: 512,
        timeoutMs: 10000,
      },
    },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const problems: string[] = [];
      const got = parseTracingConfig(c.env, problems);
      assert.deepEqual(problems, []);
      for (const [k, v] of Object.entries(c.want)) assert.deepEqual(got[k as keyof typeof got], v, k);
    });
  }

  it("reports every bad OTEL_* value at start, with the others", () => {
    assert.throws(
      () =>
        loadConfig({
          OTEL_EXPORTER_OTLP_ENDPOINT: "grpc://x",
          OTEL_EXPORTER_OTLP_PROTOCOL: "grpc",
          OTEL_TRACES_SAMPLER: "jaeger_remote",
          OTEL_BSP_MAX_EXPORT_BATCH_SIZE: "5000",
          OTEL_EXPORTER_OTLP_HEADERS: "novalue",
        }),
      (e: unknown) => {
        assert.ok(e instanceof ConfigError);
        for (const key of [
          "OTEL_EXPORTER_OTLP_ENDPOINT",
          "OTEL_EXPORTER_OTLP_PROTOCOL",
          "OTEL_TRACES_SAMPLER",
          "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
          "OTEL_EXPORTER_OTLP_HEADERS",
        ]) {
          assert.ok(e.message.includes(key), `${key} missing from: ${e.message}`);
        }
        return true;
      },
    );
  });

  it("masks the exporter headers in the logged configuration", () => {
    const config = loadConfig({
      OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318",
      OTEL_EXPORTER_OTLP_HEADERS: "authorization=Bearer%20secret",
    });
    assert.equal(config.tracing.headers["authorization"], "Bearer secret");
    const logged = JSON.stringify(redactConfig(config));
    assert.ok(!logged.includes("secret"), logged);
    assert.ok(logged.includes('"authorization":"***"'));
  });
});

describe("the sampling decision (OTEL_TRACES_SAMPLER's rules, before any span exists)", () => {
  const sampledParent = { traceId: "4bf92f3577b34da6a3ce929d0e0e4736", sampled: true };
  const unsampledParent = { ...sampledParent, sampled: false };
  const cases: [string, Parameters<typeof sampleCall>[0], number, Parameters<typeof sampleCall>[2], number, boolean][] =
    [
      // sampler, ratio, parent, random() draw, decision
      ["always_on ignores an unsampled parent", "always_on", 1, unsampledParent, 0.5, true],
      ["always_off ignores a sampled parent", "always_off", 1, sampledParent, 0.5, false],
      ["parentbased_always_on follows a sampled parent", "parentbased_always_on", 1, sampledParent, 0.5, true],
      ["parentbased_always_on follows an unsampled parent", "parentbased_always_on", 1, unsampledParent, 0.5, false],
      ["parentbased_always_on samples a root", "parentbased_always_on", 1, undefined, 0.5, true],
      ["parentbased_always_off drops a root", "parentbased_always_off", 1, undefined, 0.5, false],
      ["parentbased_always_off follows a sampled parent", "parentbased_always_off", 1, sampledParent, 0.5, true],
      [
        "parentbased_traceidratio follows a sampled parent at ratio 0",
        "parentbased_traceidratio",
        0,
        sampledParent,
        0.5,
        true,
      ],
      ["a ratio root below the ratio is sampled", "parentbased_traceidratio", 0.1, undefined, 0.09, true],
      ["a ratio root at or above the ratio is not", "parentbased_traceidratio", 0.1, undefined, 0.1, false],
      ["ratio 0 never samples a root", "traceidratio", 0, undefined, 0, false],
      ["ratio 1 always samples a root", "traceidratio", 1, undefined, 0.999, true],
      [
        "traceidratio decides a parent's trace by its id, not its flag",
        "traceidratio",
        0.5,
        unsampledParent,
        0.9,
        traceIdBelowRatio(unsampledParent.traceId, 0.5),
      ],
    ];
  for (const [name, sampler, ratio, parent, draw, want] of cases) {
    it(name, () =>
      assert.equal(
        sampleCall(sampler, ratio, parent, () => draw),
        want,
      ),
    );
  }

  it("samples trace ids at the ratio, the same way as the OpenTelemetry SDK", () => {
    // The SDK's rule: the id's four 32-bit words XORed, below ratio × (2^32 − 1).
    assert.equal(traceIdBelowRatio("00000000000000000000000000000001", 0.5), true);
    assert.equal(traceIdBelowRatio("ffffffff000000000000000000000000", 0.5), false);
    assert.equal(traceIdBelowRatio("80000000000000000000000000000000", 0.5), false);
    assert.equal(traceIdBelowRatio("7ffffffe000000000000000000000000", 0.5), true);
    assert.equal(traceIdBelowRatio("not a trace id", 0.5), false);
    let kept = 0;
    for (let i = 0; i < 4000; i++) if (traceIdBelowRatio(randomBytes(16).toString("hex"), 0.25)) kept++;
    assert.ok(kept > 800 && kept < 1200, `kept ${kept} of 4000 at 25 %`);
  });
});

describe("traces of calls (an OTLP/HTTP receiver in the test)", () => {
  let sim: Simulator;
  let rx: OtlpReceiver;
  let gw: TestGateway;
  let seen: RequestEvent[];
  before(async () => {
    sim = await startSimulator({});
    rx = await startOtlpReceiver();
    seen = recordRequests(sim);
    gw = await startTestGateway({
      OLLAMA_URL: sim.url,
      OTEL_EXPORTER_OTLP_ENDPOINT: rx.url,
      OTEL_EXPORTER_OTLP_HEADERS: "x-collector-token=t%20ok",
      OTEL_BSP_SCHEDULE_DELAY: "25",
      OTEL_SERVICE_NAME: "gateway-under-test",
      EMBED_BATCH_WINDOW_MS: "0",
    });
  });
  after(async () => {
    await gw.close();
    await sim.close();
    await rx.close();
  });

  const protocols: Record<string, string> = {
    "gRPC over HTTP/2": "grpc",
    "gRPC-Web over HTTP/1.1": "grpc-web",
    "Connect over HTTP/1.1": "connect",
    "Connect over HTTP/2": "connect",
    "gRPC over HTTP/2, gzip requests": "grpc",
  };
  for (const t of TRANSPORTS) {
    it(`parents a Generate's spans to the client's traceparent (${t.name}) and passes the trace to Ollama`, async () => {
      const client = createClient(InferenceService, t.make(gw.url));
      const ctx = clientContext();
      const prompt = `traced over ${t.name}`;
      const r = await run(
        client,
        { model: "llama3.2", prompt, options: { numPredict: 4 } },
        { headers: { traceparent: ctx.header, tracestate: "vendor=1" } },
      );
      assert.equal(r.error, undefined);
      const usage = r.messages.at(-1)!.usage!;
      const { server, children } = await traceOf(rx, ctx.traceId, 2);

      // The server span: the client's span is its parent; RPC and GenAI attributes.
      assert.equal(server.parentSpanId, ctx.spanId);
      assert.equal(server.name, `${INFERENCE}/Generate`);
      assert.equal(server.traceState, "vendor=1");
      assert.deepEqual(
        {
          service: server.attributes["rpc.service"],
          method: server.attributes["rpc.method"],
          protocol: server.attributes["ollama_gateway.protocol"],
          code: server.attributes["rpc.grpc.status_code"],
          operation: server.attributes["gen_ai.operation.name"],
          requested: server.attributes["gen_ai.request.model"],
          served: server.attributes["gen_ai.response.model"],
          input: server.attributes["gen_ai.usage.input_tokens"],
          output: server.attributes["gen_ai.usage.output_tokens"],
          finish: server.attributes["gen_ai.response.finish_reasons"],
          node: server.attributes["ollama_gateway.node"],
        },
        {
          service: INFERENCE,
          method: "Generate",
          protocol: protocols[t.name],
          code: 0,
          operation: "text_completion",
          requested: "llama3.2",
          served: usage.model,
          input: usage.promptTokens,
          output: usage.completionTokens,
          finish: ["length"],
          node: usage.node,
        },
      );
      assert.equal(server.status.code, 0);
      assert.deepEqual(
        server.events.map((e) => e.name),
        [FIRST_MESSAGE_EVENT],
      );
      assert.equal(server.resource["service.name"], "gateway-under-test");
      assert.equal(server.resource["service.version"], "0.1.0");

      // Its children: the queue wait, then the HTTP request to Ollama, inside the server span.
      const queue = children.find((s) => s.name === SPAN.queueWait)!;
      const upstream = children.find((s) => s.name === "POST /api/generate")!;
      assert.ok(queue !== undefined && upstream !== undefined, children.map((s) => s.name).join(", "));
      assert.equal(queue.attributes["ollama_gateway.attempt"], 1);
      assert.equal(upstream.kind, 3, "client span");
      assert.equal(upstream.attributes["http.response.status_code"], 200);
      assert.equal(upstream.attributes["url.full"], `${sim.url}/api/generate`);
      assert.equal(upstream.attributes["server.port"], Number(new URL(sim.url).port));
      for (const child of [queue, upstream]) {
        assert.ok(child.startNs >= server.startNs && child.startNs <= server.endNs, `${child.name} in the call`);
      }
      // (The upstream span may end just after the call: the tail of Ollama's response is read
      // after the last message went out, so the connection goes back to the pool.)
      assert.ok(queue.endNs <= server.endNs, "the wait ends inside the call");
      assert.ok(queue.endNs <= upstream.startNs, "the request goes out after the wait");

      // Ollama was sent the client span's context: a mesh or an instrumented proxy joins the trace.
      const sent = seen.find((e) => e.path === "/api/generate" && e.body?.toString().includes(prompt));
      assert.equal(sent?.traceparent, `00-${ctx.traceId}-${upstream.spanId}-01`);

      // The log line carries the trace id.
      const line = gw.logs.find("rpc").find((l) => l["traceId"] === ctx.traceId);
      assert.ok(line !== undefined, "rpc line with the trace id");
    });
  }

  it("exports over OTLP/HTTP protobuf to /v1/traces with the configured headers", () => {
    assert.ok(rx.requests.length > 0);
    for (const req of rx.requests) {
      assert.equal(req.path, "/v1/traces");
      assert.equal(req.contentType, "application/x-protobuf");
      assert.equal(req.headers["x-collector-token"], "t ok");
    }
  });

  it("traces Chat as a chat operation", async () => {
    const client = createClient(InferenceService, TRANSPORTS[0]!.make(gw.url));
    const ctx = clientContext();
    for await (const _ of client.chat(
      { model: "llama3.2", messages: [{ role: Role.USER, content: "hello" }], options: { numPredict: 2 } },
      { headers: { traceparent: ctx.header } },
    )) {
      // read to the end
    }
    const { server, children } = await traceOf(rx, ctx.traceId, 2);
    assert.equal(server.attributes["gen_ai.operation.name"], "chat");
    assert.ok(children.some((s) => s.name === "POST /api/chat"));
  });

  it("traces Embed with a cache lookup span: a miss goes to Ollama, a hit does not", async () => {
    const client: Client<typeof InferenceService> = createClient(InferenceService, TRANSPORTS[0]!.make(gw.url));
    const inputs = ["trace me", "and me"];
    const first = clientContext();
    await client.embed({ model: "all-minilm", inputs }, { headers: { traceparent: first.header } });
    const miss = await traceOf(rx, first.traceId, 3);
    assert.equal(miss.server.attributes["gen_ai.operation.name"], "embeddings");
    const lookup = miss.children.find((s) => s.name === SPAN.cacheLookup)!;
    assert.deepEqual(
      [lookup.attributes["ollama_gateway.cache.inputs"], lookup.attributes["ollama_gateway.cache.hits"]],
      [2, 0],
    );
    assert.ok(miss.children.some((s) => s.name === "POST /api/embed"));

    const second = clientContext();
    await client.embed({ model: "all-minilm", inputs }, { headers: { traceparent: second.header } });
    const hit = await traceOf(rx, second.traceId, 1);
    assert.equal(hit.children.find((s) => s.name === SPAN.cacheLookup)?.attributes["ollama_gateway.cache.hits"], 2);
    assert.ok(!hit.children.some((s) => s.name === "POST /api/embed"), "served from the cache");
  });

  it("records the status and the ErrorInfo reason of a failed call", async () => {
    const ctx = clientContext();
    const client = createClient(InferenceService, TRANSPORTS[0]!.make(gw.url));
    const r = await run(client, { model: "no-such-model", prompt: "x" }, { headers: { traceparent: ctx.header } });
    assert.ok(r.error instanceof ConnectError);
    const { server } = await traceOf(rx, ctx.traceId, 1);
    assert.equal(server.attributes["rpc.grpc.status_code"], r.error.code);
    assert.equal(server.attributes["error.type"], "MODEL_NOT_FOUND");
    assert.equal(server.attributes["ollama_gateway.error.reason"], "MODEL_NOT_FOUND");
    assert.equal(server.status.code, 0, "a client error leaves a server span's status unset");
  });

  it("marks a failed upstream request and a server-side failure as errors", async () => {
    sim.faults.add({ kind: "error-before-stream", status: 500, message: "boom", path: "/api/generate", times: 3 });
    const ctx = clientContext();
    const client = createClient(InferenceService, TRANSPORTS[0]!.make(gw.url));
    const r = await run(client, { model: "llama3.2", prompt: "fail" }, { headers: { traceparent: ctx.header } });
    assert.ok(r.error instanceof ConnectError);
    const { server, children } = await traceOf(rx, ctx.traceId, 2);
    const upstream = children.filter((s) => s.name === "POST /api/generate");
    assert.ok(upstream.length >= 1);
    for (const s of upstream) {
      assert.equal(s.status.code, 2);
      assert.equal(s.attributes["error.type"], "500");
      assert.equal(s.attributes["http.response.status_code"], 500);
    }
    assert.equal(server.attributes["rpc.grpc.status_code"], r.error.code);
    assert.equal(server.status.code, 2, `status ${r.error.code} is a server-side failure`);
    sim.faults.clear();
  });

  it("does not trace health probes", async () => {
    const health = createClient(Health, TRANSPORTS[0]!.make(gw.url));
    const ctx = clientContext();
    await health.check({ service: "" }, { headers: { traceparent: ctx.header } });
    // A traced call after it: once its spans are in, the probe's would be too.
    const marker = clientContext();
    await run(
      createClient(InferenceService, TRANSPORTS[0]!.make(gw.url)),
      { model: "llama3.2", prompt: "after probe", options: { numPredict: 1 } },
      {
        headers: { traceparent: marker.header },
      },
    );
    await traceOf(rx, marker.traceId, 2);
    await gw.tracing!.forceFlush();
    assert.ok(!rx.spans.some((s) => s.traceId === ctx.traceId));
  });

  it("starts a new trace for a call that brings none", async () => {
    const client = createClient(InferenceService, TRANSPORTS[0]!.make(gw.url));
    const id = `no-parent-${randomBytes(4).toString("hex")}`;
    await run(
      client,
      { model: "llama3.2", prompt: "root", options: { numPredict: 1 } },
      { headers: { "x-request-id": id } },
    );
    const spans = await rx.until((all) => all.some((s) => s.attributes["ollama_gateway.request_id"] === id));
    const server = spans.find((s) => s.attributes["ollama_gateway.request_id"] === id)!;
    assert.equal(server.parentSpanId, "");
    assert.match(server.traceId, /^[0-9a-f]{32}$/);
    assert.equal(gw.logs.find("rpc").find((l) => l["requestId"] === id)?.["traceId"], server.traceId);
  });
});

describe("sampling", () => {
  let sim: Simulator;
  let rx: OtlpReceiver;
  let gw: TestGateway;
  let seen: RequestEvent[];
  let client: Client<typeof InferenceService>;
  before(async () => {
    sim = await startSimulator({});
    rx = await startOtlpReceiver();
    seen = recordRequests(sim);
    gw = await startTestGateway({
      OLLAMA_URL: sim.url,
      OTEL_EXPORTER_OTLP_ENDPOINT: rx.url,
      OTEL_BSP_SCHEDULE_DELAY: "25",
      OTEL_TRACES_SAMPLER: "parentbased_traceidratio",
      OTEL_TRACES_SAMPLER_ARG: "0",
    });
    client = createClient(InferenceService, TRANSPORTS[0]!.make(gw.url));
  });
  after(async () => {
    await gw.close();
    await sim.close();
    await rx.close();
  });

  /** The traceparent the simulator received for the Generate with `prompt`. */
  const sentFor = (prompt: string): string | undefined =>
    seen.find((e) => e.path === "/api/generate" && e.body?.toString().includes(prompt))?.traceparent;

  it("follows a sampled parent even at ratio 0", async () => {
    const ctx = clientContext(true);
    await run(
      client,
      { model: "llama3.2", prompt: "sampled parent", options: { numPredict: 1 } },
      {
        headers: { traceparent: ctx.header },
      },
    );
    const { server } = await traceOf(rx, ctx.traceId, 2);
    assert.equal(server.parentSpanId, ctx.spanId);
  });

  it("exports nothing for a call not sampled, yet passes the caller's trace context on", async () => {
    const ctx = clientContext(false);
    const id = `unsampled-${randomBytes(4).toString("hex")}`;
    await run(
      client,
      { model: "llama3.2", prompt: "unsampled parent", options: { numPredict: 1 } },
      {
        headers: { traceparent: ctx.header, "x-request-id": id },
      },
    );
    const root = `root-${randomBytes(4).toString("hex")}`;
    await run(
      client,
      { model: "llama3.2", prompt: "unsampled root", options: { numPredict: 1 } },
      {
        headers: { "x-request-id": root },
      },
    );
    // A later sampled call's spans arriving shows the exporter has sent everything before it.
    const marker = clientContext(true);
    await run(
      client,
      { model: "llama3.2", prompt: "marker", options: { numPredict: 1 } },
      {
        headers: { traceparent: marker.header },
      },
    );
    await traceOf(rx, marker.traceId, 2);
    await gw.tracing!.forceFlush();
    assert.ok(!rx.spans.some((s) => s.traceId === ctx.traceId), "nothing of the unsampled trace");
    assert.ok(!rx.spans.some((s) => s.attributes["ollama_gateway.request_id"] === root), "nothing of the root");
    // The caller's context travels on as it came (not sampled); a root not sampled has none to pass.
    assert.equal(sentFor("unsampled parent"), ctx.header);
    assert.equal(sentFor("unsampled root"), undefined);
    // The log line of the unsampled call still names the client's trace; a new unsampled root names none.
    assert.ok(await eventually(() => gw.logs.find("rpc").some((l) => l["requestId"] === root)));
    const lines = gw.logs.find("rpc");
    assert.equal(lines.find((l) => l["requestId"] === id)?.["traceId"], ctx.traceId);
    assert.equal(lines.find((l) => l["requestId"] === root)?.["traceId"], undefined);
  });
});

describe("W3C trace context", () => {
  const id = "4bf92f3577b34da6a3ce929d0e0e4736";
  const span = "00f067aa0ba902b7";
  const cases: [string, string, SpanContext | undefined][] = [
    [
      "a sampled version-00 header",
      `00-${id}-${span}-01`,
      { traceId: id, spanId: span, sampled: true, traceState: "" },
    ],
    [
      "flags other than sampled are ignored",
      `00-${id}-${span}-02`,
      { traceId: id, spanId: span, sampled: false, traceState: "" },
    ],
    [
      "upper case is read as lower case",
      `00-${id.toUpperCase()}-${span}-01`,
      { traceId: id, spanId: span, sampled: true, traceState: "" },
    ],
    [
      "a later version by its first fields",
      `01-${id}-${span}-01-extra`,
      { traceId: id, spanId: span, sampled: true, traceState: "" },
    ],
    ["version ff is invalid", `ff-${id}-${span}-01`, undefined],
    ["version 00 with extra fields is invalid", `00-${id}-${span}-01-extra`, undefined],
    ["an all-zero trace id is invalid", `00-${"0".repeat(32)}-${span}-01`, undefined],
    ["an all-zero span id is invalid", `00-${id}-${"0".repeat(16)}-01`, undefined],
    ["a short id is invalid", `00-${id.slice(2)}-${span}-01`, undefined],
    ["garbage is invalid", "hello", undefined],
  ];
  for (const [name, header, want] of cases) {
    it(name, () => assert.deepEqual(parseTraceparent(header, null), want));
  }

  it("keeps tracestate as it came and writes both headers back", () => {
    const ctx = parseTraceparent(`00-${id}-${span}-00`, " a=1,b=2 ")!;
    assert.equal(ctx.traceState, "a=1,b=2");
    assert.deepEqual(traceHeaders(ctx), { traceparent: `00-${id}-${span}-00`, tracestate: "a=1,b=2" });
    assert.equal(formatTraceparent({ traceId: id, spanId: span, sampled: true }), `00-${id}-${span}-01`);
  });

  it("makes valid random ids", () => {
    const ids = new Set(Array.from({ length: 1000 }, () => newTraceId()));
    assert.equal(ids.size, 1000);
    for (const t of ids) assert.match(t, /^[0-9a-f]{32}$/);
    assert.match(newSpanId(), /^[0-9a-f]{16}$/);
  });
});

describe("OTLP/JSON export (OTEL_EXPORTER_OTLP_PROTOCOL=http/json)", () => {
  it("sends the same spans as JSON", async () => {
    const rx = await startOtlpReceiver();
    const sim = await startSimulator({});
    const gw = await startTestGateway({
      OLLAMA_URL: sim.url,
      OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `${rx.url}/custom/traces`,
      OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
      OTEL_BSP_SCHEDULE_DELAY: "25",
    });
    try {
      const ctx = clientContext();
      const client = createClient(InferenceService, TRANSPORTS[0]!.make(gw.url));
      const r = await run(
        client,
        { model: "llama3.2", prompt: "json", options: { numPredict: 2 } },
        {
          headers: { traceparent: ctx.header },
        },
      );
      const { server, children } = await traceOf(rx, ctx.traceId, 2);
      assert.equal(server.parentSpanId, ctx.spanId);
      assert.equal(server.attributes["gen_ai.usage.output_tokens"], r.messages.at(-1)!.usage!.completionTokens);
      assert.deepEqual(server.attributes["gen_ai.response.finish_reasons"], ["length"]);
      assert.ok(children.some((s) => s.name === "POST /api/generate" && s.kind === 3));
      assert.ok(rx.requests.every((req) => req.path === "/custom/traces" && req.contentType === "application/json"));
    } finally {
      await gw.close();
      await sim.close();
      await rx.close();
    }
  });
});

describe("an Embed batch in traces", () => {
  it("is one upstream span under the first traced call, linked both ways with the other calls it serves", async () => {
    const sim = await startSimulator({ firstTokenMs: 1_500 });
    const rx = await startOtlpReceiver();
    const gw = await startTestGateway({
      OLLAMA_URL: sim.url,
      OTEL_EXPORTER_OTLP_ENDPOINT: rx.url,
      OTEL_BSP_SCHEDULE_DELAY: "25",
      EMBED_CACHE: "off",
      // Generous for a loaded machine: the three calls below reach the batcher while the lead is out (1.5 s) and the window is open.
      EMBED_BATCH_WINDOW_MS: "1000",
    });
    try {
      const client = createClient(InferenceService, TRANSPORTS[0]!.make(gw.url));
      const calls = [clientContext(), clientContext(), clientContext(false)];
      // A batch forms while a request for the same model is out: a lead call, slow at Ollama,
      // goes alone; the three calls made while it runs share the next request.
      const lead = client.embed({ model: "all-minilm", inputs: ["lead"] });
      assert.ok(await eventually(() => sim.stats.inFlight["all-minilm:latest"] === 1, 10_000), "the lead is out");
      const seen = recordRequests(sim);
      await Promise.all([
        lead,
        ...calls.map((c, i) =>
          client.embed({ model: "all-minilm", inputs: [`batched ${i}`] }, { headers: { traceparent: c.header } }),
        ),
      ]);
      const requests = seen.filter((e) => e.path === "/api/embed").map((e) => JSON.parse(e.body!.toString()).input);
      assert.deepEqual(requests, [["batched 0", "batched 1", "batched 2"]], "one request served the three calls");
      const [a, b] = await Promise.all([traceOf(rx, calls[0]!.traceId, 0), traceOf(rx, calls[1]!.traceId, 0)]);
      // (The lead, a root call, is traced too, in a trace of its own.)
      const upstream = rx.spans.filter(
        (s) => s.name === "POST /api/embed" && (s.traceId === calls[0]!.traceId || s.traceId === calls[1]!.traceId),
      );
      assert.equal(upstream.length, 1, "one upstream span for the one request");
      const request = upstream[0]!;
      const [owner, other] = request.parentSpanId === a.server.spanId ? [a, b] : [b, a];
      assert.equal(request.parentSpanId, owner.server.spanId, "a child of one of the calls");
      assert.deepEqual(
        request.links.map((l) => [l.traceId, l.spanId]),
        [[other.server.traceId, other.server.spanId]],
        "linked to the other traced call, and not to the call not sampled",
      );
      assert.deepEqual(
        other.server.links.map((l) => [l.traceId, l.spanId]),
        [[request.traceId, request.spanId]],
        "the other call links back to the request that served it",
      );
      assert.equal(rx.spans.filter((s) => s.traceId === calls[2]!.traceId).length, 0, "nothing for the unsampled call");
    } finally {
      await gw.close();
      await sim.close();
      await rx.close();
    }
  });
});

describe("trace export trouble", () => {
  it("is logged once when exports start failing and once when they work again", async () => {
    let status = 400;
    const rx = await startOtlpReceiver({ status: () => status });
    const sim = await startSimulator({});
    const gw = await startTestGateway({
      OLLAMA_URL: sim.url,
      OTEL_EXPORTER_OTLP_ENDPOINT: rx.url,
      OTEL_BSP_SCHEDULE_DELAY: "60000",
    });
    try {
      const client = createClient(InferenceService, TRANSPORTS[0]!.make(gw.url));
      for (let i = 0; i < 2; i++) {
        await run(client, { model: "llama3.2", prompt: `lost ${i}`, options: { numPredict: 1 } });
        // The flush reports the failed export too; what matters here is the log.
        await gw.tracing!.forceFlush().catch(() => undefined);
      }
      assert.equal(gw.logs.find(TRACE_EXPORT_FAILED_MSG).length, 1);
      status = 200;
      await run(client, { model: "llama3.2", prompt: "kept", options: { numPredict: 1 } });
      await gw.tracing!.forceFlush();
      assert.equal(gw.logs.find(TRACE_EXPORT_RECOVERED_MSG).length, 1);
      assert.ok(rx.spans.length > 0);
    } finally {
      await gw.close();
      await sim.close();
      await rx.close();
    }
  });
});

describe("tracing off", () => {
  it("without an OTLP endpoint: no tracer, no trace context to Ollama, no trace id in the log", async () => {
    const sim = await startSimulator({});
    const seen = recordRequests(sim);
    const gw = await startTestGateway({ OLLAMA_URL: sim.url });
    try {
      assert.equal(gw.tracing, undefined);
      const client = createClient(InferenceService, TRANSPORTS[0]!.make(gw.url));
      const ctx = clientContext();
      const r = await run(
        client,
        { model: "llama3.2", prompt: "untraced", options: { numPredict: 1 } },
        {
          headers: { traceparent: ctx.header },
        },
      );
      assert.equal(r.error, undefined);
      assert.ok(seen.length > 0);
      assert.ok(seen.every((e) => e.traceparent === undefined));
      assert.ok(await eventually(() => gw.logs.find("rpc").length > 0));
      assert.ok(gw.logs.find("rpc").every((l) => l["traceId"] === undefined));
    } finally {
      await gw.close();
      await sim.close();
    }
  });
});
