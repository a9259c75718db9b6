import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { GatewayService } from "../../src/gen/ollama/gateway/v1/gateway_pb.js";
import type { GetStatusResponse } from "../../src/gen/ollama/gateway/v1/gateway_pb.js";

/** A gateway running as its own OS process (`node --import tsx src/main.ts`), as in production. */
export interface GatewayProcess {
  /** `http://127.0.0.1:<port>`, from its "gateway listening" log line. */
  readonly url: string;
  readonly pid: number;
  /** Its JSON log lines so far (the most recent ones; bounded). */
  lines(): Record<string, unknown>[];
  /** What it wrote to stderr (the tail). */
  stderr(): string;
  /** SIGTERM, SIGKILL after `graceMs`; resolves once the process has exited. Safe to call twice. */
  stop(graceMs?: number): Promise<void>;
}

const MAX_LINES = 5000;
const repoRoot = fileURLToPath(new URL("../../", import.meta.url));

const running = new Set<ChildProcess>();
process.once("exit", () => {
  // Last resort if a test forgot its after hook: never leave a gateway process behind.
  for (const child of running) child.kill("SIGKILL");
});

function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

async function stopChild(child: ChildProcess, graceMs: number): Promise<void> {
  if (exited(child)) return;
  const gone = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
  await gone;
  clearTimeout(timer);
}

/**
 * Spawns a gateway process with the production entry point and `env` on top of this process's
 * environment (HOST 127.0.0.1 and PORT 0 unless given), and resolves once it logs
 * "gateway listening". Rejects — after killing the process — if it exits first or is not
 * listening within `readyTimeoutMs`.
 */
export async function spawnGateway(
  env: Record<string, string>,
  options: { readyTimeoutMs?: number } = {},
): Promise<GatewayProcess> {
  const readyTimeoutMs = options.readyTimeoutMs ?? 20_000;
  const child = spawn(process.execPath, ["--import", "tsx", "src/main.ts"], {
    cwd: repoRoot,
    env: { ...process.env, HOST: "127.0.0.1", PORT: "0", LOG_LEVEL: "info", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  running.add(child);
  child.once("exit", () => running.delete(child));

  const lines: Record<string, unknown>[] = [];
  let partial = "";
  let err = "";
  let onLine: ((line: Record<string, unknown>) => void) | undefined;
  child.stdout?.on("data", (chunk: Buffer) => {
    partial += chunk.toString("utf8");
    let nl = partial.indexOf("\n");
    while (nl >= 0) {
      const text = partial.slice(0, nl);
      partial = partial.slice(nl + 1);
      nl = partial.indexOf("\n");
      let line: Record<string, unknown>;
      try {
        line = JSON.parse(text) as Record<string, unknown>;
      } catch {
        line = { msg: text };
      }
      lines.push(line);
      if (lines.length > MAX_LINES) lines.splice(0, lines.length - MAX_LINES);
      onLine?.(line);
    }
  });
  child.stderr?.on("data", (chunk: Buffer) => {
    err = (err + chunk.toString("utf8")).slice(-8000);
  });

  let timer: NodeJS.Timeout | undefined;
  try {
    const url = await new Promise<string>((resolve, reject) => {
      timer = setTimeout(
        () => reject(new Error(`gateway process was not listening within ${readyTimeoutMs} ms: ${err.trim()}`)),
        readyTimeoutMs,
      );
      child.once("exit", (code, signal) =>
        reject(new Error(`gateway process exited (${code ?? signal}) before listening: ${err.trim()}`)),
      );
      onLine = (line) => {
        if (line["msg"] === "gateway listening" && typeof line["url"] === "string") resolve(line["url"]);
      };
      const seen = lines.find((l) => l["msg"] === "gateway listening");
      if (seen !== undefined && typeof seen["url"] === "string") resolve(seen["url"]);
    });
    onLine = undefined;
    return {
      url,
      pid: child.pid ?? -1,
      lines: () => [...lines],
      stderr: () => err,
      stop: (graceMs = 3000) => stopChild(child, graceMs),
    };
  } catch (e) {
    await stopChild(child, 0);
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

/** The pids of the workers (WORKERS > 1) that have listened so far, from their "gateway listening" lines. */
export function workerPids(g: GatewayProcess): number[] {
  return g
    .lines()
    .filter((l) => l["msg"] === "gateway listening")
    .map((l) => Number(l["pid"]));
}

/**
 * One GetStatus on a connection of its own, closed once answered, within `timeoutMs`. node:cluster
 * hands each new connection to a worker in turn, so this is how a test asks every worker; closing
 * the connection keeps a test that polls from piling up thousands of idle ones on a slow machine,
 * and the deadline turns a worker that does not answer into a failure instead of a hang.
 */
export async function statusOnNewConnection(url: string, timeoutMs = 10_000): Promise<GetStatusResponse> {
  const sessionManager = new Http2SessionManager(url);
  try {
    return await createClient(GatewayService, createGrpcTransport({ baseUrl: url, sessionManager })).getStatus(
      {},
      { timeoutMs },
    );
  } finally {
    sessionManager.abort();
  }
}

/** The gateway's last `n` log lines, a few fields each: what a failing multi-process test prints to say why. */
export function recentLog(g: GatewayProcess, n = 20): string {
  const fields = ["pid", "level", "msg", "code", "reason", "model", "node", "err"];
  return g
    .lines()
    .slice(-n)
    .map((l) => JSON.stringify(Object.fromEntries(fields.filter((f) => f in l).map((f) => [f, l[f]]))))
    .join("\n");
}

/** `e` with the gateway's last log lines added to its message: a failing multi-process test says what the gateway saw. */
export function withGatewayLog(e: unknown, g: GatewayProcess): unknown {
  if (e instanceof Error) {
    const tail = `\ngateway log tail:\n${recentLog(g, 30)}`;
    e.message += tail;
    // The test runner prints the stack, captured with the message as it was: add the tail there too.
    if (e.stack !== undefined) e.stack += tail;
  }
  return e;
}
