// A load generator process, started by bench/main.ts (never inside the
// gateway): it receives jobs over IPC, runs each against the gateway (gRPC over
// HTTP/2: bench/grpc-h2-client.ts, or connect-node's client) or straight against the simulator (undici over
// HTTP/1.1, NDJSON parsed line by line, the baseline), and sends back one
// LoadResult per job. Both sides parse every message they receive.
import { monitorEventLoopDelay } from "node:perf_hooks";
import { createClient } from "@connectrpc/connect";
import type { Client } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { Pool } from "undici";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  EmbedRequestSchema,
  EmbedResponseSchema,
  GenerateRequestSchema,
  GenerateResponseSchema,
  InferenceService,
} from "../src/gen/ollama/gateway/v1/inference_pb.js";
import type { GenerateResponse } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { createGrpcH2Client } from "./grpc-h2-client.js";
import { ndjson } from "./ndjson-lines.js";
import type { KindResult, LoadJob, LoadResult, ReplyMessage, RequestKind, RunMessage } from "./load-protocol.js";

/** What one call reports besides its latency. */
interface CallOutcome {
  ttft: number;
  tokens: number;
  messages: number;
}

/** Follows how many streams are between their first token and their end. */
class StreamTracker {
  streaming = 0;
  peak = 0;
  lastFirstTokenAt: number | undefined;
  firstFinishAt: number | undefined;
  firstToken(): void {
    this.streaming++;
    if (this.streaming > this.peak) this.peak = this.streaming;
    this.lastFirstTokenAt = performance.timeOrigin + performance.now();
  }
  finish(hadFirstToken: boolean): void {
    if (!hadFirstToken) return;
    this.streaming--;
    this.firstFinishAt ??= performance.timeOrigin + performance.now();
  }
}

/** One target: how to send a request of each kind, and how to let go of connections. */
interface Side {
  call(kind: RequestKind, seq: number, numPredict: number): Promise<CallOutcome>;
  close(): Promise<void>;
}

const PROMPT = "benchmark prompt";

/** The Embed text for request number `seq`. */
function inputText(job: LoadJob, seq: number): string {
  if (job.inputs === "same") return "the quick brown fox";
  const n = job.inputs === "cycle" ? seq % Math.max(1, job.inputCycle) : seq;
  return `bench ${job.inputSalt} text ${n} about a quick brown fox`;
}

/** Counts one Generate stream's messages as they arrive, whichever client received them. */
function generateTally(tracker: StreamTracker): {
  add(m: GenerateResponse): void;
  end(): void;
  outcome(): CallOutcome;
} {
  const t0 = performance.now();
  let ttft = -1;
  let tokens = 0;
  let messages = 0;
  let done = false;
  return {
    add(m) {
      messages++;
      if (ttft < 0 && m.text !== "") {
        ttft = performance.now() - t0;
        tracker.firstToken();
      }
      if (m.done) {
        done = true;
        tokens = m.usage?.completionTokens ?? 0;
      }
    },
    end: () => tracker.finish(ttft >= 0),
    outcome() {
      if (!done) throw new Error("Generate: stream ended without its final message");
      return { ttft, tokens, messages };
    },
  };
}

/** The gateway side with bench/grpc-h2-client.ts: every message decoded, as connect's client does. */
function gatewayH2Side(job: LoadJob, tracker: StreamTracker): Side {
  const clients = Array.from({ length: Math.max(1, job.connections) }, () => createGrpcH2Client(job.url));
  let next = 0;
  return {
    async call(kind, seq, numPredict) {
      const client = clients[next++ % clients.length]!;
      if (kind === "embed") {
        let vectors = -1;
        const req = toBinary(
          EmbedRequestSchema,
          create(EmbedRequestSchema, { model: job.embedModel, inputs: [inputText(job, seq)] }),
        );
        await client.call(EMBED_PATH, req, job.callTimeoutMs, (payload) => {
          const res = fromBinary(EmbedResponseSchema, payload);
          vectors = res.embeddings.length === 1 && res.embeddings[0]!.values.length > 0 ? 1 : 0;
        });
        if (vectors !== 1) throw new Error("Embed: expected one vector");
        return { ttft: 0, tokens: 0, messages: 1 };
      }
      const tally = generateTally(tracker);
      const req = toBinary(
        GenerateRequestSchema,
        create(GenerateRequestSchema, { model: job.model, prompt: PROMPT, options: { numPredict } }),
      );
      try {
        await client.call(GENERATE_PATH, req, job.callTimeoutMs, (payload) =>
          tally.add(fromBinary(GenerateResponseSchema, payload)),
        );
      } finally {
        tally.end();
      }
      return tally.outcome();
    },
    close() {
      for (const c of clients) c.close();
      return Promise.resolve();
    },
  };
}

const GENERATE_PATH = `/${InferenceService.typeName}/${InferenceService.method.generate.name}`;
const EMBED_PATH = `/${InferenceService.typeName}/${InferenceService.method.embed.name}`;

/** The gateway side with connect-node's gRPC client. */
function gatewayConnectSide(job: LoadJob, tracker: StreamTracker): Side {
  const managers = Array.from({ length: Math.max(1, job.connections) }, () => new Http2SessionManager(job.url));
  const clients: Client<typeof InferenceService>[] = managers.map((sessionManager) =>
    createClient(InferenceService, createGrpcTransport({ baseUrl: job.url, sessionManager })),
  );
  let next = 0;
  return {
    async call(kind, seq, numPredict) {
      const client = clients[next++ % clients.length]!;
      const opts = { timeoutMs: job.callTimeoutMs };
      if (kind === "embed") {
        const res = await client.embed({ model: job.embedModel, inputs: [inputText(job, seq)] }, opts);
        if (res.embeddings.length !== 1 || res.embeddings[0]!.values.length === 0)
          throw new Error("Embed: expected one vector");
        return { ttft: 0, tokens: 0, messages: 1 };
      }
      const tally = generateTally(tracker);
      try {
        for await (const m of client.generate({ model: job.model, prompt: PROMPT, options: { numPredict } }, opts))
          tally.add(m);
      } finally {
        tally.end();
      }
      return tally.outcome();
    },
    close() {
      for (const m of managers) m.abort();
      return Promise.resolve();
    },
  };
}

function directSide(job: LoadJob, tracker: StreamTracker): Side {
  const pool = new Pool(job.url, { connections: Math.max(1, job.concurrency), pipelining: 1 });
  const headers = { "content-type": "application/json" };
  return {
    async call(kind, seq, numPredict) {
      const signal = AbortSignal.timeout(job.callTimeoutMs);
      if (kind === "embed") {
        const body = JSON.stringify({ model: job.embedModel, input: [inputText(job, seq)] });
        const res = await pool.request({ method: "POST", path: "/api/embed", body, headers, signal });
        const text = await res.body.text();
        if (res.statusCode !== 200) throw new Error(`HTTP ${res.statusCode}: ${text.slice(0, 200)}`);
        const obj = JSON.parse(text) as { embeddings?: unknown[][] };
        if (obj.embeddings?.length !== 1 || obj.embeddings[0]!.length === 0)
          throw new Error("embed: expected one vector");
        return { ttft: 0, tokens: 0, messages: 1 };
      }
      const t0 = performance.now();
      const body = JSON.stringify({
        model: job.model,
        prompt: PROMPT,
        options: { num_predict: numPredict },
        stream: true,
      });
      const res = await pool.request({ method: "POST", path: "/api/generate", body, headers, signal });
      if (res.statusCode !== 200) {
        const text = await res.body.text();
        throw new Error(`HTTP ${res.statusCode}: ${text.slice(0, 200)}`);
      }
      let ttft = -1;
      let tokens = 0;
      let messages = 0;
      let done = false;
      try {
        for await (const obj of ndjson(res.body as AsyncIterable<Buffer>)) {
          messages++;
          if (typeof obj["error"] === "string") throw new Error(`stream error: ${obj["error"]}`);
          if (ttft < 0 && typeof obj["response"] === "string" && obj["response"] !== "") {
            ttft = performance.now() - t0;
            tracker.firstToken();
          }
          if (obj["done"] === true) {
            done = true;
            tokens = typeof obj["eval_count"] === "number" ? obj["eval_count"] : 0;
          }
        }
      } finally {
        tracker.finish(ttft >= 0);
        if (!res.body.destroyed) res.body.destroy();
      }
      if (!done) throw new Error("generate: stream ended without its final line");
      return { ttft, tokens, messages };
    },
    close: () => pool.close(),
  };
}

function kindOf(job: LoadJob, seq: number): RequestKind {
  if (job.mix === "mixed") return seq % 2 === 0 ? "generate" : "embed";
  return job.mix;
}

function emptyKind(): KindResult {
  return { requests: 0, latencies: [], ttft: [], tokens: 0, messages: 0 };
}

async function run(job: LoadJob): Promise<LoadResult> {
  const tracker = new StreamTracker();
  const side =
    job.target === "direct"
      ? directSide(job, tracker)
      : job.client === "h2"
        ? gatewayH2Side(job, tracker)
        : gatewayConnectSide(job, tracker);
  const result: LoadResult = {
    kinds: {},
    errors: 0,
    elapsedMs: 0,
    peakStreaming: 0,
    cpuMs: 0,
    loopDelay: { p50: 0, p99: 0, max: 0 },
  };
  try {
    const loop = monitorEventLoopDelay({ resolution: 5 });
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    const deadline = t0 + job.durationMs;
    let started = 0;
    const worker = async (): Promise<void> => {
      while (started < job.requests && performance.now() < deadline) {
        const seq = started++;
        const kind = kindOf(job, seq);
        const t = performance.now();
        try {
          const r = await side.call(kind, seq, job.numPredict);
          const k = (result.kinds[kind] ??= emptyKind());
          k.requests++;
          k.latencies.push(performance.now() - t);
          if (kind === "generate") k.ttft.push(r.ttft);
          k.tokens += r.tokens;
          k.messages += r.messages;
        } catch (e) {
          result.errors++;
          result.firstError ??= `${kind}: ${e instanceof Error ? e.message : String(e)}`;
        }
      }
    };
    loop.enable();
    await Promise.all(Array.from({ length: job.concurrency }, worker));
    loop.disable();
    result.elapsedMs = performance.now() - t0;
    const cpu = process.cpuUsage(cpu0);
    result.cpuMs = (cpu.user + cpu.system) / 1000;
    result.loopDelay = { p50: loop.percentile(50) / 1e6, p99: loop.percentile(99) / 1e6, max: loop.max / 1e6 };
    result.peakStreaming = tracker.peak;
    result.lastFirstTokenAt = tracker.lastFirstTokenAt;
    result.firstFinishAt = tracker.firstFinishAt;
    return result;
  } finally {
    await side.close();
  }
}

function reply(msg: ReplyMessage): void {
  process.send?.(msg);
}

if (process.send === undefined) {
  process.stderr.write("bench/load-generator.ts is started by bench/main.ts (it needs an IPC channel)\n");
  process.exit(2);
}
// The parent went away: nothing left to report to.
process.on("disconnect", () => process.exit(0));
process.on("message", (raw: unknown) => {
  const msg = raw as RunMessage;
  if (msg.type !== "run") return;
  void run(msg.job).then(
    (result) => reply({ type: "result", result }),
    (e: unknown) =>
      reply({
        type: "failed",
        message: `${msg.job.label}: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`,
      }),
  );
});
reply({ type: "ready" });
