// A load generator process: runs one job against the gateway (gRPC client)
// or straight against the simulator (HTTP + NDJSON, the baseline), and
// prints one JSON result line. Run as a child of bench/main.ts so that its
// CPU is not the gateway's.
import { createClient } from "@connectrpc/connect";
import type { Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Pool } from "undici";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";

/** What one load generator process does. */
export interface LoadJob {
  /** Which side to load. */
  target: "gateway" | "direct";
  /** Base URL of that side. */
  url: string;
  /** Generate (streamed) or Embed. */
  kind: "generate" | "embed";
  /** Requests in flight at once. */
  concurrency: number;
  /** Requests to time (after warm-up). */
  requests: number;
  /** Untimed requests first. */
  warmup: number;
  /** Model name. */
  model: string;
  /** Tokens per Generate. */
  numPredict: number;
}

/** What it prints. */
export interface LoadResult {
  /** End-to-end latency per request, ms. */
  latencies: number[];
  /** Time to the first token per Generate, ms. */
  ttft: number[];
  /** Tokens received. */
  tokens: number;
  /** Failed requests. */
  errors: number;
  /** First error message, if any. */
  firstError?: string;
  /** Wall time of the timed part, ms. */
  elapsedMs: number;
}

type OneCall = () => Promise<{ ttft: number; tokens: number }>;

function gatewayCall(job: LoadJob, client: Client<typeof InferenceService>): OneCall {
  if (job.kind === "embed") {
    return async () => {
      const res = await client.embed({ model: job.model, inputs: ["the quick brown fox"] });
      if (res.embeddings.length !== 1) throw new Error("bad embed");
      return { ttft: 0, tokens: 0 };
    };
  }
  return async () => {
    const t0 = performance.now();
    let ttft = 0;
    let tokens = 0;
    for await (const m of client.generate({ model: job.model, prompt: "benchmark prompt", options: { numPredict: job.numPredict } })) {
      if (m.text !== "") {
        if (tokens === 0) ttft = performance.now() - t0;
        tokens++;
      }
    }
    return { ttft, tokens };
  };
}

function directCall(job: LoadJob, pool: Pool): OneCall {
  const path = job.kind === "embed" ? "/api/embed" : "/api/generate";
  const body =
    job.kind === "embed"
      ? JSON.stringify({ model: job.model, input: ["the quick brown fox"] })
      : JSON.stringify({ model: job.model, prompt: "benchmark prompt", options: { num_predict: job.numPredict }, stream: true });
  return async () => {
    const t0 = performance.now();
    const res = await pool.request({ method: "POST", path, body, headers: { "content-type": "application/json" } });
    if (res.statusCode !== 200) {
      await res.body.dump();
      throw new Error(`HTTP ${res.statusCode}`);
    }
    let ttft = 0;
    let tokens = 0;
    let rest = "";
    for await (const chunk of res.body) {
      const text = rest + (chunk as Buffer).toString("utf8");
      const lines = text.split("\n");
      rest = lines.pop() ?? "";
      for (const line of lines) {
        if (line === "") continue;
        const obj = JSON.parse(line) as { response?: string; embeddings?: unknown[] };
        if (obj.response) {
          if (tokens === 0) ttft = performance.now() - t0;
          tokens++;
        }
      }
    }
    if (rest.trim() !== "") JSON.parse(rest);
    return { ttft, tokens };
  };
}

async function run(job: LoadJob): Promise<LoadResult> {
  const pool = job.target === "direct" ? new Pool(job.url, { connections: job.concurrency, pipelining: 1 }) : undefined;
  const call =
    pool !== undefined
      ? directCall(job, pool)
      : gatewayCall(job, createClient(InferenceService, createGrpcTransport({ baseUrl: job.url })));
  const result: LoadResult = { latencies: [], ttft: [], tokens: 0, errors: 0, elapsedMs: 0 };

  // Warm-up runs one at a time first, so connections and the JIT are ready.
  for (let i = 0; i < job.warmup; i++) await call().catch(() => undefined);
  let started = 0;
  async function worker(): Promise<void> {
    while (started < job.requests) {
      started++;
      const t0 = performance.now();
      try {
        const r = await call();
        result.latencies.push(performance.now() - t0);
        if (job.kind === "generate") result.ttft.push(r.ttft);
        result.tokens += r.tokens;
      } catch (e) {
        result.errors++;
        result.firstError ??= e instanceof Error ? e.message : String(e);
      }
    }
  }
  const t0 = performance.now();
  await Promise.all(Array.from({ length: job.concurrency }, worker));
  result.elapsedMs = performance.now() - t0;
  await pool?.close();
  return result;
}

const job = JSON.parse(process.argv[2] ?? "{}") as LoadJob;
run(job)
  .then((r) => {
    process.stdout.write(JSON.stringify(r) + "\n");
    process.exit(0);
  })
  .catch((e: unknown) => {
    process.stderr.write(`load generator failed: ${e instanceof Error ? e.stack : String(e)}\n`);
    process.exit(1);
  });
