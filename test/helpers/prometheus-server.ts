import { spawn, spawnSync } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { laterPort } from "./redis-server.js";
import { delay } from "./sim-http.js";

// A real Prometheus server (Debian's `prometheus` package) for the metrics specs: started on a
// free loopback port with a generated config and a temporary storage directory, queried through
// its HTTP API.

/** One sample of an instant query: labels and value (NaN and ±Inf as Prometheus writes them). */
export interface QuerySample {
  metric: Record<string, string>;
  value: number;
}

/** A running Prometheus. */
export interface PrometheusServer {
  /** `http://127.0.0.1:<port>`. */
  readonly url: string;
  /** Runs an instant query; rejects with Prometheus's error for an expression it does not accept. */
  query(expr: string): Promise<QuerySample[]>;
  /** The loaded rule groups, as `/api/v1/rules` lists them. */
  rules(): Promise<{ name: string; health: string; lastError?: string; type: string }[]>;
  /** Values of a label on series matching `match`. */
  labelValues(label: string, match: string): Promise<string[]>;
  /** Stops it and removes its directory. */
  stop(): Promise<void>;
}

/** What Prometheus scrapes and evaluates. */
export interface PrometheusOptions {
  /** Scrape targets (`host:port`) of one job, scraped every second at `/metrics`. */
  targets: readonly string[];
  /** The job name. */
  job: string;
  /** Absolute paths of rule files to load. */
  ruleFiles?: readonly string[];
}

const running = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

/** Throws a clear message when the binaries are missing. */
export function requirePrometheus(): void {
  for (const bin of ["prometheus", "promtool"]) {
    const r = spawnSync(bin, ["--version"], { stdio: "ignore" });
    if (r.error !== undefined || r.status !== 0) {
      throw new Error(`${bin} is not installed; run scripts/install-system-deps.sh (Debian package prometheus)`);
    }
  }
}

/** Runs promtool with `args`; resolves with its exit status and output. */
export function promtool(args: readonly string[], cwd?: string): { status: number; output: string } {
  const r = spawnSync("promtool", args, { cwd, encoding: "utf8" });
  return { status: r.status ?? -1, output: `${r.stdout}${r.stderr}` };
}

function yamlList(items: readonly string[]): string {
  return `[${items.map((i) => JSON.stringify(i)).join(", ")}]`;
}

/** Starts Prometheus and resolves once it is ready. */
export async function startPrometheus(options: PrometheusOptions): Promise<PrometheusServer> {
  requirePrometheus();
  const dir = mkdtempSync(join(tmpdir(), "ogw-prometheus-"));
  const config = join(dir, "prometheus.yml");
  writeFileSync(
    config,
    [
      "global:",
      "  scrape_interval: 1s",
      "  scrape_timeout: 900ms",
      "  evaluation_interval: 1s",
      `rule_files: ${yamlList(options.ruleFiles ?? [])}`,
      "scrape_configs:",
      `  - job_name: ${JSON.stringify(options.job)}`,
      "    static_configs:",
      `      - targets: ${yamlList(options.targets)}`,
      "",
    ].join("\n"),
  );
  const port = await laterPort();
  const url = `http://127.0.0.1:${port}`;
  const child = spawn(
    "prometheus",
    [
      `--config.file=${config}`,
      `--storage.tsdb.path=${join(dir, "data")}`,
      `--web.listen-address=127.0.0.1:${port}`,
      "--log.level=warn",
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  running.add(child);
  let stderr = "";
  child.stderr?.on("data", (c: Buffer) => {
    stderr = (stderr + c.toString("utf8")).slice(-4000);
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
      await exited;
      clearTimeout(timer);
    }
    running.delete(child);
    rmSync(dir, { recursive: true, force: true });
  };

  const until = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) {
      await stop();
      throw new Error(`prometheus exited at start: ${stderr}`);
    }
    const ready = await fetch(`${url}/-/ready`).then(
      (r) => r.status === 200,
      () => false,
    );
    if (ready) break;
    if (Date.now() > until) {
      await stop();
      throw new Error(`prometheus was not ready within 30 s: ${stderr}`);
    }
    await delay(50);
  }

  const api = async <T>(path: string, params: Record<string, string>): Promise<T> => {
    const res = await fetch(`${url}${path}?${new URLSearchParams(params)}`);
    const body = (await res.json()) as { status: string; data: T; error?: string };
    if (body.status !== "success") throw new Error(`${path} ${JSON.stringify(params)}: ${body.error}`);
    return body.data;
  };
  return {
    url,
    async query(expr) {
      const data = await api<{
        resultType: string;
        result: { metric: Record<string, string>; value: [number, string] }[];
      }>("/api/v1/query", { query: expr });
      if (data.resultType === "scalar") {
        const v = data.result as unknown as [number, string];
        return [{ metric: {}, value: Number(v[1]) }];
      }
      return data.result.map((r) => ({ metric: r.metric, value: Number(r.value[1]) }));
    },
    async rules() {
      const data = await api<{
        groups: { rules: { name: string; health: string; lastError?: string; type: string }[] }[];
      }>("/api/v1/rules", {});
      return data.groups.flatMap((g) => g.rules);
    },
    labelValues: (label, match) => api<string[]>(`/api/v1/label/${label}/values`, { "match[]": match }),
    stop,
  };
}
