import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { createServer } from "node:net";
import type { AddressInfo } from "node:net";
import { openSync, closeSync } from "node:fs";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Health, HealthCheckResponse_ServingStatus } from "../src/gen/grpc/health/v1/health_pb.js";
import type { LoadJob, LoadResult } from "./load-generator.js";

/** A child process the bench started, with its address. */
export interface Started {
  /** Base URL. */
  url: string;
  /** The process (for pid-based measurements). */
  child: ChildProcess;
  /** Stops it (SIGTERM, then SIGKILL after 5 s). */
  stop(): Promise<void>;
}

const TSX = ["--import", "tsx"];

/** A port that was free a moment ago. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

function stopper(child: ChildProcess): () => Promise<void> {
  return () =>
    new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      const kill = setTimeout(() => child.kill("SIGKILL"), 5000);
      child.once("exit", () => {
        clearTimeout(kill);
        resolve();
      });
      child.kill("SIGTERM");
    });
}

/** Starts the Ollama simulator as its own process. */
export async function startSimulatorProcess(args: string[]): Promise<Started> {
  const port = await freePort();
  const child = spawn(process.execPath, [...TSX, "src/simulator/main.ts", "--port", String(port), ...args], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  await new Promise<void>((resolve, reject) => {
    let out = "";
    child.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      if (out.includes("listening on")) resolve();
    });
    child.once("exit", (code) => reject(new Error(`simulator exited with ${code}: ${out}`)));
  });
  child.stdout!.resume();
  return { url: `http://127.0.0.1:${port}`, child, stop: stopper(child) };
}

/** Starts the gateway as its own process (logs to `logFile`) and waits until it is SERVING. */
export async function startGatewayProcess(env: Record<string, string>, logFile: string): Promise<Started> {
  const port = await freePort();
  const fd = openSync(logFile, "a");
  const child = spawn(process.execPath, [...TSX, "src/main.ts"], {
    stdio: ["ignore", fd, fd],
    env: { ...process.env, HOST: "127.0.0.1", PORT: String(port), ...env },
  });
  closeSync(fd);
  const url = `http://127.0.0.1:${port}`;
  const health = createClient(Health, createGrpcTransport({ baseUrl: url }));
  const until = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`gateway exited with ${child.exitCode}; see ${logFile}`);
    try {
      const r = await health.check({ service: "" }, { timeoutMs: 500 });
      if (r.status === HealthCheckResponse_ServingStatus.SERVING) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > until) throw new Error(`gateway did not become SERVING; see ${logFile}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return { url, child, stop: stopper(child) };
}

/** Runs one load job in a fresh load-generator process and returns its result. */
export function runLoad(job: LoadJob): Promise<LoadResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...TSX, "bench/load-generator.ts", JSON.stringify(job)], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.once("exit", (code) => {
      if (code !== 0) return reject(new Error(`load generator exited with ${code}`));
      try {
        resolve(JSON.parse(out.trim().split("\n").at(-1) ?? "") as LoadResult);
      } catch (e) {
        reject(e instanceof Error ? e : new Error(String(e)));
      }
    });
  });
}
