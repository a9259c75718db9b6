import { spawn } from "node:child_process";
import { delay } from "./sim-http.js";

/** `npm run sim` as its own process, for the specs of its command line. */
export interface SimulatorProcess {
  /** The URL it printed ("listening on …"), undefined if it printed none within the wait. */
  url: string | undefined;
  /** Everything it printed on stdout so far. */
  output(): string;
  /** SIGTERM; resolves with its exit code. */
  stop(): Promise<number | null>;
  /** SIGKILL if still running (for `finally`). */
  kill(): void;
}

/** Starts `src/simulator/main.ts` with `args` (and `env` on top of this process's) and waits up to `waitMs` for its URL. */
export async function startSimulatorProcess(
  args: readonly string[],
  env: Record<string, string> = {},
  waitMs = 5000,
): Promise<SimulatorProcess> {
  const child = spawn(process.execPath, ["--import", "tsx", "src/simulator/main.ts", ...args], {
    cwd: new URL("../..", import.meta.url),
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout.on("data", (chunk: Buffer) => {
    output += chunk.toString();
  });
  let url: string | undefined;
  for (let waited = 0; waited < waitMs && !url; waited += 25) {
    url = /listening on (http:\/\/[^ ]+)/.exec(output)?.[1];
    if (!url) await delay(25);
  }
  return {
    url,
    output: () => output,
    stop() {
      const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
      child.kill("SIGTERM");
      return exited;
    },
    kill() {
      if (child.exitCode === null) child.kill("SIGKILL");
    },
  };
}
