// `npm run bench`: what the gateway adds, measured against a baseline in the
// same run (the same load sent straight to the simulator over HTTP). The
// simulator, the gateway and each load generator are separate processes.
// `npm run bench -- --smoke` runs every scenario briefly so CI keeps the
// harness working; it asserts nothing about speed.
import { mkdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import type { LoadJob, LoadResult } from "./load-generator.js";
import { runLoad, startGatewayProcess, startSimulatorProcess } from "./processes.js";
import { round, summarize } from "./stats.js";

const smoke = process.argv.includes("--smoke");
const outDir = "bench-results";
mkdirSync(outDir, { recursive: true });
const stamp = new Date().toISOString().replace(/[:.]/g, "-");

/** One row of the report: the same job straight to the simulator and through the gateway. */
interface Comparison {
  scenario: string;
  concurrency: number;
  direct: ReturnType<typeof describe>;
  gateway: ReturnType<typeof describe>;
  addedP50Ms: number;
  addedP99Ms: number;
  throughputRatio: number;
  addedTtftP50Ms?: number;
  tokensPerSecondRatio?: number;
}

function describe(r: LoadResult) {
  const lat = summarize(r.latencies);
  const ttft = summarize(r.ttft);
  return {
    requests: lat.n,
    errors: r.errors,
    firstError: r.firstError,
    rps: round((lat.n / r.elapsedMs) * 1000),
    tokensPerSecond: round((r.tokens / r.elapsedMs) * 1000),
    latencyMs: { p50: round(lat.p50), p90: round(lat.p90), p99: round(lat.p99), max: round(lat.max) },
    ttftMs: r.ttft.length > 0 ? { p50: round(ttft.p50), p99: round(ttft.p99) } : undefined,
  };
}

async function compare(
  scenario: string,
  job: Omit<LoadJob, "target" | "url">,
  simUrl: string,
  gatewayUrl: string,
): Promise<Comparison> {
  // Alternate direct and gateway runs so drift on a shared machine hits both.
  const direct = await runLoad({ ...job, target: "direct", url: simUrl });
  const gateway = await runLoad({ ...job, target: "gateway", url: gatewayUrl });
  const d = describe(direct);
  const g = describe(gateway);
  const row: Comparison = {
    scenario,
    concurrency: job.concurrency,
    direct: d,
    gateway: g,
    addedP50Ms: round(g.latencyMs.p50 - d.latencyMs.p50),
    addedP99Ms: round(g.latencyMs.p99 - d.latencyMs.p99),
    throughputRatio: round(g.rps / d.rps),
  };
  if (d.ttftMs && g.ttftMs) row.addedTtftP50Ms = round(g.ttftMs.p50 - d.ttftMs.p50);
  if (d.tokensPerSecond > 0) row.tokensPerSecondRatio = round(g.tokensPerSecond / d.tokensPerSecond);
  process.stdout.write(`  ${scenario} c=${job.concurrency}: added p50 ${row.addedP50Ms} ms, p99 ${row.addedP99Ms} ms, throughput x${row.throughputRatio}\n`);
  return row;
}

async function main(): Promise<void> {
  const sim = await startSimulatorProcess(["--load-ms", "0", "--num-parallel", "64", "--max-loaded-models", "4"]);
  const gateway = await startGatewayProcess({ OLLAMA_URL: sim.url, LOG_LEVEL: "info" }, join(outDir, `gateway-${stamp}.log`));
  const rows: Comparison[] = [];
  try {
    const n = (full: number, quick: number): number => (smoke ? quick : full);
    process.stdout.write(`bench${smoke ? " (smoke)" : ""}: simulator ${sim.url}, gateway ${gateway.url}\n`);
    for (const concurrency of smoke ? [1] : [1, 16, 64]) {
      rows.push(
        await compare(
          "generate-1-token",
          { kind: "generate", model: "llama3.2", numPredict: 1, concurrency, requests: n(2000, 20), warmup: n(200, 5) },
          sim.url,
          gateway.url,
        ),
      );
    }
    for (const concurrency of smoke ? [1] : [1, 16, 64]) {
      rows.push(
        await compare(
          "embed-1-input",
          { kind: "embed", model: "all-minilm", numPredict: 0, concurrency, requests: n(2000, 20), warmup: n(200, 5) },
          sim.url,
          gateway.url,
        ),
      );
    }
    rows.push(
      await compare(
        "stream-200-tokens",
        { kind: "generate", model: "llama3.2", numPredict: 200, concurrency: 1, requests: n(200, 3), warmup: n(20, 1) },
        sim.url,
        gateway.url,
      ),
    );
  } finally {
    await gateway.stop();
    await sim.stop();
  }

  const machine = {
    node: process.version,
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model,
    memoryGiB: round(os.totalmem() / 2 ** 30),
    platform: `${os.platform()} ${os.release()}`,
    date: new Date().toISOString(),
    smoke,
  };
  const md = [
    `# Benchmark ${machine.date}${smoke ? " (smoke run: numbers are meaningless)" : ""}`,
    "",
    `Machine: ${machine.cpus} × ${machine.cpuModel}, ${machine.memoryGiB} GiB, Node ${machine.node}. Load generator, simulator and gateway are separate processes on this machine.`,
    "",
    "| scenario | c | direct p50 / p99 ms | gateway p50 / p99 ms | added p50 / p99 ms | direct rps | gateway rps | ratio | added TTFT p50 ms | errors (d/g) |",
    "|---|---|---|---|---|---|---|---|---|---|",
    ...rows.map(
      (r) =>
        `| ${r.scenario} | ${r.concurrency} | ${r.direct.latencyMs.p50} / ${r.direct.latencyMs.p99} | ${r.gateway.latencyMs.p50} / ${r.gateway.latencyMs.p99} | ${r.addedP50Ms} / ${r.addedP99Ms} | ${r.direct.rps} | ${r.gateway.rps} | ${r.throughputRatio} | ${r.addedTtftP50Ms ?? ""} | ${r.direct.errors}/${r.gateway.errors} |`,
    ),
    "",
  ].join("\n");
  writeFileSync(join(outDir, `bench-${stamp}.json`), JSON.stringify({ machine, rows }, null, 2));
  writeFileSync(join(outDir, `bench-${stamp}.md`), md);
  process.stdout.write("\n" + md + `\nWritten to ${outDir}/bench-${stamp}.{md,json}\n`);
  const failed = rows.some((r) => r.direct.errors > 0 || r.gateway.errors > 0);
  if (failed) {
    process.stderr.write("some requests failed (see the errors column)\n");
    process.exitCode = 1;
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`bench failed: ${e instanceof Error ? e.stack : String(e)}\n`);
  process.exit(1);
});
