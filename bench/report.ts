// Turns the scenario results into the Markdown and JSON reports, with the
// targets of issue #5 judged next to the numbers (reported, never asserted).
import os from "node:os";
import type { ScenarioId } from "./cli.js";
import type { RunSummary } from "./measure.js";
import type { BatchingResult, LatencyRow, RelayRow, SlowStreamsResult, SoakResult } from "./scenarios.js";

/** Results by scenario (only those that ran). */
export interface ScenarioResults {
  /** Latency and throughput, Generate 1 token / Embed 1 input. */
  a?: LatencyRow[];
  /** Streaming relay. */
  b?: RelayRow[];
  /** 1,000 slow streams. */
  c?: SlowStreamsResult;
  /** Embed micro-batching. */
  d?: BatchingResult;
  /** Soak. */
  e?: SoakResult;
}

/** One target of issue #5 and how this run did. */
export interface TargetCheck {
  /** Scenario letter. */
  scenario: ScenarioId;
  /** What is wanted. */
  target: string;
  /** What was measured. */
  measured: string;
  /** Judged against the target; "n/a" for smoke runs or missing data. */
  status: "met" | "not met" | "n/a";
}

/** Facts about the machine and the run. */
export interface MachineFacts {
  node: string;
  cpus: number;
  cpuModel: string | undefined;
  memoryGiB: number;
  platform: string;
  loadAverageAtStart: number[];
  loadAverageAtEnd?: number[];
  startedAt: string;
  durationSeconds?: number;
  gitCommit: string;
  gitDirtyFiles: number;
  runtime: string;
  /** The load generator's gRPC client. */
  client: string;
  command: string;
  smoke: boolean;
}

/** Rules for the "no growth" judgement of the soak. */
export const SOAK_LIMITS = { rssMBPerMin: 1, fdsPerMin: 1 } as const;

/** Judges the targets of issue #5 against the results. */
export function checkTargets(r: ScenarioResults, smoke: boolean): TargetCheck[] {
  const out: TargetCheck[] = [];
  const judge = (
    scenario: ScenarioId,
    target: string,
    value: number | undefined,
    limit: number,
    measured: string,
    atLeast = false,
  ): void => {
    const ok = value !== undefined && Number.isFinite(value) ? (atLeast ? value >= limit : value <= limit) : undefined;
    out.push({ scenario, target, measured, status: smoke || ok === undefined ? "n/a" : ok ? "met" : "not met" });
  };
  for (const row of (r.a ?? []).filter((x) => x.concurrency === 16)) {
    const name = row.kind === "generate" ? "Generate 1 token" : "Embed 1 input";
    judge("a", `${name}, c=16: added latency p50 ≤ 0.5 ms`, row.addedP50Ms, 0.5, `${fmt(row.addedP50Ms)} ms`);
    judge("a", `${name}, c=16: added latency p99 ≤ 2 ms`, row.addedP99Ms, 2, `${fmt(row.addedP99Ms)} ms`);
  }
  const relay = r.b?.find((x) => x.streams === 64);
  if (relay) {
    judge(
      "b",
      "relay ≥ 70% of direct tokens/s at 64 streams",
      relay.tokensPerSecondRatio,
      0.7,
      `${pct(relay.tokensPerSecondRatio)}`,
      true,
    );
    judge("b", "added TTFT p50 ≤ 1 ms (64 streams)", relay.addedTtftP50Ms, 1, `${fmt(relay.addedTtftP50Ms)} ms`);
  }
  if (r.c) {
    const c = r.c;
    const valid = c.gatewayOpen.allOpenTogether;
    const note = valid ? "" : " (not all streams were open at once: not comparable)";
    judge(
      "c",
      `peak RSS ≤ 150 MB at ${c.streams} streams`,
      valid ? c.peakRssMB : undefined,
      150,
      `${fmt(c.peakRssMB)} MB${note}`,
    );
    judge(
      "c",
      "≤ 30 KB RSS per stream",
      valid ? c.rssPerStreamKB : undefined,
      30,
      `${fmt(c.rssPerStreamKB)} KB${note}`,
    );
  }
  if (r.e) {
    const e = r.e;
    const ok = e.rssSlopeMBPerMin <= SOAK_LIMITS.rssMBPerMin && e.fdSlopePerMin <= SOAK_LIMITS.fdsPerMin;
    out.push({
      scenario: "e",
      target: `no growth over the soak (second-half slope ≤ ${SOAK_LIMITS.rssMBPerMin} MB/min RSS and ≤ ${SOAK_LIMITS.fdsPerMin} fd/min)`,
      measured: `${fmt(e.rssSlopeMBPerMin)} MB/min, ${fmt(e.fdSlopePerMin)} fd/min over ${e.seconds} s`,
      status: smoke || !Number.isFinite(e.rssSlopeMBPerMin) ? "n/a" : ok ? "met" : "not met",
    });
  }
  return out;
}

function fmt(x: number | undefined): string {
  if (x === undefined || !Number.isFinite(x)) return "–";
  return String(x);
}

function pct(x: number | undefined): string {
  return x === undefined || !Number.isFinite(x) ? "–" : `${Math.round(x * 100)}%`;
}

function cpu(s: RunSummary): string {
  const c = s.cpuSeconds;
  return `${c.gateway ?? "–"} / ${c.simulator} / ${c.loadgen} / ${c.other}`;
}

function errs(...runs: RunSummary[]): string {
  return runs.map((r) => r.errors).join("/");
}

/** Notes derived from the numbers: is the load generator the bottleneck, was the machine busy with other work? */
export function derivedNotes(r: ScenarioResults): string[] {
  const notes: string[] = [];
  const runs: [string, RunSummary][] = [];
  for (const row of r.a ?? []) {
    const at = `(a) ${row.kind} c=${row.concurrency}`;
    runs.push([`${at} direct`, row.direct], [`${at} null server`, row.nullServer], [`${at} gateway`, row.gateway]);
  }
  for (const row of r.b ?? [])
    runs.push([`(b) ${row.streams} streams direct`, row.direct], [`(b) ${row.streams} streams gateway`, row.gateway]);
  if (r.c) runs.push(["(c) direct", r.c.direct], ["(c) gateway", r.c.gateway]);
  if (r.d) runs.push(["(d) direct", r.d.direct], ["(d) batching off", r.d.batchOff], ["(d) batching on", r.d.batchOn]);
  if (r.e) runs.push(["(e) soak", r.e.gateway]);

  const failed = runs.filter(([, s]) => s.errors > 0);
  if (failed.length > 0) {
    notes.push(
      `Requests failed in: ${failed.map(([n, s]) => `${n}: ${s.errors} (first: ${s.firstError ?? "?"})`).join("; ")}. The gateway logs are listed below.`,
    );
  }
  const saturated = runs.filter(([, s]) => s.loadgen.cpuUtil >= 0.85);
  if (saturated.length > 0) {
    notes.push(
      `Load generator near one full core (≥ 85%) in: ${saturated.map(([n, s]) => `${n} (${pct(s.loadgen.cpuUtil)})`).join(", ")}. ` +
        "There the client may limit throughput; ratios against direct still compare like with like, but absolute numbers are a floor.",
    );
  } else if (runs.length > 0) {
    const top = runs.reduce((a, b) => (b[1].loadgen.cpuUtil > a[1].loadgen.cpuUtil ? b : a));
    notes.push(
      `Load generators stayed below 85% of a core in every run (highest: ${top[0]}, ${pct(top[1].loadgen.cpuUtil)}).`,
    );
  }
  const laggy = runs.filter(([, s]) => s.loadgen.loopDelayP99Ms > 20);
  if (laggy.length > 0) {
    notes.push(
      `Load-generator event-loop delay p99 above 20 ms in: ${laggy.map(([n, s]) => `${n} (${s.loadgen.loopDelayP99Ms} ms)`).join(", ")}: ` +
        "its timestamps are late by up to that much there.",
    );
  }
  const busy = runs.filter(([, s]) => s.elapsedMs > 0 && s.cpuSeconds.other / (s.elapsedMs / 1000) > 0.25);
  if (busy.length > 0) {
    notes.push(
      `Other work used more than a quarter of a core during: ${busy.map(([n, s]) => `${n} (${(s.cpuSeconds.other / (s.elapsedMs / 1000)).toFixed(2)} cores)`).join(", ")}. ` +
        "Those numbers are noisier than the rest.",
    );
  }
  const cores = (seconds: number | undefined, s: RunSummary): number =>
    (seconds ?? 0) / Math.max(0.001, s.elapsedMs / 1000);
  const gwBusy = runs.filter(([, s]) => cores(s.cpuSeconds.gateway, s) >= 0.85);
  if (gwBusy.length > 0) {
    notes.push(
      `Gateway (or null server) process at ≥ 85% of one core in: ${gwBusy.map(([n, s]) => `${n} (${pct(cores(s.cpuSeconds.gateway, s))})`).join(", ")}: ` +
        "there it is the bottleneck (one event loop; GC threads can push this above 100%).",
    );
  }
  const simBusy = runs.filter(([, s]) => cores(s.cpuSeconds.simulator, s) >= 0.85);
  if (simBusy.length > 0) {
    notes.push(
      `Simulator at ≥ 85% of one core in: ${simBusy.map(([n, s]) => `${n} (${pct(cores(s.cpuSeconds.simulator, s))})`).join(", ")}: there the upstream is the bottleneck.`,
    );
  }
  const full = runs.filter(([, s]) => cores(s.cpuSeconds.machineBusy, s) >= 0.9 * os.cpus().length);
  if (full.length > 0) {
    notes.push(
      `The machine was ≥ 90% busy (all cores) in: ${full.map(([n]) => n).join(", ")}: there throughput compares the total CPU cost per request or token of all processes on each path, not the gateway alone.`,
    );
  }
  const warm = runs.filter(([, s]) => s.warmupErrors > 0);
  if (warm.length > 0)
    notes.push(`Warm-up requests failed in: ${warm.map(([n, s]) => `${n} (${s.warmupErrors})`).join(", ")}.`);
  return notes;
}

/** The Markdown report. */
export function renderMarkdown(
  machine: MachineFacts,
  r: ScenarioResults,
  targets: TargetCheck[],
  notes: string[],
  gateways: { name: string; env: Record<string, string>; nodeOptions: string[]; log: string }[],
): string {
  const L: string[] = [];
  L.push(
    `# Gateway benchmark, ${machine.startedAt}${machine.smoke ? " — SMOKE RUN (tiny counts: the numbers mean nothing)" : ""}`,
    "",
  );
  L.push(`Command: \`${machine.command}\``, "");
  L.push(
    `Machine: ${machine.cpus} × ${machine.cpuModel ?? "?"}, ${machine.memoryGiB} GiB, ${machine.platform}, Node ${machine.node}; ` +
      `load average at start ${machine.loadAverageAtStart.map((x) => x.toFixed(2)).join(" ")}` +
      (machine.loadAverageAtEnd ? `, at end ${machine.loadAverageAtEnd.map((x) => x.toFixed(2)).join(" ")}` : "") +
      `. Gateway: commit ${machine.gitCommit.slice(0, 10)}${machine.gitDirtyFiles > 0 ? ` + ${machine.gitDirtyFiles} changed files` : ""}, run as ${machine.runtime}. ` +
      `Load generator's gRPC client: ${machine.client}. ` +
      `Took ${machine.durationSeconds ?? "?"} s.`,
    "",
    'Load generator, simulator and gateway are separate processes sharing this machine\'s cores; the baseline ("direct") is the same load sent straight to the simulator over HTTP in the same run, so ratios matter more than absolute numbers. Latency percentiles are nearest-rank; "added" = gateway percentile − direct percentile.',
    "",
  );

  L.push("## Targets", "", "| | target | measured | status |", "|---|---|---|---|");
  for (const t of targets)
    L.push(
      `| ${t.scenario} | ${t.target} | ${t.measured} | ${t.status === "met" ? "met" : t.status === "not met" ? "**not met**" : "n/a"} |`,
    );
  if (targets.length === 0) L.push("| | (no scenario with a target ran) | | |");
  L.push("");

  if (r.a) {
    L.push(
      "## (a) Generate 1 token, Embed 1 input",
      "",
      "Relay gateway (embedding cache and micro-batching off, so every call goes upstream alone); a new Embed text per request. " +
        '"null" is bench/null-server.ts: connect-node on HTTP/2 answering from memory (no upstream), so null − direct ≈ what a stock gRPC server in Node costs. ' +
        "The gateway serves these calls on its own gRPC fast path (GRPC_FAST_PATH, on by default), so it can cost less than the null server while doing more.",
      "",
      "| kind | c | rps direct / null / gateway | ratio gw/direct | p50 ms direct / null / gateway | p99 ms direct / null / gateway | added p50 / p99 ms | server CPU µs/req null / gateway | client CPU µs/req direct / gateway | errors d/n/g |",
      "|---|---|---|---|---|---|---|---|---|---|",
    );
    for (const x of r.a) {
      L.push(
        `| ${x.kind} | ${x.concurrency} | ${x.direct.rps} / ${x.nullServer.rps} / ${x.gateway.rps} | ${x.throughputRatio} | ` +
          `${x.direct.latencyMs.p50} / ${x.nullServer.latencyMs.p50} / ${x.gateway.latencyMs.p50} | ${x.direct.latencyMs.p99} / ${x.nullServer.latencyMs.p99} / ${x.gateway.latencyMs.p99} | ` +
          `${x.addedP50Ms} / ${x.addedP99Ms} | ${x.nullServerCpuUsPerRequest} / ${x.gatewayCpuUsPerRequest} | ${x.clientCpuUsPerRequest.direct} / ${x.clientCpuUsPerRequest.gateway} | ${errs(x.direct, x.nullServer, x.gateway)} |`,
      );
    }
    L.push("");
    const compared = r.a.find((x) => x.comparisons !== undefined)?.comparisons;
    if (compared !== undefined) {
      L.push(
        "### (a) before and after (`--before-rev` / `--compare-env`)",
        "",
        `The same rows against other gateways, in ${compared[0]?.rounds ?? 0} rounds that each measure every gateway once, ` +
          "in the order A B C ... then C B A ... (A = the gateway above, measured again), so each variant runs " +
          "next to A. after ÷ before is the median of the rounds' ratios (the lowest and highest round beside " +
          "it); CPU per request is pooled over the rounds, latency the median of the rounds.",
        "",
        ...compared.map((c, i) => `- (${i + 1}) before: ${c.labels.before}; after: ${c.labels.after}`),
        "",
        "| kind | c | | gateway CPU µs/req before / after | after ÷ before (median) | rounds lowest – highest | p50 ms before / after | p99 ms before / after | errors |",
        "|---|---|---|---|---|---|---|---|---|",
      );
      for (const x of r.a) {
        for (const [i, b] of (x.comparisons ?? []).entries()) {
          L.push(
            `| ${x.kind} | ${x.concurrency} | (${i + 1}) | ${b.cpuUsPerRequest.before} / ${b.cpuUsPerRequest.after} | ${b.cpuRatio} | ${b.cpuRatioRange[0]} – ${b.cpuRatioRange[1]} | ` +
              `${b.p50Ms.before} / ${b.p50Ms.after} | ${b.p99Ms.before} / ${b.p99Ms.after} | ${b.errors} |`,
          );
        }
      }
      L.push("");
    }
  }

  if (r.b) {
    L.push(
      "## (b) Streaming relay (no upstream delay)",
      "",
      "Tokens counted from each stream's final message (eval_count / usage.completion_tokens); msgs/stream shows how many messages carried them (the gateway packs tokens into fewer messages when its client falls behind).",
      "",
      "| streams × tokens | direct tok/s | gateway tok/s | ratio | direct TTFT p50 / p99 ms | gateway TTFT p50 / p99 ms | added TTFT p50 / p99 ms | msgs/stream d/g | gateway CPU µs/token | errors d/g |",
      "|---|---|---|---|---|---|---|---|---|---|",
    );
    for (const x of r.b) {
      L.push(
        `| ${x.streams} × ${x.tokensPerStream} (${x.requests} streams) | ${x.direct.tokensPerSecond} | ${x.gateway.tokensPerSecond} | ${x.tokensPerSecondRatio} | ` +
          `${x.direct.ttftMs?.p50} / ${x.direct.ttftMs?.p99} | ${x.gateway.ttftMs?.p50} / ${x.gateway.ttftMs?.p99} | ${x.addedTtftP50Ms} / ${x.addedTtftP99Ms} | ` +
          `${x.direct.messagesPerRequest} / ${x.gateway.messagesPerRequest} | ${x.gatewayCpuUsPerToken} | ${errs(x.direct, x.gateway)} |`,
      );
    }
    L.push("");
  }

  if (r.c) {
    const c = r.c;
    L.push(
      `## (c) ${c.streams} concurrent slow streams (${c.tokensPerStream} tokens, ${c.tokenMs} ms apart)`,
      "",
      `Held by ${c.loadgens.processes} load-generator process(es), ${c.loadgens.gatewayConnectionsPerProcess} HTTP/2 connection(s) each towards the gateway (one HTTP/1.1 connection per stream direct). ` +
        `Gateway sampled every 100 ms from /proc/<pid>/status and /stat. UPSTREAM_CONNECTIONS raised to ${c.streams + 100} for this gateway: with the default (64) it would queue all but 64 streams.`,
      "",
      "| | value |",
      "|---|---|",
      `| all streams open at once (direct / gateway) | ${c.directOpen.allOpenTogether ? "yes" : "**no**"} / ${c.gatewayOpen.allOpenTogether ? "yes" : "**no**"} (first token on ${c.directOpen.gotFirstToken} / ${c.gatewayOpen.gotFirstToken}; simulator saw ${c.directOpen.simulatorMaxInFlight} / ${c.gatewayOpen.simulatorMaxInFlight} at once) |`,
      `| gateway RSS idle → peak | ${c.idleRssMB} → ${c.peakRssMB} MB (VmHWM ${c.hwmMB} MB) |`,
      `| RSS per stream (peak − idle) / ${c.streams} | ${c.rssPerStreamKB} KB |`,
      `| gateway CPU during the run | ${c.cpuSeconds} s over ${(c.gateway.elapsedMs / 1000).toFixed(1)} s |`,
      `| gateway descriptors idle → peak | ${c.fds.idle} → ${c.fds.peak} |`,
      `| stream duration p50 / p99, direct | ${c.streamMs.direct.p50} / ${c.streamMs.direct.p99} ms (ideal ≈ ${c.tokensPerStream * c.tokenMs} ms) |`,
      `| stream duration p50 / p99, gateway | ${c.streamMs.gateway.p50} / ${c.streamMs.gateway.p99} ms |`,
      `| TTFT p50 / p99, direct / gateway | ${c.direct.ttftMs?.p50} / ${c.direct.ttftMs?.p99} ms, ${c.gateway.ttftMs?.p50} / ${c.gateway.ttftMs?.p99} ms |`,
      `| load generator CPU (share of a core), loop delay p99, direct / gateway | ${pct(c.direct.loadgen.cpuUtil)}, ${c.direct.loadgen.loopDelayP99Ms} ms / ${pct(c.gateway.loadgen.cpuUtil)}, ${c.gateway.loadgen.loopDelayP99Ms} ms |`,
      `| CPU s gw/sim/lg/other, gateway run | ${cpu(c.gateway)} |`,
      `| errors direct / gateway | ${errs(c.direct, c.gateway)} |`,
      "",
    );
  }

  if (r.d) {
    const d = r.d;
    L.push(
      `## (d) Embed micro-batching (concurrency ${d.concurrency}, 1 input, a new text per request, EMBED_CACHE=off)`,
      "",
      "| | rps | ratio to direct | p50 / p99 ms | upstream requests per call | gateway CPU s | errors |",
      "|---|---|---|---|---|---|---|",
      `| direct | ${d.direct.rps} | 1 | ${d.direct.latencyMs.p50} / ${d.direct.latencyMs.p99} | 1 | – | ${d.direct.errors} |`,
      `| gateway, EMBED_BATCH_WINDOW_MS=0 | ${d.batchOff.rps} | ${d.ratioToDirect.off} | ${d.batchOff.latencyMs.p50} / ${d.batchOff.latencyMs.p99} | ${d.upstreamPerCall.off} | ${d.batchOff.cpuSeconds.gateway} | ${d.batchOff.errors} |`,
      `| gateway, EMBED_BATCH_WINDOW_MS=${d.windowMs} | ${d.batchOn.rps} | ${d.ratioToDirect.on} | ${d.batchOn.latencyMs.p50} / ${d.batchOn.latencyMs.p99} | ${d.upstreamPerCall.on} | ${d.batchOn.cpuSeconds.gateway} | ${d.batchOn.errors} |`,
      "",
      `Batching on / off: ×${d.onOverOff}. The simulator, like Ollama, runs embedding models with one slot, so the direct baseline is one request at a time upstream.`,
      "",
    );
  }

  if (r.e) {
    const e = r.e;
    const g = e.gateway;
    L.push(
      `## (e) Soak: ${e.seconds} s, concurrency ${e.concurrency}, Generate 20 tokens + Embed (cycle of 1,000 texts, cache TTL 1 s)`,
      "",
      `${g.requests} requests (${g.byKind?.generate?.requests ?? 0} Generate at p50 ${g.byKind?.generate?.latencyMs.p50 ?? "–"} ms, ${g.byKind?.embed?.requests ?? 0} Embed at p50 ${g.byKind?.embed?.latencyMs.p50 ?? "–"} ms), ${g.errors} errors. ` +
        `${e.samples} samples, every ${e.sampleSeconds} s. Slopes are least-squares fits over the second half.`,
      "",
      "| | first | last | max | slope, 2nd half |",
      "|---|---|---|---|---|",
      `| gateway RSS MB | ${e.rssMB.first} | ${e.rssMB.last} | ${e.rssMB.max} | ${e.rssSlopeMBPerMin} MB/min |`,
      `| gateway open fds | ${e.fds.first} | ${e.fds.last} | ${e.fds.max} | ${e.fdSlopePerMin} /min |`,
      `| gateway RSS floor (minimum of each tenth of the second half) | | | | ${e.rssFloorSlopeMBPerMin} MB/min |`,
      `| simulator RSS (control) | | | | ${e.simulatorRssSlopeMBPerMin} MB/min |`,
      "",
      `"No growth" is judged as second-half slopes ≤ ${SOAK_LIMITS.rssMBPerMin} MB/min and ≤ ${SOAK_LIMITS.fdsPerMin} fd/min: a heuristic (GC makes RSS saw-tooth); a slower leak needs a longer --soak-seconds.`,
      "",
    );
  }

  L.push("## Gateways started", "", "Environment set by the bench (everything else inherited or default):", "");
  for (const g of gateways) {
    const env = Object.entries(g.env)
      .map(([k, v]) => `${k}=${v}`)
      .join(" ");
    L.push(`- ${g.name}: ${env}${g.nodeOptions.length > 0 ? `; node ${g.nodeOptions.join(" ")}` : ""} (log: ${g.log})`);
  }
  L.push("");
  if (notes.length > 0) {
    L.push("## Notes", "");
    for (const n of notes) L.push(`- ${n}`);
    L.push("");
  }
  return L.join("\n");
}
