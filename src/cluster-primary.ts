import cluster from "node:cluster";
import type { Worker } from "node:cluster";
import type { MetricsConfig } from "./config/observability-config.js";
import type { Logger } from "./observability/logger.js";
import { isFleetLearningMessage } from "./routing/ipc-fleet-learning.js";
import { isNodeVerdictMessage } from "./routing/ipc-node-health.js";
import { answerSlotRequest, grantMessages, isSlotRequest } from "./routing/ipc-slot-gate.js";
import type { SlotOutgoing } from "./routing/ipc-slot-gate.js";
import { createSlotTable } from "./routing/slot-table.js";

/**
 * Multi-core mode (WORKERS > 1): this process forks that many gateway
 * workers sharing one listening port (node:cluster hands connections out in
 * turn), restarts a worker that dies, and on SIGTERM/SIGINT passes the
 * signal on and exits once every worker has finished its graceful shutdown.
 *
 * It also keeps the gateway-wide slot table the workers ask over IPC
 * (`routing/ipc-slot-gate.ts`; README, "Several replicas"), so that together
 * they never send a node more requests at once than its slots, and a freed
 * slot goes to the most urgent request waiting in any worker; a worker that
 * dies has its slots freed (and handed on) and its waiters dropped at once. A
 * node health verdict from one worker, and what it learned about a node's
 * capacity and slots, are passed on to the others (`routing/ipc-node-health.ts`,
 * `routing/ipc-fleet-learning.ts`).
 * With METRICS_PORT set it serves the metrics of all workers there, aggregated
 * per scrape (`observability/telemetry/metrics-cluster.ts`).
 */
export async function runPrimary(workers: number, log: Logger, metrics?: MetricsConfig): Promise<void> {
  let stopping = false;
  const restarts: number[] = [];
  const slots = createSlotTable();
  const fork = (): Worker => cluster.fork();
  cluster.on("online", (worker) => log.info({ worker: worker.process.pid }, "worker started"));
  cluster.on("message", (worker, message: unknown) => {
    // Health verdicts and learned capacity/slots: passed on to the other workers as they are.
    if (isNodeVerdictMessage(message) || isFleetLearningMessage(message)) {
      for (const other of Object.values(cluster.workers ?? {}))
        if (other && other !== worker && other.isConnected()) other.send(message);
      return;
    }
    if (!isSlotRequest(message)) return;
    deliver(answerSlotRequest(slots, worker.id, message));
  });
  /** Sends slot replies; a grant whose worker is gone is released again (and handed on). */
  const deliver = (out: readonly SlotOutgoing[]): void => {
    const queue = [...out];
    for (let o = queue.shift(); o !== undefined; o = queue.shift()) {
      const to = cluster.workers?.[o.owner];
      if (to?.isConnected()) {
        to.send(o.message);
        continue;
      }
      if (o.message.type === "ogw:slot-grant") queue.push(...grantMessages(slots.release(o.owner, o.message.lease)));
    }
  };
  for (let i = 0; i < workers; i++) fork();
  cluster.on("exit", (worker, code, signal) => {
    // Its requests to the nodes died with it: their slots are free now, not after a timeout.
    const { freed, grants } = slots.dropOwner(worker.id);
    deliver(grantMessages(grants));
    if (freed > 0) log.info({ worker: worker.process.pid, slots: freed }, "freed the slots of a worker that exited");
    if (stopping) {
      if (Object.keys(cluster.workers ?? {}).length === 0) {
        log.info("all workers stopped");
        log.flush(() => process.exit(0));
      }
      return;
    }
    // A crash loop must not fork forever: at most 10 restarts a minute.
    const now = Date.now();
    while (restarts.length > 0 && restarts[0]! < now - 60_000) restarts.shift();
    if (restarts.length >= 10) {
      log.fatal({ code, signal }, "workers keep dying; giving up");
      process.exit(1);
    }
    restarts.push(now);
    log.error({ pid: worker.process.pid, code, signal }, "worker died; starting another");
    fork();
  });
  const stop = (sig: NodeJS.Signals): void => {
    if (stopping) return;
    stopping = true;
    log.info({ signal: sig, workers }, "shutting down workers");
    for (const w of Object.values(cluster.workers ?? {})) w?.process.kill(sig);
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
  // Reload: every worker reads the config file again.
  process.on("SIGHUP", () => {
    for (const w of Object.values(cluster.workers ?? {})) w?.process.kill("SIGHUP");
  });
  if (metrics?.port !== undefined) {
    const { listenClusterMetrics } = await import("./observability/telemetry/metrics-cluster.js");
    const endpoint = await listenClusterMetrics({
      host: metrics.host,
      port: metrics.port,
      onError: (e) =>
        log.warn({ err: e instanceof Error ? e.message : String(e) }, "workers' metrics could not be collected"),
    });
    log.info({ url: endpoint.url, workers }, "metrics listening");
  }
}
