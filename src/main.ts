import cluster from "node:cluster";
import { runPrimary } from "./cluster-primary.js";
import { ConfigError, loadConfig, redactConfig } from "./config/load-config.js";
import { startGateway } from "./gateway.js";
import { createLogger, flushLogger } from "./observability/logger.js";

// Entry point: config from the environment, then serve until SIGTERM/SIGINT.
async function main(): Promise<void> {
  let config;
  try {
    config = loadConfig();
  } catch (e) {
    if (e instanceof ConfigError) {
      process.stderr.write(`ollama-grpc-gateway: ${e.message}\n`);
      process.exit(2);
    }
    throw e;
  }
  const log = createLogger(config.logLevel);
  if (config.workers > 1 && cluster.isPrimary) {
    log.info({ config: redactConfig(config) }, "effective configuration");
    await runPrimary(config.workers, log, config.metrics);
    return;
  }
  const worker = cluster.isWorker;
  // In a worker the primary serves the metrics of all workers on METRICS_PORT, asking each.
  const clusterMetrics =
    worker && config.metrics.port !== undefined
      ? await import("./observability/telemetry/metrics-cluster.js")
      : undefined;
  clusterMetrics?.answerPrimary();
  if (!worker) log.info({ config: redactConfig(config) }, "effective configuration");
  else {
    // Each worker takes its share of the process-wide call and connection limits.
    config.maxConcurrentRpcs = Math.max(1, Math.ceil(config.maxConcurrentRpcs / config.workers));
    config.maxConnections = Math.max(1, Math.ceil(config.maxConnections / config.workers));
  }
  const gateway = await startGateway(config, log, { metricsEndpoint: !worker });
  if (gateway.metrics !== undefined) clusterMetrics?.shareRegistry(gateway.metrics.registry);
  log.info({ port: gateway.port, url: gateway.url }, "gateway listening");

  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, "shutting down");
    gateway
      .close()
      .then(() => log.info("stopped"))
      .catch((e: unknown) => log.error({ err: e }, "error during shutdown"))
      .finally(() => {
        void flushLogger(log).then(() => process.exit(0));
      });
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
  // Principals, keys and permissions again from the config file (README "Reload"); outcome logged.
  process.on("SIGHUP", () => void gateway.reload());
}

main().catch((e: unknown) => {
  process.stderr.write(`ollama-grpc-gateway: failed to start: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
