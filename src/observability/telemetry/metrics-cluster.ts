import { AggregatorRegistry } from "prom-client";
import type { Registry } from "prom-client";
import { listenMetrics } from "./metrics-endpoint.js";
import type { MetricsEndpoint } from "./metrics-endpoint.js";

/**
 * With WORKERS > 1 (node:cluster) every worker keeps its own metrics and the primary serves them
 * on the one METRICS_PORT, aggregated per scrape with prom-client's AggregatorRegistry (counters
 * and histograms summed; gauges as each metric says: summed by default, `max` for configured
 * values, `min` for `redis_up`). The workers never listen on the port themselves: node:cluster
 * would hand each scrape to one worker in turn.
 */

/**
 * Worker side, first thing: answers the primary's requests (with nothing until `shareRegistry`),
 * so a scrape during a worker's start-up does not wait for it to time out.
 */
export function answerPrimary(): void {
  // The constructor installs the worker's message listener (once per process).
  new AggregatorRegistry();
}

/** Worker side: the registry whose metrics the primary aggregates. */
export function shareRegistry(registry: Registry): void {
  AggregatorRegistry.setRegistries([registry]);
}

/** Primary side: the endpoint serving every worker's metrics, aggregated. */
export function listenClusterMetrics(options: {
  host: string;
  port: number;
  onError(error: unknown): void;
}): Promise<MetricsEndpoint> {
  const aggregator = new AggregatorRegistry();
  return listenMetrics({
    ...options,
    render: async () => ({ contentType: aggregator.contentType, body: await aggregator.clusterMetrics() }),
  });
}
