// The contract between bench/main.ts and its load-generator processes
// (bench/load-generator.ts): one job in, one result out, over Node IPC.

/** Which RPCs a job sends. `mixed` alternates Generate and Embed per worker. */
export type LoadMix = "generate" | "embed" | "mixed";

/** The two request kinds a result is broken down by. */
export type RequestKind = "generate" | "embed";

/** What one load generator process does for one job. */
export interface LoadJob {
  /** Label used in errors and logs. */
  label: string;
  /** Gateway (gRPC) or straight to the simulator (undici + NDJSON). */
  target: "gateway" | "direct";
  /** The gRPC client towards a gateway: minimal node:http2 (bench/grpc-h2-client.ts) or connect-node's. */
  client: "h2" | "connect";
  /** Base URL of that side. */
  url: string;
  /** Which RPCs to send. */
  mix: LoadMix;
  /** Model for Generate. */
  model: string;
  /** Model for Embed. */
  embedModel: string;
  /** Tokens per Generate (`num_predict`). */
  numPredict: number;
  /** Requests in flight at once (one worker each). */
  concurrency: number;
  /** Most timed requests, over all workers. */
  requests: number;
  /** No new timed request starts after this many ms. */
  durationMs: number;
  /** HTTP/2 connections to the gateway (requests spread round-robin); direct uses one HTTP/1.1 connection per worker. */
  connections: number;
  /** Embed inputs: one fixed text, a new text per request, or a cycle of `inputCycle` texts. */
  inputs: "same" | "distinct" | "cycle";
  /** Size of the cycle when `inputs` is "cycle". */
  inputCycle: number;
  /** Makes this job's texts differ from every other job's (so no cache answers across jobs). */
  inputSalt: string;
  /** Deadline of each call, ms. */
  callTimeoutMs: number;
}

/** Per request kind: what was measured. */
export interface KindResult {
  /** Successful requests. */
  requests: number;
  /** End-to-end latency per successful request, ms. */
  latencies: number[];
  /** Time to the first token per Generate, ms. */
  ttft: number[];
  /** Tokens generated, as the final message reports them (eval_count / usage.completion_tokens). */
  tokens: number;
  /** Response messages (gateway) or NDJSON lines (direct) parsed. */
  messages: number;
}

/** What a load generator sends back for one job. */
export interface LoadResult {
  /** Results per request kind that was sent. */
  kinds: Partial<Record<RequestKind, KindResult>>;
  /** Failed requests (any kind). */
  errors: number;
  /** First error message, if any. */
  firstError?: string;
  /** Wall time of the timed part, ms. */
  elapsedMs: number;
  /** Most streams that had their first token and were not finished, at one moment. */
  peakStreaming: number;
  /** Epoch ms (sub-ms precision) when the last stream got its first token. */
  lastFirstTokenAt?: number;
  /** Epoch ms when the first stream finished. */
  firstFinishAt?: number;
  /** CPU time the load generator used during the timed part, ms. */
  cpuMs: number;
  /** The load generator's own event-loop delay during the timed part, ms. */
  loopDelay: { p50: number; p99: number; max: number };
}

/** A message from the parent to a load generator. */
export interface RunMessage {
  /** Always "run". */
  type: "run";
  /** The job. */
  job: LoadJob;
}

/** What a load-generator process answers over IPC: ready once, then one result (or failure) per job. */
export type LoadReply<R> = { type: "ready" } | { type: "result"; result: R } | { type: "failed"; message: string };

/** A message from a load generator to the parent. */
export type ReplyMessage = LoadReply<LoadResult>;

/** Reasonable defaults for the fields most jobs leave alone. */
export const JOB_DEFAULTS = {
  model: "llama3.2",
  embedModel: "all-minilm",
  numPredict: 1,
  connections: 1,
  inputs: "distinct",
  inputCycle: 0,
  callTimeoutMs: 120_000,
  client: "h2",
} as const satisfies Partial<LoadJob>;
