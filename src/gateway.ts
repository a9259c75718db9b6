import { setMaxListeners } from "node:events";
import { readFileSync } from "node:fs";
import type { ConnectRouter } from "@connectrpc/connect";
import { compressionGzip } from "@connectrpc/connect-node";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "./gen/grpc/health/v1/health_pb.js";
import { GatewayService } from "./gen/ollama/gateway/v1/gateway_pb.js";
import { InferenceService } from "./gen/ollama/gateway/v1/inference_pb.js";
import { ModelService } from "./gen/ollama/gateway/v1/model_pb.js";
import { createCache } from "./cache/cache.js";
import type { Cache } from "./cache/cache.js";
import type { GatewayConfig } from "./config/config.js";
import type { Logger } from "./observability/logger.js";
import { callValues } from "./pipeline/call.js";
import { createGatewayPipeline } from "./pipeline/gateway-pipeline.js";
import { createFleetMetadata } from "./routing/fleet-metadata.js";
import { createAffinityTable } from "./routing/affinity.js";
import { createFleetState } from "./routing/fleet-state.js";
import { DEFAULT_RETRY_POLICY } from "./routing/retry-policy.js";
import { createScheduler, LOCAL_GATE } from "./routing/scheduler.js";
import { createRedisLink } from "./redis/redis-link.js";
import { createSharedNodeHealth } from "./routing/shared-node-health.js";
import { createSlotLeases } from "./routing/slot-leases.js";
import type { Scheduler } from "./routing/scheduler.js";
import { chatDeltaFrame, embedFrame, generateDeltaFrame } from "./transport/reply-frames.js";
import { createEmbeddingCache } from "./services/embedding-cache.js";
import { createGatewayService } from "./services/gateway-service.js";
import { createInferenceService } from "./services/inference-service.js";
import { createModelService } from "./services/model-service.js";
import { createConnectHandler } from "./transport/connect-handler.js";
import { listenDualProtocol } from "./transport/dual-protocol-server.js";
import { createRequestBodyWaits } from "./transport/request-body-waits.js";
import { createGrpcFastPath, serverStreamingRoute, unaryRoute } from "./transport/grpc-fast-path.js";
import { createHealthService } from "./transport/health-service.js";
import type { HealthService } from "./transport/health-service.js";
import { registerReflection } from "./transport/reflection-service.js";
import { createNodeHealth } from "./upstream/node-health.js";
import type { NodeHealth } from "./upstream/node-health.js";
import { createOllamaNode } from "./upstream/ollama-node.js";
import { shuttingDown } from "./errors/domain-errors.js";

/** A running gateway. */
export interface Gateway {
  /** The bound port. */
  readonly port: number;
  /** `http://127.0.0.1:<port>` (or the configured host), for clients and tests. */
  readonly url: string;
  /** The gRPC health status table. */
  readonly health: HealthService;
  /** Which Ollama nodes answer. */
  readonly nodeHealth: NodeHealth;
  /** The metadata and embedding cache. */
  readonly cache: Cache;
  /** Admission queue and node choice. */
  readonly scheduler: Scheduler;
  /**
   * Graceful shutdown: health NOT_SERVING, stop accepting, GOAWAY, let
   * running calls finish for `config.shutdownGraceMs`, then cancel the rest
   * with UNAVAILABLE and close the upstream pools. Safe to call twice.
   */
  close(): Promise<void>;
}

// Services whose health follows the Ollama fleet: they can serve only while
// at least one node answers.
const FLEET_SERVICES = [InferenceService.typeName, ModelService.typeName];

/** The gateway's version, from package.json (one level above src/ and dist/). */
const VERSION = ((): string => {
  try {
    const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version?: unknown };
    return typeof pkg.version === "string" ? pkg.version : "unknown";
  } catch {
    return "unknown";
  }
})();

/** Builds every layer from the config and starts listening. */
export async function startGateway(config: GatewayConfig, log: Logger): Promise<Gateway> {
  const startedAtMs = Date.now();
  // Enough connections for every slot of every model a node may hold (the
  // admission queue bounds what is in flight), and never fewer than configured.
  const nodes = config.nodes.map((n) =>
    createOllamaNode(n, {
      ...config.upstream,
      connections: Math.max(config.upstream.connections, n.parallel * n.maxLoadedModels + 8),
    }),
  );
  // One Redis link per replica (a command connection and one subscriber), shared by the cache,
  // node-health sharing and slot leases; closed after all three.
  const redis = config.cache.redisUrl
    ? createRedisLink({ url: config.cache.redisUrl, commandTimeoutMs: config.cache.redisCommandTimeoutMs, log })
    : undefined;
  const cache = createCache({
    redis,
    namespace: "ogw:v1:",
    memory: { maxEntries: config.cache.memoryMaxEntries, maxBytes: config.cache.memoryMaxBytes },
    // Keyed by content digest, so never stale: no need to drop them after a
    // Redis outage (tags and ps are, and get refetched).
    keepOnReconnect: ["show", "emb"],
    log,
  });
  const metadata = createFleetMetadata(nodes, cache, {
    tagsMs: config.cache.tagsTtlMs,
    psMs: config.cache.psTtlMs,
    showMs: config.cache.showTtlMs,
    upstreamTimeoutMs: 10_000,
  });
  const nodeHealth = createNodeHealth(nodes, {
    intervalMs: config.probeIntervalMs,
    timeoutMs: config.probeTimeoutMs,
    failureThreshold: config.routing.circuitFailureThreshold,
    openMs: config.routing.circuitOpenMs,
  });
  const health = createHealthService({
    serverStatus: ServingStatus.NOT_SERVING,
    services: FLEET_SERVICES,
    maxWatchers: config.healthMaxWatchers,
  });
  health.setStatus(GatewayService.typeName, ServingStatus.SERVING);
  let closing = false;
  const applyFleetHealth = (): void => {
    if (closing) return;
    const status = nodeHealth.anyHealthy() ? ServingStatus.SERVING : ServingStatus.NOT_SERVING;
    health.setStatus("", status);
    for (const s of FLEET_SERVICES) health.setStatus(s, status);
  };
  nodeHealth.onChange((node, healthy) => {
    log[healthy ? "info" : "warn"]({ node }, healthy ? "ollama node is reachable" : "ollama node is unreachable");
    applyFleetHealth();
  });

  // With Redis, replicas share slot accounting: together they never run
  // more on a node than its slots, and a crashed replica's leases expire.
  const leases = redis ? createSlotLeases({ redis, namespace: "ogw:v1:", log }) : undefined;
  // And node health: a circuit one replica opens (or closes after a success) is applied by the
  // others at once, instead of each finding a dead node with its own failed requests.
  const sharedHealth = redis
    ? createSharedNodeHealth({
        redis,
        health: nodeHealth,
        nodes: nodes.map((n) => n.name),
        namespace: "ogw:v1:",
        log,
      })
    : undefined;
  const fleet = createFleetState(nodes.map((node, i) => ({ node, config: config.nodes[i]! })));
  const scheduler = createScheduler({
    fleet,
    metadata,
    health: nodeHealth,
    log,
    affinity: createAffinityTable(),
    gate: leases ?? LOCAL_GATE,
    admission: {
      maxQueuedPerModel: config.routing.maxQueuedPerModel,
      maxQueuedTotal: config.routing.maxQueuedTotal,
      maxWaitMs: config.routing.maxQueueWaitMs,
    },
    rebalance: config.routing.rebalance,
    syncMs: config.cache.psTtlMs,
  });
  const inference = createInferenceService({
    scheduler,
    retry: { ...DEFAULT_RETRY_POLICY, maxAttempts: config.routing.retryMaxAttempts },
    numCtx: config.routing.numCtx,
    health: nodeHealth,
    maxDeadlineMs: config.maxDeadlineMs,
    metadata,
    embeddings: config.cache.embeddings ? createEmbeddingCache(cache, config.cache.embeddingsTtlMs) : undefined,
    embedBatchWindowMs: config.embedBatchWindowMs,
    maxMessageBytes: config.maxMessageBytes,
  });
  const models = createModelService({ nodes, metadata, health: nodeHealth, maxDeadlineMs: config.maxDeadlineMs });
  // Request id, logging and the concurrency cap (pipeline/gateway-pipeline.ts), run the same way
  // by connect-node and the fast path.
  const { pipeline, cap } = createGatewayPipeline({ log, maxConcurrentRpcs: config.maxConcurrentRpcs });
  const status = createGatewayService({
    version: VERSION,
    startedAtMs,
    nodes,
    health: nodeHealth,
    metadata,
    cache,
    embeddingsCached: config.cache.embeddings,
    activeCalls: () => cap.active,
    fleet,
    scheduler,
    slotsShared: () => leases?.shared() ?? false,
  });
  const routes = (router: ConnectRouter): void => {
    router.service(InferenceService, inference.service);
    router.service(ModelService, models);
    router.service(GatewayService, status);
    router.service(Health, health.implementation);
    registerReflection(router, [InferenceService, ModelService, GatewayService, Health]);
  };

  const shutdown = new AbortController();
  // connect-node links every running call's signal to this one: one listener
  // per call, removed when the call ends, so the count is bounded by the
  // concurrent-call limit (plus health watchers), not a leak.
  setMaxListeners(0, shutdown.signal);
  // Calls waiting for their request body, on both paths: bounded in time and number, not counted
  // against MAX_CONCURRENT_RPCS until the body has arrived (README, "Operating it").
  const bodies = createRequestBodyWaits({
    timeoutMs: config.requestBodyTimeoutMs,
    maxWaiting: config.requestBodyMaxWaiting,
  });
  const handler = createConnectHandler({
    routes,
    pipeline,
    maxDeadlineMs: config.maxDeadlineMs,
    bodies,
    log,
    readMaxBytes: config.maxMessageBytes,
    writeMaxBytes: config.maxMessageBytes,
    acceptCompression: [compressionGzip],
    // Accept gzip-compressed requests, but never spend CPU compressing
    // responses: token chunks are tiny and float32 vectors barely compress
    // (the benchmark profile showed zlib at ~8% of the gateway's CPU).
    compressMinBytes: Number.MAX_SAFE_INTEGER,
    shutdownSignal: shutdown.signal,
    contextValues: (req) => callValues(req.socket.remoteAddress),
  });
  // The hot calls, through the same pipeline, without connect-node's per-call machinery.
  const fastPath = config.grpcFastPath
    ? createGrpcFastPath({
        routes: [
          serverStreamingRoute(InferenceService.method.generate, inference.generate, generateDeltaFrame),
          serverStreamingRoute(InferenceService.method.chat, inference.chat, chatDeltaFrame),
          unaryRoute(InferenceService.method.embed, inference.service.embed, embedFrame),
        ],
        readMaxBytes: config.maxMessageBytes,
        writeMaxBytes: config.maxMessageBytes,
        shutdownSignal: shutdown.signal,
        pipeline,
        maxDeadlineMs: config.maxDeadlineMs,
        bodies,
      })
    : undefined;

  const server = await listenDualProtocol(handler, {
    host: config.host,
    port: config.port,
    maxConcurrentStreams: config.http2MaxConcurrentStreams,
    keepAliveTimeoutMs: config.http1KeepAliveTimeoutMs,
    fastPath,
    headersTimeoutMs: config.httpHeadersTimeoutMs,
    requestTimeoutMs: config.httpRequestTimeoutMs,
    idleTimeoutMs: config.http2IdleTimeoutMs,
    pingIntervalMs: config.http2PingIntervalMs,
    pingTimeoutMs: config.http2PingTimeoutMs,
    maxConnections: config.maxConnections,
    maxConnectionsPerIp: config.maxConnectionsPerIp,
    log,
  });
  nodeHealth.start();
  await nodeHealth.probeAll();
  applyFleetHealth();
  scheduler.start();

  const host = config.host === "0.0.0.0" || config.host === "::" ? "127.0.0.1" : config.host;
  let closed: Promise<void> | undefined;
  return {
    port: server.port,
    url: `http://${host.includes(":") ? `[${host}]` : host}:${server.port}`,
    health,
    nodeHealth,
    cache,
    scheduler,
    close() {
      closed ??= (async () => {
        closing = true;
        health.setAll(ServingStatus.NOT_SERVING);
        health.close();
        server.stopAccepting();
        const clean = await server.drained(config.shutdownGraceMs);
        if (!clean) {
          log.warn({ graceMs: config.shutdownGraceMs }, "grace period over: cancelling the remaining calls");
          shutdown.abort(shuttingDown());
          if (!(await server.drained(1_000))) server.destroy();
        }
        scheduler.stop();
        nodeHealth.stop();
        await Promise.all([...nodes.map((n) => n.close()), cache.close(), leases?.close(), sharedHealth?.close()]);
        await redis?.close();
      })();
      return closed;
    },
  };
}
