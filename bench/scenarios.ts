// The scenarios of issue #5. Each one measures the same load straight
// against the simulator (the baseline) and through the gateway, in the same
// run, and returns plain numbers for the report.
import type { BenchContext } from "./context.js";
import { MAIN_SIM_PARALLEL } from "./context.js";
import type { LoadJob } from "./load-protocol.js";
import { JOB_DEFAULTS } from "./load-protocol.js";
import { measure } from "./measure.js";
import type { Measured, RunSummary } from "./measure.js";
import { nodeTree, readUsage } from "./proc-sampler.js";
import type { ProcSample } from "./proc-sampler.js";
import type { Started } from "./processes.js";
import { simAdmin } from "./processes.js";
import { median, ratio, round, slope, summarize } from "./stats.js";

const MB = 1e6;

function log(line: string): void {
  process.stdout.write(`  ${line}\n`);
}

function job(
  ctx: BenchContext,
  target: Started,
  kind: "direct" | "gateway",
  fields: Partial<LoadJob> & Pick<LoadJob, "mix" | "concurrency">,
): LoadJob {
  return {
    ...JOB_DEFAULTS,
    label: kind,
    target: kind,
    url: target.url,
    requests: 1_000_000,
    durationMs: 60_000,
    inputSalt: ctx.salt(),
    client: ctx.opts.client,
    ...fields,
  };
}

// ---------------------------------------------------------------- (a)

/** (a) One row: a kind at one concurrency, direct vs gateway (and the bare gRPC stack). */
export interface LatencyRow {
  /** Generate with 1 token, or Embed with 1 input. */
  kind: "generate" | "embed";
  /** Requests in flight. */
  concurrency: number;
  /** Straight to the simulator. */
  direct: RunSummary;
  /** The null gRPC server: connect-node answering from memory (no upstream). */
  nullServer: RunSummary;
  /** Through the gateway. */
  gateway: RunSummary;
  /** Gateway p50 minus direct p50, ms. */
  addedP50Ms: number;
  /** Gateway p99 minus direct p99, ms. */
  addedP99Ms: number;
  /** Gateway requests/s over direct requests/s. */
  throughputRatio: number;
  /** Gateway CPU per request, µs. */
  gatewayCpuUsPerRequest: number;
  /** Null-server CPU per request, µs (the gRPC stack's own cost on the server side). */
  nullServerCpuUsPerRequest: number;
  /** Load-generator CPU per request, µs: undici direct, connect client towards the gateway. */
  clientCpuUsPerRequest: { direct: number; gateway: number };
  /** With `--before-rev` or `--compare-env`: gateways measured against each other in the same run. */
  comparisons?: BeforeComparison[];
}

/**
 * Two gateways measured close together: the relay gateway (A) and the others (B, C, ...) in the
 * order A B C ... C B A, so that drift of the shared machine during the row hits all alike; CPU
 * per request is pooled over the two runs of each. "before" and "after": an earlier commit's gateway and this checkout's
 * (`--before-rev`), or this checkout's plain and with extra settings (`--compare-env`).
 */
export interface BeforeComparison {
  /** What "before" and "after" are. */
  labels: { before: string; after: string };
  /** Gateway CPU per request, µs: the earlier commit's and this checkout's. */
  cpuUsPerRequest: { before: number; after: number };
  /** after / before, the median over the rounds of each round's ratio (1.05 = 5 % more CPU per call). */
  cpuRatio: number;
  /** The lowest and highest round's ratio: how far one round can be trusted. */
  cpuRatioRange: [number, number];
  /** Rounds measured (`--compare-rounds`). */
  rounds: number;
  /** Latency, the median over the rounds, ms. */
  p50Ms: { before: number; after: number };
  /** Latency, the median over the rounds, ms. */
  p99Ms: { before: number; after: number };
  /** Failed requests in the comparison runs (both gateways). */
  errors: number;
  /** Requests timed, all rounds of each. */
  requests: { before: number; after: number };
}

/** CPU per request, µs, pooled over several runs of one gateway. */
function pooledCpuUs(runs: readonly RunSummary[]): number {
  const cpu = runs.reduce((s, r) => s + (r.cpuSeconds.gateway ?? NaN), 0);
  const requests = runs.reduce((s, r) => s + r.requests, 0);
  return round((cpu * 1e6) / Math.max(1, requests));
}

function perRequestUs(seconds: number | undefined, s: RunSummary): number {
  return round(((seconds ?? NaN) * 1e6) / Math.max(1, s.requests));
}

/** Calls of each kind every gateway of scenario (a) serves before its rows are measured. */
const GATEWAY_WARMUP = 5_000;

/** (a) Generate 1 token and Embed 1 input at concurrency 1, 16, 64 (smoke: 1, 16). */
export async function scenarioA(ctx: BenchContext): Promise<LatencyRow[]> {
  const smoke = ctx.opts.smoke;
  const sim = await ctx.mainSim();
  const gw = await ctx.relayGateway();
  const nul = await ctx.nullServer();
  const others = await ctx.comparisonGateways();
  const rows: LatencyRow[] = [];
  try {
    // Each gateway first serves GATEWAY_WARMUP calls of each kind, so that the rows measure calls, not
    // V8 compiling the gateway's code (on its background threads, counted in the process's CPU): the
    // first row would otherwise carry the compiles, and a gateway with more code (telemetry on) more of them.
    if (!smoke) {
      for (const p of [gw, ...others.map((o) => o.gw)]) {
        for (const mix of ["generate", "embed"] as const) {
          await ctx.pool.run([
            job(ctx, p, "gateway", {
              mix,
              concurrency: 16,
              numPredict: 1,
              requests: GATEWAY_WARMUP,
              label: `${mix} warm-up`,
            }),
          ]);
        }
      }
    }
    for (const kind of ["generate", "embed"] as const) {
      for (const concurrency of smoke ? [1, 16] : [1, 16, 64]) {
        const fields = {
          mix: kind,
          concurrency,
          numPredict: 1,
          durationMs: smoke ? 400 : 4000,
          requests: smoke ? 200 : 1_000_000,
        };
        const warmup = smoke ? 5 : 200;
        // Direct first, then the null server, then the gateway: drift on the shared machine hits all three.
        const direct = await measure(ctx.pool, {
          label: "direct",
          jobs: [job(ctx, sim, "direct", fields)],
          warmup,
          warmupNumPredict: 1,
          simPid: sim.pid,
        });
        const nullRun = await measure(ctx.pool, {
          label: "null gRPC server",
          jobs: [job(ctx, nul, "gateway", fields)],
          warmup,
          warmupNumPredict: 1,
          simPid: sim.pid,
          gatewayPid: nul.pid,
        });
        const gateway = await measure(ctx.pool, {
          label: "gateway",
          jobs: [job(ctx, gw, "gateway", fields)],
          warmup,
          warmupNumPredict: 1,
          simPid: sim.pid,
          gatewayPid: gw.pid,
        });
        let comparisons: BeforeComparison[] | undefined;
        if (others.length > 0) {
          // R rounds, each measuring every gateway once, in the order A B C ... then ... C B A (A = the
          // gateway above), so that each variant is measured next to A and drift hits both alike. Each
          // round pairs a variant with the A of that round; the ratio is the median over the rounds.
          const rounds = ctx.opts.compareRounds;
          // Each gateway gets twice a row's time in all, whatever the number of rounds.
          const roundMs = Math.max(smoke ? 200 : 1000, Math.round((2 * fields.durationMs) / rounds));
          const measureOnce = async (label: string, p: typeof gw) =>
            (
              await measure(ctx.pool, {
                label,
                jobs: [job(ctx, p, "gateway", { ...fields, durationMs: roundMs })],
                warmup,
                warmupNumPredict: 1,
                simPid: sim.pid,
                gatewayPid: p.pid,
              })
            ).summary;
          const runsA: RunSummary[] = [];
          const runsO: RunSummary[][] = others.map(() => []);
          for (let r = 0; r < rounds; r++) {
            const order: (number | "A")[] = ["A", ...others.map((_, i) => i)];
            for (const g of r % 2 === 0 ? order : order.reverse()) {
              if (g === "A") runsA.push(await measureOnce("gateway", gw));
              else runsO[g]!.push(await measureOnce(`gateway ${others[g]!.role}`, others[g]!.gw));
            }
          }
          comparisons = others.map((o, i) => {
            const b = runsO[i]!;
            const [bef, aft] = o.role === "before" ? [b, runsA] : [runsA, b];
            const perRound = bef.map((x, k) => ratio(pooledCpuUs([aft[k]!]), pooledCpuUs([x])));
            const cpu = { before: pooledCpuUs(bef), after: pooledCpuUs(aft) };
            return {
              labels: { before: o.before, after: o.after },
              cpuUsPerRequest: cpu,
              cpuRatio: round(median(perRound)),
              cpuRatioRange: [round(Math.min(...perRound)), round(Math.max(...perRound))],
              rounds,
              p50Ms: {
                before: round(median(bef.map((x) => x.latencyMs.p50))),
                after: round(median(aft.map((x) => x.latencyMs.p50))),
              },
              p99Ms: {
                before: round(median(bef.map((x) => x.latencyMs.p99))),
                after: round(median(aft.map((x) => x.latencyMs.p99))),
              },
              errors: [...b, ...runsA].reduce((n, x) => n + x.errors, 0),
              requests: {
                before: bef.reduce((n, x) => n + x.requests, 0),
                after: aft.reduce((n, x) => n + x.requests, 0),
              },
            };
          });
        }
        const d = direct.summary;
        const n = nullRun.summary;
        const g = gateway.summary;
        const row: LatencyRow = {
          kind,
          concurrency,
          direct: d,
          nullServer: n,
          gateway: g,
          addedP50Ms: round(g.latencyMs.p50 - d.latencyMs.p50),
          addedP99Ms: round(g.latencyMs.p99 - d.latencyMs.p99),
          throughputRatio: round(ratio(g.rps, d.rps)),
          gatewayCpuUsPerRequest: perRequestUs(g.cpuSeconds.gateway, g),
          nullServerCpuUsPerRequest: perRequestUs(n.cpuSeconds.gateway, n),
          clientCpuUsPerRequest: {
            direct: perRequestUs(d.cpuSeconds.loadgen, d),
            gateway: perRequestUs(g.cpuSeconds.loadgen, g),
          },
          ...(comparisons !== undefined ? { comparisons } : {}),
        };
        rows.push(row);
        log(
          `(a) ${kind} c=${concurrency}: direct ${d.rps} rps p50 ${d.latencyMs.p50} ms, null server p50 ${n.latencyMs.p50} ms, ` +
            `gateway ${g.rps} rps p50 ${g.latencyMs.p50} ms; added p50 ${row.addedP50Ms} / p99 ${row.addedP99Ms} ms, x${row.throughputRatio}`,
        );
      }
    }
  } finally {
    await ctx.stop(nul);
  }
  return rows;
}

// ---------------------------------------------------------------- (b)

/** (b) One row: concurrent streams of many tokens, direct vs gateway. */
export interface RelayRow {
  /** Concurrent streams. */
  streams: number;
  /** Tokens per stream. */
  tokensPerStream: number;
  /** Streams timed. */
  requests: number;
  /** Straight to the simulator. */
  direct: RunSummary;
  /** Through the gateway. */
  gateway: RunSummary;
  /** Gateway tokens/s over direct tokens/s. */
  tokensPerSecondRatio: number;
  /** Gateway TTFT p50 minus direct TTFT p50, ms. */
  addedTtftP50Ms: number;
  /** Gateway TTFT p99 minus direct TTFT p99, ms. */
  addedTtftP99Ms: number;
  /** Gateway CPU per relayed token, µs. */
  gatewayCpuUsPerToken: number;
}

/** (b) Streaming relay with no upstream delay: 1 stream and 64 streams of 2,000 tokens. */
export async function scenarioB(ctx: BenchContext): Promise<RelayRow[]> {
  const smoke = ctx.opts.smoke;
  const sim = await ctx.mainSim();
  const gw = await ctx.relayGateway();
  const tokens = ctx.opts.relayTokens;
  const rows: RelayRow[] = [];
  for (const streams of [1, 64]) {
    const requests = streams === 1 ? (smoke ? 3 : 20) : smoke ? 64 : 128;
    const fields = {
      mix: "generate" as const,
      concurrency: streams,
      numPredict: tokens,
      requests,
      durationMs: smoke ? 10_000 : 60_000,
    };
    const warmup = smoke ? 2 : 10;
    const direct = await measure(ctx.pool, {
      label: "direct",
      jobs: [job(ctx, sim, "direct", fields)],
      warmup,
      warmupNumPredict: tokens,
      simPid: sim.pid,
    });
    const gateway = await measure(ctx.pool, {
      label: "gateway",
      jobs: [job(ctx, gw, "gateway", fields)],
      warmup,
      warmupNumPredict: tokens,
      simPid: sim.pid,
      gatewayPid: gw.pid,
    });
    const d = direct.summary;
    const g = gateway.summary;
    const gwTokens = g.tokensPerSecond * (g.elapsedMs / 1000);
    const row: RelayRow = {
      streams,
      tokensPerStream: tokens,
      requests,
      direct: d,
      gateway: g,
      tokensPerSecondRatio: round(ratio(g.tokensPerSecond, d.tokensPerSecond)),
      addedTtftP50Ms: round((g.ttftMs?.p50 ?? NaN) - (d.ttftMs?.p50 ?? NaN)),
      addedTtftP99Ms: round((g.ttftMs?.p99 ?? NaN) - (d.ttftMs?.p99 ?? NaN)),
      gatewayCpuUsPerToken: round(((g.cpuSeconds.gateway ?? 0) * 1e6) / Math.max(1, gwTokens)),
    };
    rows.push(row);
    log(
      `(b) ${streams} x ${tokens} tokens: direct ${d.tokensPerSecond} tok/s, gateway ${g.tokensPerSecond} tok/s (x${row.tokensPerSecondRatio}); ` +
        `TTFT p50 ${d.ttftMs?.p50} vs ${g.ttftMs?.p50} ms`,
    );
  }
  return rows;
}

// ---------------------------------------------------------------- (c)

/** (c) Whether every stream was open at one moment, and how that was seen. */
export interface OpenCheck {
  /** Streams asked for. */
  streams: number;
  /** Streams that got a first token. */
  gotFirstToken: number;
  /** True when the last first token came before the first stream ended (all were open together). */
  allOpenTogether: boolean;
  /** Simulator high-water mark of generations holding a slot during the run. */
  simulatorMaxInFlight: number;
}

/** (c) Resource use of many slow concurrent streams. */
export interface SlowStreamsResult {
  /** Concurrent streams. */
  streams: number;
  /** Tokens per stream. */
  tokensPerStream: number;
  /** Simulator delay between tokens, ms. */
  tokenMs: number;
  /** Load-generator processes (and HTTP/2 connections of each, towards the gateway). */
  loadgens: { processes: number; gatewayConnectionsPerProcess: number };
  /** Straight to the simulator. */
  direct: RunSummary;
  /** Through the gateway. */
  gateway: RunSummary;
  /** All streams open at once, direct. */
  directOpen: OpenCheck;
  /** All streams open at once, through the gateway. */
  gatewayOpen: OpenCheck;
  /** Gateway RSS when idle (after warm-up, before the run), MB. */
  idleRssMB: number;
  /** Largest sampled gateway RSS during the run, MB. */
  peakRssMB: number;
  /** Kernel high-water mark (VmHWM) of the gateway at the end, MB. */
  hwmMB: number;
  /** (peak − idle) / streams, KB. */
  rssPerStreamKB: number;
  /** Gateway CPU time during the run, s. */
  cpuSeconds: number;
  /** Gateway descriptors: idle and largest during the run. */
  fds: { idle: number; peak: number };
  /** Stream duration (ideal: tokens × tokenMs), ms. */
  streamMs: { direct: { p50: number; p99: number }; gateway: { p50: number; p99: number } };
  /** Samples of the gateway during the run (every 100 ms; RSS MB). */
  rssTimeline: { s: number; rssMB: number }[];
}

function openCheck(m: Measured, streams: number, simMax: number): OpenCheck {
  const r = m.merged;
  const got = r.kinds.generate?.ttft.length ?? 0;
  return {
    streams,
    gotFirstToken: got,
    allOpenTogether:
      got === streams &&
      r.lastFirstTokenAt !== undefined &&
      r.firstFinishAt !== undefined &&
      r.lastFirstTokenAt < r.firstFinishAt,
    simulatorMaxInFlight: simMax,
  };
}

async function simMaxInFlight(sim: Started, model: string): Promise<number> {
  const stats = (await simAdmin(sim.url, "GET", "/_sim/stats")) as { maxInFlight?: Record<string, number> };
  return stats.maxInFlight?.[model] ?? 0;
}

function split(total: number, parts: number): number[] {
  return Array.from({ length: parts }, (_, i) => Math.floor(total / parts) + (i < total % parts ? 1 : 0)).filter(
    (n) => n > 0,
  );
}

/** (c) 1,000 concurrent slow streams (`--streams`, `--stream-token-ms`; smoke: 100 × 20 tokens): gateway RSS, RSS per stream, CPU. */
export async function scenarioC(ctx: BenchContext): Promise<SlowStreamsResult> {
  const smoke = ctx.opts.smoke;
  const streams = smoke ? Math.min(100, ctx.opts.streams) : ctx.opts.streams;
  const tokens = smoke ? 20 : 200;
  const tokenMs = ctx.opts.streamTokenMs;
  const perConnection = 250; // the gateway allows 1,000 streams per HTTP/2 connection; stay well below
  const slots = Math.max(1024, streams);
  const sim = await ctx.startSimulator([
    "--load-ms",
    "0",
    "--token-ms",
    String(tokenMs),
    "--num-parallel",
    String(slots),
    "--max-loaded-models",
    "4",
  ]);
  // The default UPSTREAM_CONNECTIONS (64) would queue all but 64 streams inside the gateway.
  const gw = await ctx.startGateway("slow-streams", sim, Math.min(1024, slots), {
    UPSTREAM_CONNECTIONS: String(streams + 100),
    MAX_CONCURRENT_RPCS: String(Math.max(2048, streams + 100)),
    EMBED_CACHE: "off",
  });
  const model = "llama3.2:latest";
  try {
    const sizes = split(streams, ctx.opts.streamLoadgens);
    const fields = (n: number): Partial<LoadJob> & Pick<LoadJob, "mix" | "concurrency"> => ({
      mix: "generate",
      concurrency: n,
      requests: n,
      numPredict: tokens,
      durationMs: tokens * tokenMs * 4 + 30_000,
      connections: Math.ceil(n / perConnection),
    });

    await simAdmin(sim.url, "POST", "/_sim/reset");
    const direct = await measure(ctx.pool, {
      label: "direct",
      jobs: sizes.map((n) => job(ctx, sim, "direct", fields(n))),
      warmup: 10,
      warmupNumPredict: 1,
      simPid: sim.pid,
    });
    const directOpen = openCheck(direct, streams, await simMaxInFlight(sim, model));

    // Warm the gateway up, let it settle, then take its idle footprint.
    await ctx.pool.run([
      {
        ...job(ctx, gw, "gateway", { mix: "generate", concurrency: 1, requests: 20, numPredict: 1 }),
        label: "warm-up",
      },
    ]);
    await new Promise((r) => setTimeout(r, 1500));
    const pids = nodeTree(gw.pid);
    const idleSamples: number[] = [];
    let idleFds = 0;
    for (let i = 0; i < 5; i++) {
      const u = readUsage(pids);
      idleSamples.push(u.rssBytes);
      idleFds = u.fds;
      await new Promise((r) => setTimeout(r, 100));
    }
    const idleRss = summarize(idleSamples).p50;

    await simAdmin(sim.url, "POST", "/_sim/reset");
    const gateway = await measure(ctx.pool, {
      label: "gateway",
      jobs: sizes.map((n) => job(ctx, gw, "gateway", fields(n))),
      warmup: 0,
      warmupNumPredict: 1,
      simPid: sim.pid,
      gatewayPid: gw.pid,
      sampleMs: 100,
    });
    const gatewayOpen = openCheck(gateway, streams, await simMaxInFlight(sim, model));
    const samples = gateway.gatewaySamples ?? [];
    const peak = Math.max(0, ...samples.map((s) => s.rssBytes));
    const last = samples.at(-1);
    const lat = (m: Measured): { p50: number; p99: number } => {
      const s = summarize(m.merged.kinds.generate?.latencies ?? []);
      return { p50: round(s.p50), p99: round(s.p99) };
    };
    const result: SlowStreamsResult = {
      streams,
      tokensPerStream: tokens,
      tokenMs,
      loadgens: { processes: sizes.length, gatewayConnectionsPerProcess: Math.ceil((sizes[0] ?? 0) / perConnection) },
      direct: direct.summary,
      gateway: gateway.summary,
      directOpen,
      gatewayOpen,
      idleRssMB: round(idleRss / MB),
      peakRssMB: round(peak / MB),
      hwmMB: round((last?.hwmBytes ?? 0) / MB),
      rssPerStreamKB: round((peak - idleRss) / streams / 1000),
      cpuSeconds: gateway.summary.cpuSeconds.gateway ?? NaN,
      fds: { idle: idleFds, peak: Math.max(0, ...samples.map((s) => s.fds)) },
      streamMs: { direct: lat(direct), gateway: lat(gateway) },
      rssTimeline: thin(samples, 60).map((s) => ({ s: round(s.atMs / 1000), rssMB: round(s.rssBytes / MB) })),
    };
    log(
      `(c) ${streams} streams: idle ${result.idleRssMB} MB, peak ${result.peakRssMB} MB, ${result.rssPerStreamKB} KB/stream, ` +
        `CPU ${result.cpuSeconds} s; all open together: direct ${directOpen.allOpenTogether}, gateway ${gatewayOpen.allOpenTogether} ` +
        `(simulator saw ${gatewayOpen.simulatorMaxInFlight} at once)`,
    );
    return result;
  } finally {
    await ctx.stop(gw);
    await ctx.stop(sim);
  }
}

function thin<T>(xs: readonly T[], max: number): T[] {
  if (xs.length <= max) return [...xs];
  const step = xs.length / max;
  const out: T[] = Array.from({ length: max }, (_, i) => xs[Math.floor(i * step)] as T);
  return out.concat(xs.slice(-1));
}

// ---------------------------------------------------------------- (d)

/** (d) Embed throughput with micro-batching off and on. */
export interface BatchingResult {
  /** Requests in flight. */
  concurrency: number;
  /** Straight to the simulator. */
  direct: RunSummary;
  /** Gateway with EMBED_BATCH_WINDOW_MS=0. */
  batchOff: RunSummary;
  /** Gateway with EMBED_BATCH_WINDOW_MS=`windowMs`. */
  batchOn: RunSummary;
  /** Batch window of the "on" gateway, ms. */
  windowMs: number;
  /** Upstream /api/embed requests per gateway Embed call (1 = no batching). */
  upstreamPerCall: { off: number; on: number };
  /** Throughput over direct. */
  ratioToDirect: { off: number; on: number };
  /** On over off. */
  onOverOff: number;
}

async function embedRequests(sim: Started): Promise<number> {
  const stats = (await simAdmin(sim.url, "GET", "/_sim/stats")) as { requests?: Record<string, number> };
  return stats.requests?.["/api/embed"] ?? 0;
}

/** (d) Embed at concurrency 64 with distinct inputs and the cache off: direct, batching off, batching on. */
export async function scenarioD(ctx: BenchContext): Promise<BatchingResult> {
  const smoke = ctx.opts.smoke;
  const windowMs = 2;
  const sim = await ctx.mainSim();
  const off = await ctx.relayGateway();
  const on = await ctx.startGateway("embed-batching", sim, MAIN_SIM_PARALLEL, {
    EMBED_CACHE: "off",
    EMBED_BATCH_WINDOW_MS: String(windowMs),
  });
  try {
    const concurrency = 64;
    const fields = {
      mix: "embed" as const,
      concurrency,
      inputs: "distinct" as const,
      durationMs: smoke ? 400 : 5000,
      requests: smoke ? 300 : 1_000_000,
    };
    const warmup = smoke ? 5 : 200;
    const run = async (
      label: string,
      target: Started,
      gateway: boolean,
    ): Promise<{ m: Measured; upstream: number }> => {
      const before = await embedRequests(sim);
      const m = await measure(ctx.pool, {
        label,
        jobs: [job(ctx, target, gateway ? "gateway" : "direct", fields)],
        warmup,
        warmupNumPredict: 1,
        simPid: sim.pid,
        gatewayPid: gateway ? target.pid : undefined,
      });
      return { m, upstream: (await embedRequests(sim)) - before - warmup };
    };
    const direct = await run("direct", sim, false);
    const batchOff = await run("gateway, batching off", off, true);
    const batchOn = await run(`gateway, batching ${windowMs} ms`, on, true);
    const calls = (x: { m: Measured }): number => x.m.summary.requests + x.m.summary.errors;
    const result: BatchingResult = {
      concurrency,
      direct: direct.m.summary,
      batchOff: batchOff.m.summary,
      batchOn: batchOn.m.summary,
      windowMs,
      upstreamPerCall: {
        off: round(batchOff.upstream / Math.max(1, calls(batchOff))),
        on: round(batchOn.upstream / Math.max(1, calls(batchOn))),
      },
      ratioToDirect: {
        off: round(ratio(batchOff.m.summary.rps, direct.m.summary.rps)),
        on: round(ratio(batchOn.m.summary.rps, direct.m.summary.rps)),
      },
      onOverOff: round(ratio(batchOn.m.summary.rps, batchOff.m.summary.rps)),
    };
    log(
      `(d) embed c=${concurrency}: direct ${result.direct.rps} rps, batching off ${result.batchOff.rps} rps, on ${result.batchOn.rps} rps ` +
        `(${result.upstreamPerCall.on} upstream requests per call)`,
    );
    return result;
  } finally {
    await ctx.stop(on);
  }
}

// ---------------------------------------------------------------- (e)

/** First, last and largest value of a series. */
export interface Extent {
  /** At the first sample. */
  first: number;
  /** At the last sample. */
  last: number;
  /** Largest. */
  max: number;
}

/** (e) The soak: is anything growing? */
export interface SoakResult {
  /** Planned length, s. */
  seconds: number;
  /** Requests in flight (mixed Generate 20 tokens + Embed). */
  concurrency: number;
  /** The load through the gateway. */
  gateway: RunSummary;
  /** Sampling interval, s. */
  sampleSeconds: number;
  /** Samples taken. */
  samples: number;
  /** Gateway RSS, MB. */
  rssMB: Extent;
  /** Gateway open descriptors. */
  fds: Extent;
  /** Least-squares slope over the second half: MB per minute. */
  rssSlopeMBPerMin: number;
  /** Least-squares slope over the second half: descriptors per minute. */
  fdSlopePerMin: number;
  /** Slope of the RSS floor: the minimum of each tenth of the second half, fitted (less sensitive to GC saw-tooth), MB/min. */
  rssFloorSlopeMBPerMin: number;
  /** The simulator's RSS slope over the same window, MB/min (a control: it is not the subject). */
  simulatorRssSlopeMBPerMin: number;
  /** The samples (thinned to at most 120). */
  timeline: { s: number; rssMB: number; fds: number; cpuS: number }[];
}

function extent(xs: readonly number[]): Extent {
  return { first: xs[0] ?? NaN, last: xs.at(-1) ?? NaN, max: xs.length ? Math.max(...xs) : NaN };
}

function secondHalfFloorSlopePerMin(
  samples: readonly ProcSample[],
  value: (s: ProcSample) => number,
  parts = 10,
): number {
  const end = samples.at(-1)?.atMs ?? 0;
  const half = samples.filter((s) => s.atMs >= end / 2);
  const width = end / 2 / parts;
  const points: { x: number; y: number }[] = [];
  for (let i = 0; i < parts; i++) {
    const part = half.filter(
      (s) => s.atMs >= end / 2 + i * width && (i === parts - 1 || s.atMs < end / 2 + (i + 1) * width),
    );
    if (part.length === 0) continue;
    const low = part.reduce((a, b) => (value(b) < value(a) ? b : a));
    points.push({ x: low.atMs / 60_000, y: value(low) });
  }
  return slope(points);
}

function secondHalfSlopePerMin(samples: readonly ProcSample[], value: (s: ProcSample) => number): number {
  const end = samples.at(-1)?.atMs ?? 0;
  const half = samples.filter((s) => s.atMs >= end / 2).map((s) => ({ x: s.atMs / 60_000, y: value(s) }));
  return slope(half);
}

/**
 * (e) Mixed load (Generate 20 tokens + Embed, concurrency 8) for
 * `--soak-seconds` against a gateway with default settings, except a 1 s
 * embedding-cache TTL over a cycle of 1,000 texts: the cache stays small
 * yet keeps missing, so the upstream Embed path and the batcher stay busy.
 */
export async function scenarioE(ctx: BenchContext): Promise<SoakResult> {
  const seconds = ctx.opts.soakSeconds;
  const sim = await ctx.mainSim();
  const gw = await ctx.startGateway("soak", sim, MAIN_SIM_PARALLEL, { EMBED_CACHE_TTL_MS: "1000" });
  try {
    const concurrency = 8;
    const sampleMs = Math.max(500, Math.min(5000, Math.round((seconds * 1000) / 100)));
    const m = await measure(ctx.pool, {
      label: "gateway",
      jobs: [
        job(ctx, gw, "gateway", {
          mix: "mixed",
          concurrency,
          numPredict: 20,
          inputs: "cycle",
          inputCycle: 1000,
          durationMs: seconds * 1000,
          requests: 100_000_000,
        }),
      ],
      warmup: 20,
      warmupNumPredict: 20,
      simPid: sim.pid,
      gatewayPid: gw.pid,
      sampleMs,
    });
    const samples = m.gatewaySamples ?? [];
    const result: SoakResult = {
      seconds,
      concurrency,
      gateway: m.summary,
      sampleSeconds: sampleMs / 1000,
      samples: samples.length,
      rssMB: mapExtent(extent(samples.map((s) => s.rssBytes)), (x) => round(x / MB)),
      fds: extent(samples.map((s) => s.fds)),
      rssSlopeMBPerMin: round(secondHalfSlopePerMin(samples, (s) => s.rssBytes / MB)),
      fdSlopePerMin: round(secondHalfSlopePerMin(samples, (s) => s.fds)),
      rssFloorSlopeMBPerMin: round(secondHalfFloorSlopePerMin(samples, (s) => s.rssBytes / MB)),
      simulatorRssSlopeMBPerMin: round(secondHalfSlopePerMin(m.simSamples ?? [], (s) => s.rssBytes / MB)),
      timeline: thin(samples, 120).map((s) => ({
        s: round(s.atMs / 1000),
        rssMB: round(s.rssBytes / MB),
        fds: s.fds,
        cpuS: round(s.cpuSeconds),
      })),
    };
    log(
      `(e) soak ${seconds} s: ${m.summary.requests} requests, ${m.summary.errors} errors; RSS ${result.rssMB.first} → ${result.rssMB.last} MB ` +
        `(max ${result.rssMB.max}; ${result.rssSlopeMBPerMin} MB/min over the second half); fds ${result.fds.first} → ${result.fds.last} ` +
        `(${result.fdSlopePerMin}/min)`,
    );
    return result;
  } finally {
    await ctx.stop(gw);
  }
}

function mapExtent(e: Extent, f: (x: number) => number): Extent {
  return { first: f(e.first), last: f(e.last), max: f(e.max) };
}
