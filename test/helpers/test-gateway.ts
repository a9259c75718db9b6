import { loadConfig } from "../../src/config/load-config.js";
import { startGateway } from "../../src/gateway.js";
import type { Gateway } from "../../src/gateway.js";
import { captureLogs } from "./log-capture.js";
import type { LogCapture } from "./log-capture.js";

/** A gateway started in this process for a test, with its captured logs. */
export interface TestGateway extends Gateway {
  /** What the gateway logged. */
  logs: LogCapture;
}

/**
 * Starts a real gateway on a free loopback port. `env` uses the same
 * variables as production (OLLAMA_URL, MAX_DEADLINE_MS, ...); probes run
 * every 100 ms so health tests are quick.
 */
export async function startTestGateway(env: Record<string, string>): Promise<TestGateway> {
  const config = loadConfig({
    HOST: "127.0.0.1",
    PORT: "0",
    HEALTH_PROBE_INTERVAL_MS: "100",
    // Generous: a probe that is merely slow on a loaded test machine must not flap health.
    HEALTH_PROBE_TIMEOUT_MS: "2000",
    SHUTDOWN_GRACE_MS: "2000",
    ...env,
  });
  const logs = captureLogs();
  const gateway = await startGateway(config, logs.log);
  return Object.assign(gateway, { logs });
}
