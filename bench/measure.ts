// One measured load run: warm-up, then the timed jobs in load-generator
// processes while the CPU time of the gateway, the simulator and the whole
// machine is read before and after (and, optionally, sampled throughout).
import type { KindResult, LoadJob, LoadResult, RequestKind } from "./load-protocol.js";
import type { LoadGeneratorPool } from "./processes.js";
import { machineCpu, nodeTree, ProcSampler, readUsage } from "./proc-sampler.js";
import type { ProcSample } from "./proc-sampler.js";
import { round, summarize } from "./stats.js";

/** Latency and throughput of one request kind in one run. */
export interface KindSummary {
  /** Successful requests. */
  requests: number;
  /** Requests per second. */
  rps: number;
  /** Generated tokens per second (Generate). */
  tokensPerSecond: number;
  /** Response messages per request (the gateway may pack several tokens into one message). */
  messagesPerRequest: number;
  /** End-to-end latency, ms. */
  latencyMs: { p50: number; p90: number; p99: number; max: number };
  /** Time to first token, ms (Generate). */
  ttftMs?: { p50: number; p90: number; p99: number };
}

/** Where the CPU went during the timed part, seconds. */
export interface CpuSplit {
  /** The gateway process (and its Node children). */
  gateway?: number;
  /** The simulator. */
  simulator: number;
  /** All load-generator processes of the run. */
  loadgen: number;
  /** Busy time of the whole machine. */
  machineBusy: number;
  /** Machine busy time not explained by the three above (other work on the machine). */
  other: number;
}

/** One run, ready for the report. */
export interface RunSummary extends KindSummary {
  /** Label, e.g. "direct" or "gateway". */
  label: string;
  /** Failed requests. */
  errors: number;
  /** First failure. */
  firstError?: string;
  /** Failed warm-up requests (not counted in `errors`). */
  warmupErrors: number;
  /** Wall time of the timed part, ms. */
  elapsedMs: number;
  /** Per kind, when the run mixed Generate and Embed. */
  byKind?: Partial<Record<RequestKind, KindSummary>>;
  /** The load generators themselves: are they the bottleneck? */
  loadgen: {
    /** Processes. */
    processes: number;
    /** Largest CPU use of one process as a share of one core (1 = saturated). */
    cpuUtil: number;
    /** Largest event-loop delay p99 of a process, ms. */
    loopDelayP99Ms: number;
    /** Largest event-loop delay of a process, ms. */
    loopDelayMaxMs: number;
  };
  /** CPU seconds by process during the timed part. */
  cpuSeconds: CpuSplit;
}

/** What `measure` returns. */
export interface Measured {
  /** The report row. */
  summary: RunSummary;
  /** The raw merged result (for stream-level checks). */
  merged: LoadResult;
  /** Every load generator's own result. */
  results: LoadResult[];
  /** Gateway samples, when asked for. */
  gatewaySamples?: ProcSample[];
  /** Simulator samples, when asked for. */
  simSamples?: ProcSample[];
}

/** What to run and what to watch. */
export interface MeasureSpec {
  /** Row label. */
  label: string;
  /** One job per load-generator process, run at the same time. */
  jobs: LoadJob[];
  /** Untimed requests (one at a time) before the timed part. */
  warmup: number;
  /** Tokens per Generate during warm-up. */
  warmupNumPredict: number;
  /** Gateway pid, when the run goes through one. */
  gatewayPid?: number;
  /** Simulator pid. */
  simPid: number;
  /** Sample gateway and simulator every this many ms during the timed part (0 = do not). */
  sampleMs?: number;
}

function mergeKind(a: KindResult | undefined, b: KindResult): KindResult {
  if (!a) return { ...b, latencies: [...b.latencies], ttft: [...b.ttft] };
  return {
    requests: a.requests + b.requests,
    latencies: a.latencies.concat(b.latencies),
    ttft: a.ttft.concat(b.ttft),
    tokens: a.tokens + b.tokens,
    messages: a.messages + b.messages,
  };
}

/** Merges the results of the processes of one run. */
export function mergeResults(results: readonly LoadResult[]): LoadResult {
  const merged: LoadResult = {
    kinds: {},
    errors: 0,
    elapsedMs: 0,
    peakStreaming: 0,
    cpuMs: 0,
    loopDelay: { p50: 0, p99: 0, max: 0 },
  };
  for (const r of results) {
    for (const kind of ["generate", "embed"] as const) {
      const k = r.kinds[kind];
      if (k) merged.kinds[kind] = mergeKind(merged.kinds[kind], k);
    }
    merged.errors += r.errors;
    merged.firstError ??= r.firstError;
    merged.elapsedMs = Math.max(merged.elapsedMs, r.elapsedMs);
    merged.peakStreaming += r.peakStreaming;
    merged.cpuMs += r.cpuMs;
    merged.loopDelay = {
      p50: Math.max(merged.loopDelay.p50, r.loopDelay.p50),
      p99: Math.max(merged.loopDelay.p99, r.loopDelay.p99),
      max: Math.max(merged.loopDelay.max, r.loopDelay.max),
    };
    if (r.lastFirstTokenAt !== undefined)
      merged.lastFirstTokenAt = Math.max(merged.lastFirstTokenAt ?? 0, r.lastFirstTokenAt);
    if (r.firstFinishAt !== undefined)
      merged.firstFinishAt = Math.min(merged.firstFinishAt ?? Infinity, r.firstFinishAt);
  }
  return merged;
}

function kindSummary(k: KindResult, elapsedMs: number): KindSummary {
  const lat = summarize(k.latencies);
  const ttft = summarize(k.ttft);
  return {
    requests: k.requests,
    rps: round((k.requests / elapsedMs) * 1000),
    tokensPerSecond: round((k.tokens / elapsedMs) * 1000),
    messagesPerRequest: k.requests > 0 ? round(k.messages / k.requests) : 0,
    latencyMs: { p50: round(lat.p50), p90: round(lat.p90), p99: round(lat.p99), max: round(lat.max) },
    ttftMs: k.ttft.length > 0 ? { p50: round(ttft.p50), p90: round(ttft.p90), p99: round(ttft.p99) } : undefined,
  };
}

const EMPTY_KIND: KindResult = { requests: 0, latencies: [], ttft: [], tokens: 0, messages: 0 };

/** Runs warm-up and then the timed jobs; reads CPU before and after. */
export async function measure(pool: LoadGeneratorPool, spec: MeasureSpec): Promise<Measured> {
  const first = spec.jobs[0];
  if (!first) throw new Error("measure: no jobs");
  let warmupErrors = 0;
  if (spec.warmup > 0) {
    const warm = await pool.run([
      {
        ...first,
        label: `${spec.label} warm-up`,
        concurrency: 1,
        connections: 1,
        requests: spec.warmup,
        durationMs: 30_000,
        numPredict: spec.warmupNumPredict,
        inputSalt: `${first.inputSalt}-warm`,
      },
    ]);
    warmupErrors = warm.results[0]?.errors ?? 0;
  }

  await pool.prepare(spec.jobs.length);
  const gwPids = spec.gatewayPid !== undefined ? nodeTree(spec.gatewayPid) : [];
  const simPids = [spec.simPid];
  const gw0 = spec.gatewayPid !== undefined ? readUsage(gwPids).cpuSeconds : 0;
  const sim0 = readUsage(simPids).cpuSeconds;
  const m0 = machineCpu();
  const gwSampler =
    spec.sampleMs && spec.gatewayPid !== undefined
      ? new ProcSampler(spec.gatewayPid, spec.sampleMs).start()
      : undefined;
  const simSampler = spec.sampleMs ? new ProcSampler(spec.simPid, spec.sampleMs).start() : undefined;
  let results: LoadResult[];
  try {
    results = (await pool.run(spec.jobs)).results;
  } finally {
    gwSampler?.stop();
    simSampler?.stop();
  }
  const m1 = machineCpu();
  const gwCpu = spec.gatewayPid !== undefined ? readUsage(nodeTree(spec.gatewayPid)).cpuSeconds - gw0 : undefined;
  const simCpu = readUsage(simPids).cpuSeconds - sim0;

  const merged = mergeResults(results);
  const kinds = (["generate", "embed"] as const).filter((k) => merged.kinds[k] !== undefined || first.mix === k);
  const primary = kindSummary(merged.kinds[kinds[0] ?? "generate"] ?? EMPTY_KIND, merged.elapsedMs);
  const loadgenCpu = merged.cpuMs / 1000;
  const machineBusy = m1.busySeconds - m0.busySeconds;
  const summary: RunSummary = {
    label: spec.label,
    ...primary,
    errors: merged.errors,
    firstError: merged.firstError,
    warmupErrors,
    elapsedMs: round(merged.elapsedMs),
    loadgen: {
      processes: results.length,
      cpuUtil: round(Math.max(...results.map((r) => (r.elapsedMs > 0 ? r.cpuMs / r.elapsedMs : 0)))),
      loopDelayP99Ms: round(merged.loopDelay.p99),
      loopDelayMaxMs: round(merged.loopDelay.max),
    },
    cpuSeconds: {
      gateway: gwCpu === undefined ? undefined : round(gwCpu),
      simulator: round(simCpu),
      loadgen: round(loadgenCpu),
      machineBusy: round(machineBusy),
      other: round(Math.max(0, machineBusy - (gwCpu ?? 0) - simCpu - loadgenCpu)),
    },
  };
  if (first.mix === "mixed") {
    summary.byKind = {};
    for (const k of ["generate", "embed"] as const) {
      const kr = merged.kinds[k];
      if (kr) summary.byKind[k] = kindSummary(kr, merged.elapsedMs);
    }
    // The flat numbers of a mixed run describe all requests together.
    const all = mergeKind(
      merged.kinds.generate ? mergeKind(undefined, merged.kinds.generate) : undefined,
      merged.kinds.embed ?? EMPTY_KIND,
    );
    Object.assign(summary, kindSummary(all, merged.elapsedMs));
  }
  return { summary, merged, results, gatewaySamples: gwSampler?.samples, simSamples: simSampler?.samples };
}
