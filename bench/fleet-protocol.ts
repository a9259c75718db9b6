// The contract between bench/fleet.ts and its load-generator processes
// (bench/fleet-load.ts), and the seeded workload both sides of the fleet
// benchmark replay: one job in, one result out, over Node IPC.
import type { LoadReply } from "./load-protocol.js";

/** One request of the workload: when it is sent and what it asks for. */
export interface FleetRequest {
  /** Position in the schedule (0-based). */
  i: number;
  /** When to send it, ms after the side's start. */
  atMs: number;
  /** Model name as a client writes it (`llama3.2`). */
  model: string;
  /** Tokens to generate (`num_predict`). */
  numPredict: number;
  /** The prompt; distinct per request, as real traffic is. */
  prompt: string;
  /** Send `think: false` (thinking models only). */
  thinkOff: boolean;
}

/**
 * How a job's requests travel: through the gateway, or straight to the nodes — request i to node
 * i mod n (`round-robin`), or to the node with the fewest requests outstanding from this load
 * generator, ties in turn (`least-connections`, as nginx `least_conn` does).
 */
export type FleetTarget = "gateway" | "round-robin" | "least-connections";

/** What one load-generator process does for one side. */
export interface FleetJob {
  /** Label used in errors. */
  label: string;
  /** The gateway (connect gRPC client, HTTP/2) or the simulators directly (undici, HTTP/1.1, NDJSON). */
  target: FleetTarget;
  /** The gateway's URL, or every simulator's URL. */
  urls: string[];
  /** The requests, sorted by `atMs`. */
  schedule: FleetRequest[];
  /** Deadline of every request, ms after it was sent. */
  deadlineMs: number;
}

/**
 * How a request failed:
 * - `resource_exhausted`: the gateway refused it (QUEUE_FULL, DEADLINE_TOO_SHORT, too many calls);
 * - `timeout`: its deadline passed (gRPC DEADLINE_EXCEEDED, or the HTTP request aborted by the deadline);
 * - `unavailable`: gRPC UNAVAILABLE;
 * - `busy_503`: Ollama's 503 "server busy" (its pending-load queue was full);
 * - `other`: anything else (see the detail).
 */
export type FailureClass = "resource_exhausted" | "timeout" | "unavailable" | "busy_503" | "other";

/** Every failure class, in report order. */
export const FAILURE_CLASSES: readonly FailureClass[] = [
  "resource_exhausted",
  "timeout",
  "unavailable",
  "busy_503",
  "other",
];

/** What happened to one request. */
export interface RequestRecord {
  /** Its position in the schedule. */
  i: number;
  /** Its model. */
  model: string;
  /** When it was actually sent, ms after the side's start. */
  startMs: number;
  /** When it ended (success or failure), ms after the side's start. */
  endMs: number;
  /** True when the stream ended with its final message. */
  ok: boolean;
  /** Request sent → first message with text, ms (successful requests; -1 when none came). */
  ttftMs: number;
  /** Tokens the final message reported (eval_count / usage.completion_tokens). */
  tokens: number;
  /** Which node served it: the gateway's node name (from the final message), or `n<index>` of the simulator. */
  node?: string;
  /** Time it waited in the gateway's admission queue (Usage.queue_duration), ms. */
  gatewayQueueMs?: number;
  /** Time Ollama spent getting the model ready for it, loading or waiting to schedule (load_duration), ms. */
  upstreamLoadMs?: number;
  /** How it failed, when it did. */
  failure?: FailureClass;
  /** For a DEADLINE_TOO_SHORT refusal: the wait the gateway predicted (ErrorInfo metadata `expected_wait_ms`), ms. */
  expectedWaitMs?: number;
  /** The gRPC code and reason, or the HTTP status and message, shortened. */
  detail?: string;
}

/** What a load generator sends back for one job. */
export interface FleetLoadResult {
  /** One record per scheduled request, in schedule order. */
  records: RequestRecord[];
  /** First send to last settled request, ms. */
  elapsedMs: number;
  /** Largest delay between a request's scheduled and actual send time, ms. */
  maxSendLagMs: number;
  /** CPU time the load generator used, ms. */
  cpuMs: number;
  /** Its event-loop delay while the job ran, ms. */
  loopDelay: { p50: number; p99: number; max: number };
}

/** A message from the parent to a load generator. */
export interface FleetRunMessage {
  /** Always "run". */
  type: "run";
  /** The job. */
  job: FleetJob;
}

/** A message from the fleet load generator to the parent. */
export type FleetReplyMessage = LoadReply<FleetLoadResult>;

/** The workload's knobs. */
export interface WorkloadSpec {
  /** PRNG seed: the same seed gives the same schedule. */
  seed: number;
  /** Mean arrival rate, requests per second (Poisson arrivals). */
  ratePerSec: number;
  /** Arrivals happen in [0, durationMs). */
  durationMs: number;
  /** Models with their share of the requests (weights, need not sum to 1). */
  mix: readonly { model: string; weight: number }[];
  /** The mix from the middle of the window on, when demand moves; undefined = `mix` throughout. */
  shiftMix?: readonly { model: string; weight: number }[] | undefined;
  /** Smallest and largest `num_predict`, uniformly distributed. */
  minTokens: number;
  /** Largest `num_predict`. */
  maxTokens: number;
  /** Models that think unless told not to (they get `think: false`). */
  thinkingModels: readonly string[];
}

/** mulberry32: a small, fast, seeded PRNG; returns floats in [0, 1). */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const TOPICS = [
  "rivers",
  "compilers",
  "bread",
  "glaciers",
  "chess",
  "volcanoes",
  "bees",
  "lighthouses",
  "jazz",
  "orbits",
];

/**
 * The schedule both sides replay: open-loop Poisson arrivals at `ratePerSec`
 * over `durationMs`, each request's model drawn from `mix`, its length
 * uniform in [minTokens, maxTokens]. Bounded: at most 4 × the expected count
 * (a Poisson count that far above its mean does not happen in practice).
 */
export function buildSchedule(spec: WorkloadSpec): FleetRequest[] {
  const rnd = seededRandom(spec.seed);
  const cap = Math.max(16, Math.ceil((spec.ratePerSec * spec.durationMs) / 1000) * 4);
  const out: FleetRequest[] = [];
  let t = 0;
  for (let i = 0; i < cap; i++) {
    t += (-Math.log(1 - rnd()) / spec.ratePerSec) * 1000;
    if (t >= spec.durationMs) break;
    const mix = spec.shiftMix !== undefined && t >= spec.durationMs / 2 ? spec.shiftMix : spec.mix;
    let pick = rnd() * mix.reduce((a, m) => a + m.weight, 0);
    let model = mix[mix.length - 1]!.model;
    for (const m of mix) {
      if (pick < m.weight) {
        model = m.model;
        break;
      }
      pick -= m.weight;
    }
    const numPredict = spec.minTokens + Math.floor(rnd() * (spec.maxTokens - spec.minTokens + 1));
    const topic = TOPICS[Math.floor(rnd() * TOPICS.length)]!;
    out.push({
      i,
      atMs: Math.round(t * 1000) / 1000,
      model,
      numPredict,
      prompt: `Request ${i} (seed ${spec.seed}): write a few sentences about ${topic}.`,
      thinkOff: spec.thinkingModels.includes(model),
    });
  }
  return out;
}
