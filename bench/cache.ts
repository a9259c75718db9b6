// `npm run bench:cache`: what the metadata and embedding caches save, in one
// process (simulator, gateway and client together; fine for comparing hit
// vs miss and cache on vs off, not for absolute overhead — see bench/main.ts).
// The simulator gets realistic delays: /api/show and /api/tags answer in
// ~0 ms there, so a per-token delay stands in for Ollama's embedding cost.
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { loadConfig } from "../src/config/load-config.js";
import { startGateway } from "../src/gateway.js";
import type { Gateway } from "../src/gateway.js";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { ModelService } from "../src/gen/ollama/gateway/v1/model_pb.js";
import { createLogger } from "../src/observability/logger.js";
import { startSimulator } from "../src/simulator/simulator.js";
import { round, summarize } from "./stats.js";

const quick = process.argv.includes("--smoke");
const N = quick ? 50 : 2000;

async function gateway(simUrl: string, env: Record<string, string>): Promise<Gateway> {
  const config = loadConfig({ HOST: "127.0.0.1", PORT: "0", OLLAMA_URL: simUrl, LOG_LEVEL: "silent", ...env });
  return startGateway(config, createLogger("silent"));
}

async function timeEach(n: number, before: () => Promise<void>, call: () => Promise<unknown>): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    await before();
    const t0 = performance.now();
    await call();
    out.push(performance.now() - t0);
  }
  return out;
}

const sim = await startSimulator({ firstTokenMs: 2 });
const lines: string[] = [`# Cache benchmark ${new Date().toISOString()}${quick ? " (smoke)" : ""}`, ""];
try {
  // 1. GetModel / ListModels: hit vs miss latency.
  const gw = await gateway(sim.url, {});
  const models = createClient(ModelService, createGrpcTransport({ baseUrl: gw.url }));
  await models.getModel({ model: "llama3.2" });
  const flush = async (): Promise<void> => gw.cache.invalidate({ prefixes: ["show:", "tags:"] });
  const noop = async (): Promise<void> => undefined;
  const getMiss = summarize(await timeEach(N / 4, flush, () => models.getModel({ model: "llama3.2" })));
  const getHit = summarize(await timeEach(N, noop, () => models.getModel({ model: "llama3.2" })));
  const listMiss = summarize(await timeEach(N / 4, flush, () => models.listModels({})));
  const listHit = summarize(await timeEach(N, noop, () => models.listModels({})));
  lines.push("| call | miss p50 / p99 ms | hit p50 / p99 ms |", "|---|---|---|");
  lines.push(
    `| GetModel | ${round(getMiss.p50)} / ${round(getMiss.p99)} | ${round(getHit.p50)} / ${round(getHit.p99)} |`,
  );
  lines.push(
    `| ListModels | ${round(listMiss.p50)} / ${round(listMiss.p99)} | ${round(listHit.p50)} / ${round(listHit.p99)} |`,
    "",
  );

  // 2. Upstream calls saved on a repeated workload: GetModel and ListModels over 5 models.
  sim.reset();
  await flush();
  const names = ["llama3.2", "qwen3", "all-minilm", "nomic-embed-text", "llava"];
  for (let i = 0; i < N; i++) {
    if (i % 2 === 0) await models.getModel({ model: names[i % names.length]! });
    else await models.listModels({});
  }
  const upstream = (sim.stats.requests["/api/show"] ?? 0) + (sim.stats.requests["/api/tags"] ?? 0);
  lines.push(
    `Repeated metadata workload: ${N} calls (GetModel over 5 models, ListModels), ${upstream} upstream calls (/api/show + /api/tags) with the cache, ${N}+ without.`,
    "",
  );
  await gw.close();

  // 3. Embed throughput, 50% repeated inputs, cache on vs off (batching off to isolate the cache).
  const embedRun = async (cache: "on" | "off"): Promise<{ rps: number; upstream: number }> => {
    const g = await gateway(sim.url, { EMBED_CACHE: cache, EMBED_BATCH_WINDOW_MS: "0" });
    const client = createClient(InferenceService, createGrpcTransport({ baseUrl: g.url }));
    sim.reset();
    let next = 0;
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (next < N) {
          const i = next++;
          // Every other request repeats one of 100 common texts.
          const text = i % 2 === 0 ? `common text ${i % 100}` : `unique text ${i}`;
          await client.embed({ model: "all-minilm", inputs: [text] });
        }
      }),
    );
    const ms = performance.now() - t0;
    await g.close();
    return { rps: (N / ms) * 1000, upstream: sim.stats.requests["/api/embed"] ?? 0 };
  };
  const off = await embedRun("off");
  const on = await embedRun("on");
  lines.push("| Embed, 50% repeated inputs, concurrency 16 | calls/s | upstream /api/embed |", "|---|---|---|");
  lines.push(
    `| cache off | ${round(off.rps)} | ${off.upstream} |`,
    `| cache on | ${round(on.rps)} | ${on.upstream} |`,
    "",
  );
  lines.push(`Throughput ratio on/off: ${round(on.rps / off.rps)}`);
} finally {
  await sim.close();
}
process.stdout.write(`${lines.join("\n")}\n`);
