// What metrics and tracing add to one Generate call, in CPU: the pipeline hooks and the upstream
// and failover observers driven in-process as one fast-path call drives them (no network), for
// each setting, and the OTLP encoding per span. A quick, low-noise complement to
// `npm run bench -- --scenario a` with the settings below (README, "Operating it", cost).
//   node --import tsx bench/telemetry-cost.ts
import { createContextValues } from "@connectrpc/connect";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { loadConfig } from "../src/config/load-config.js";
import { newRpcInfo } from "../src/observability/rpc-info.js";
import { createGatewayMetrics } from "../src/observability/telemetry/metrics.js";
import { createGatewayTracing } from "../src/observability/telemetry/tracing.js";
import { bothFailover, bothUpstream } from "../src/observability/telemetry/observers.js";
import { encodeProtobuf } from "../src/observability/telemetry/otlp-encoding.js";
import { RecordedSpan } from "../src/observability/telemetry/span.js";
import { deriveSignal } from "../src/util/signal-lineage.js";

const quiet = { warn() {}, info() {} };
function setup(metricsOn: boolean, ratio: number | undefined) {
  const metrics = metricsOn ? createGatewayMetrics({ maxModels: 100, maxPrincipals: 100, version: "x" }) : undefined;
  const tracing =
    ratio === undefined
      ? undefined
      : createGatewayTracing({
          config: loadConfig({
            OTEL_EXPORTER_OTLP_ENDPOINT: "http://127.0.0.1:9",
            OTEL_TRACES_SAMPLER: "traceidratio",
            OTEL_TRACES_SAMPLER_ARG: String(ratio),
            // The standard batches (512 spans): each goes at once to a port nobody listens on, so
            // what encoding and sending a span costs is counted, as the gateway pays it.
            OTEL_BSP_SCHEDULE_DELAY: "3600000",
          }).tracing,
          version: "x",
          nodes: [{ name: "n0", url: "http://127.0.0.1:11434" }],
          log: quiet,
        });
  return {
    metrics,
    tracing,
    up: bothUpstream(metrics?.upstream, tracing?.upstream),
    fo: bothFailover(metrics?.failover, tracing?.failover),
  };
}
const final = {
  model: "llama3.2",
  done: true,
  done_reason: "stop",
  prompt_eval_count: 12,
  eval_count: 1,
  eval_duration: 20_000_000,
  load_duration: 1_000_000,
};
const body = { model: "llama3.2", prompt: "hi", stream: true };
function oneCall(s: ReturnType<typeof setup>) {
  const controller = new AbortController();
  const info = newRpcInfo("127.0.0.1");
  info.requestId = "r-1";
  const call = {
    method: InferenceService.method.generate,
    protocolName: "grpc",
    requestHeader: new Headers(),
    info,
    values: createContextValues(),
    streaming: true,
    signal: controller.signal,
  };
  const endT = s.tracing?.beginCall(call);
  const endM = s.metrics?.beginCall(call);
  // handler
  const derived = new AbortController();
  deriveSignal(derived.signal, controller.signal);
  info.model = "llama3.2";
  info.node = "n0";
  const req = { model: "llama3.2", signal: derived.signal, priority: () => 0, remainingMs: () => 1000 };
  const t0 = performance.now();
  s.fo?.admitted(req, "n0", 1, t0, 0);
  const x = s.up?.start("n0", "POST", "/api/generate", body, derived.signal);
  x?.responded?.(200);
  s.fo?.firstMessage(req, "n0", 1);
  x?.answered?.(final);
  x?.ended?.(undefined);
  info.promptTokens = 12;
  info.completionTokens = 1;
  info.messages = 2;
  endM?.(undefined);
  endT?.(undefined);
}
const N = 200_000;
const results: string[] = [];
for (const [name, m, r] of [
  ["none", false, undefined],
  ["metrics", true, undefined],
  ["tracing 0%", false, 0],
  ["tracing 10%", false, 0.1],
  ["tracing 100%", false, 1],
  ["metrics + tracing 10%", true, 0.1],
  ["metrics + tracing 100%", true, 1],
] as const) {
  const s = setup(m, r);
  // In rounds, with a turn of the event loop between them, so exports run as they would.
  const calls = async (n: number): Promise<void> => {
    for (let i = 0; i < n; i++) {
      oneCall(s);
      if (i % 256 === 255) await new Promise((resolve) => setImmediate(resolve));
    }
  };
  await calls(20000);
  const t = process.cpuUsage();
  await calls(N);
  const d = process.cpuUsage(t);
  results.push(`${name}: ${((d.user + d.system) / N).toFixed(2)} µs/call`);
}
// Encoding cost per span (what the exporter spends per span before the HTTP request).
const spans: RecordedSpan[] = [];
const sink = (sp: RecordedSpan) => spans.push(sp);
for (let i = 0; i < 512; i++) {
  const sp = new RecordedSpan(
    "4bf92f3577b34da6a3ce929d0e0e4736",
    "00f067aa0ba902b7",
    "",
    "POST /api/generate",
    3,
    Date.now(),
    sink,
  );
  sp.set("http.request.method", "POST")
    .set("ollama_gateway.node", "n0")
    .set("url.full", "http://127.0.0.1:11434/api/generate")
    .set("server.address", "127.0.0.1")
    .set("server.port", 11434)
    .set("gen_ai.request.model", "llama3.2")
    .set("http.response.status_code", 200)
    .set("gen_ai.response.model", "llama3.2")
    .set("gen_ai.response.finish_reasons", ["stop"]);
  sp.end();
}
const hdr = { resource: { "service.name": "x", "service.version": "1" }, scope: { name: "x", version: "1" } };
const t = process.cpuUsage();
for (let i = 0; i < 200; i++) encodeProtobuf(hdr, spans);
const d = process.cpuUsage(t);
results.push(`encode: ${((d.user + d.system) / (200 * 512)).toFixed(2)} µs/span`);
console.log(results.join("\n"));
process.exit(0);
