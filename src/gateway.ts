import cluster from "node:cluster";
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
import { createLimiter } from "./limits/limiter.js";
import type { Limiter } from "./limits/limiter.js";
import type { Logger } from "./observability/logger.js";
import { callValues } from "./pipeline/call.js";
import { createGatewayPipeline } from "./pipeline/gateway-pipeline.js";
import { principalOf } from "./pipeline/principal.js";
import type { ContextValues } from "@connectrpc/connect";
import type { GatewayMetrics } from "./observability/telemetry/metrics.js";
import type { MetricsEndpoint } from "./observability/telemetry/metrics-endpoint.js";
import { bothFailover, bothUpstream } from "./observability/telemetry/observers.js";
import type { GatewayTracing } from "./observability/telemetry/tracing.js";
import { createFleetMetadata } from "./routing/fleet-metadata.js";
import { createAffinityTable } from "./routing/affinity.js";
import { createFleetState } from "./routing/fleet-state.js";
import { DEFAULT_RETRY_POLICY } from "./routing/retry-policy.js";
import { createScheduler, LOCAL_GATE } from "./routing/scheduler.js";
import { createRedisLink } from "./redis/redis-link.js";
import { createSharedNodeHealth } from "./routing/shared-node-health.js";
import { createSlotLeases } from "./routing/slot-leases.js";
import { createIpcFleetLearning } from "./routing/ipc-fleet-learning.js";
import type { LearningChannel } from "./routing/ipc-fleet-learning.js";
import { createIpcNodeHealth } from "./routing/ipc-node-health.js";
import type { VerdictChannel } from "./routing/ipc-node-health.js";
import { createIpcSlotGate } from "./routing/ipc-slot-gate.js";
import type { IpcChannel } from "./routing/ipc-slot-gate.js";
import type { Scheduler } from "./routing/scheduler.js";
import { chatDeltaFrame, embedFrame, generateDeltaFrame } from "./transport/reply-frames.js";
import { createEmbeddingCache } from "./services/embedding-cache.js";
import { createGatewayService } from "./services/gateway-service.js";
import { createInferenceService } from "./services/inference-service.js";
import { createModelService } from "./services/model-service.js";
import { createConnectHandler } from "./transport/connect-handler.js";
import { listenDualProtocol } from "./transport/dual-protocol-server.js";
import { createRequestBodyWaits } from "./transport/request-body-waits.js";
import { sessionPeer } from "./transport/session-peer.js";
import { createGrpcFastPath, serverStreamingRoute, unaryRoute } from "./transport/grpc-fast-path.js";
import { createHealthService } from "./transport/health-service.js";
import type { HealthService } from "./transport/health-service.js";
import { registerReflection } from "./transport/reflection-service.js";
import { createNodeHealth } from "./upstream/node-health.js";
import type { NodeHealth } from "./upstream/node-health.js";
import { createOllamaNode } from "./upstream/ollama-node.js";
import { shuttingDown } from "./errors/domain-errors.js";
import { createAuthenticator } from "./auth/authenticator.js";
import { createConfigReloader } from "./config/config-reloader.js";
import { reloadConfigFile } from "./config/load-config.js";
import { watchFiles } from "./config/watch-files.js";
import { readTlsCredentials } from "./transport/tls-server.js";
import { tlsSocketOf } from "./auth/client-certificate.js";

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
  /** Per-principal rate limits and token quotas; config reload hands new limits to its `update`. */
  readonly limiter: Limiter;
  /**
   * Applies the config file's principals, keys, permissions and limits again, and the JWT keys
   * (SIGHUP does this; file changes do it by themselves). Resolves false when something was refused
   * (logged; the previous version kept).
   */
  reload(): Promise<boolean>;
  /** The Prometheus metrics (METRICS_PORT set), else undefined. */
  readonly metrics: GatewayMetrics | undefined;
  /** `http://host:port/metrics` when this process serves the metrics endpoint. */
  readonly metricsUrl: string | undefined;
  /** Trace export (an OTLP endpoint set), else undefined: no tracing hook, no span objects. */
  readonly tracing: GatewayTracing | undefined;
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

/** How `startGateway` runs besides its configuration. */
export interface StartOptions {
  /**
   * Listen on METRICS_PORT. False in node:cluster workers: the primary serves every worker's
   * metrics aggregated on that port (`main.ts`). @default true
   */
  metricsEndpoint?: boolean;
}

/** The principal's name for metrics and spans (never a credential). */
const principalName = (values: ContextValues): string | undefined => principalOf(values)?.name;

/** Builds every layer from the config and starts listening. */
export async function startGateway(config: GatewayConfig, log: Logger, options: StartOptions = {}): Promise<Gateway> {
  const startedAtMs = Date.now();
  // Metrics and tracing are loaded only when configured: otherwise neither their libraries nor
  // any hook or observer exist (README, "Operating it").
  const metrics =
    config.metrics.port === undefined
      ? undefined
      : (await import("./observability/telemetry/metrics.js")).createGatewayMetrics({
          maxModels: config.metrics.maxModels,
          maxPrincipals: config.metrics.maxPrincipals,
          principalOf: principalName,
          version: VERSION,
        });
  const tracing =
    config.tracing.endpoint === undefined
      ? undefined
      : (await import("./observability/telemetry/tracing.js")).createGatewayTracing({
          config: config.tracing,
          version: VERSION,
          nodes: config.nodes,
          principalOf: principalName,
          log,
        });
  const upstreamObserver = bothUpstream(metrics?.upstream, tracing?.upstream);
  // Enough connections for every slot of every model a node may hold (the
  // admission queue bounds what is in flight), and never fewer than configured.
  const nodes = config.nodes.map((n) =>
    createOllamaNode(
      n,
      {
        ...config.upstream,
        connections: Math.max(config.upstream.connections, n.parallel * n.maxLoadedModels + 8),
      },
      upstreamObserver,
    ),
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
  // Without Redis, the workers of one gateway (WORKERS > 1) share slot accounting through the
  // primary process instead (README, "Several replicas"); Redis leases cover several replicas, so they win.
  const workerGate =
    !leases && cluster.isWorker && process.send !== undefined
      ? createIpcSlotGate({ channel: process as IpcChannel, log })
      : undefined;
  // Node health likewise: a circuit one worker opens or closes reaches the others through the primary.
  const workerHealth =
    !sharedHealth && cluster.isWorker && process.send !== undefined
      ? createIpcNodeHealth({
          channel: process as VerdictChannel,
          health: nodeHealth,
          nodes: nodes.map((n) => n.name),
          log,
        })
      : undefined;
  const localFleet = createFleetState(nodes.map((node, i) => ({ node, config: config.nodes[i]! })));
  // And what each worker learns about the nodes' capacity and slots (README, "Several replicas").
  const workerLearning =
    cluster.isWorker && process.send !== undefined
      ? createIpcFleetLearning({ channel: process as LearningChannel, fleet: localFleet, log })
      : undefined;
  const fleet = workerLearning?.fleet ?? localFleet;
  const scheduler = createScheduler({
    fleet,
    metadata,
    health: nodeHealth,
    log,
    affinity: createAffinityTable(),
    gate: leases ?? workerGate ?? LOCAL_GATE,
    admission: {
      maxQueuedPerModel: config.routing.maxQueuedPerModel,
      maxQueuedTotal: config.routing.maxQueuedTotal,
      maxWaitMs: config.routing.maxQueueWaitMs,
    },
    rebalance: config.routing.rebalance,
    syncMs: config.cache.psTtlMs,
  });
  // Model aliases in force; a config reload replaces them for the next calls (README "Model aliases").
  let aliases = config.routing.aliases;
  const embeddings = config.cache.embeddings ? createEmbeddingCache(cache, config.cache.embeddingsTtlMs) : undefined;
  const inference = createInferenceService({
    scheduler,
    aliases: () => aliases,
    retry: { ...DEFAULT_RETRY_POLICY, maxAttempts: config.routing.retryMaxAttempts },
    numCtx: config.routing.numCtx,
    health: nodeHealth,
    maxDeadlineMs: config.maxDeadlineMs,
    metadata,
    embeddings: embeddings && tracing ? tracing.embeddingCache(embeddings) : embeddings,
    embedBatchWindowMs: config.embedBatchWindowMs,
    observer: bothFailover(metrics?.failover, tracing?.failover),
    maxMessageBytes: config.maxMessageBytes,
  });
  const models = createModelService({
    nodes,
    metadata,
    health: nodeHealth,
    maxDeadlineMs: config.maxDeadlineMs,
    aliases: () => aliases,
  });
  // Authentication and permissions (README "Authentication"), when configured.
  const authenticator =
    config.auth.modes.length > 0
      ? createAuthenticator(config.auth, {
          onJwksFetch: (outcome) => {
            if (outcome.ok) log.info({ keys: outcome.keys }, "JWKS fetched");
            else log.warn({ error: outcome.error }, "JWKS fetch failed: tokens are checked with the keys held");
          },
        })
      : undefined;
  // Per-principal limits, shared through the replica's Redis link; without Redis each of the
  // WORKERS processes enforces its share (README, "Rate limits and quotas").
  const limiter = createLimiter({ limits: config.limits, redis, namespace: "ogw:v1:", replicas: config.workers, log });
  // Principals, keys, permissions, limits and aliases apply again on SIGHUP and when the config file (or
  // the JWT key file) changes (README "Reload").
  const reloader = createConfigReloader({
    configFile: config.configFile,
    read: (path) => reloadConfigFile(path, config),
    apply: ({ auth, limits, aliases: next }) => {
      authenticator?.apply(auth);
      limiter.update(limits);
      aliases = next;
      return authenticator === undefined
        ? { aliases: next.size }
        : { principals: authenticator.policy.principals, keys: authenticator.policy.keys, aliases: next.size };
    },
    keyFile: config.auth.jwt?.keyFile,
    reloadKeys: authenticator === undefined ? undefined : () => authenticator.reloadKeys(),
    watchIntervalMs: config.configWatchIntervalMs,
    log,
  });
  // Request id, tracing, logging, metrics, authentication, permissions, rate limits and the
  // concurrency cap (pipeline/gateway-pipeline.ts), run the same way by connect-node and the fast path.
  const { pipeline, cap } = createGatewayPipeline({
    log,
    maxConcurrentRpcs: config.maxConcurrentRpcs,
    metrics,
    tracing,
    auth: authenticator,
    limiter,
  });
  metrics?.watch({ scheduler, fleet, health: nodeHealth, cache, redis, activeCalls: () => cap.active });
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
    slotsShared: () => leases?.shared() ?? workerGate?.shared() ?? false,
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
    // An HTTP/2 request's peer is its session's, read once per connection (`session-peer.ts`).
    contextValues: (req) => {
      if (!("stream" in req)) return callValues(req.socket.remoteAddress, tlsSocketOf(req.socket));
      const peer = sessionPeer(req.stream.session);
      return callValues(peer.address, peer.tls);
    },
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

  // TLS (README "TLS"): read now, so bad files fail the start; re-read when they change.
  const tlsFiles = config.tls;
  const server = await listenDualProtocol(handler, {
    tls: tlsFiles === undefined ? undefined : readTlsCredentials(tlsFiles),
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
  const reloadTls = (): boolean => {
    if (tlsFiles === undefined) return true;
    try {
      server.setTlsCredentials(readTlsCredentials(tlsFiles));
      log.info({ cert: tlsFiles.certFile }, "TLS certificate reloaded");
      return true;
    } catch (e) {
      log.error(
        { cert: tlsFiles.certFile, error: e instanceof Error ? e.message : String(e) },
        "TLS files refused: keeping the certificate in use",
      );
      return false;
    }
  };
  const tlsWatch =
    tlsFiles !== undefined && config.configWatchIntervalMs > 0
      ? watchFiles(
          [tlsFiles.certFile, tlsFiles.keyFile, tlsFiles.clientCaFile].filter((f): f is string => f !== undefined),
          config.configWatchIntervalMs,
          () => void reloadTls(),
        )
      : undefined;
  if (authenticator === undefined && !isLoopback(config.host)) {
    log.warn(
      { host: config.host, port: server.port },
      "authentication is off on a non-loopback address: anyone who reaches the port may call every method (set AUTH_MODE or API_KEYS)",
    );
  } else if (authenticator !== undefined) {
    const policy = authenticator.policy;
    log.info({ modes: config.auth.modes, principals: policy.principals, keys: policy.keys }, "authentication on");
  }
  nodeHealth.start();
  await nodeHealth.probeAll();
  applyFleetHealth();
  scheduler.start();
  let metricsEndpoint: MetricsEndpoint | undefined;
  if (metrics !== undefined && config.metrics.port !== undefined && options.metricsEndpoint !== false) {
    const registry = metrics.registry;
    metricsEndpoint = await (await import("./observability/telemetry/metrics-endpoint.js")).listenMetrics({
      host: config.metrics.host,
      port: config.metrics.port,
      render: async () => ({ contentType: registry.contentType, body: await registry.metrics() }),
      onError: (e) => log.error({ err: e }, "metrics could not be collected"),
    });
    log.info({ url: metricsEndpoint.url }, "metrics listening");
  }

  const host = config.host === "0.0.0.0" || config.host === "::" ? "127.0.0.1" : config.host;
  let closed: Promise<void> | undefined;
  return {
    port: server.port,
    url: `${tlsFiles === undefined ? "http" : "https"}://${host.includes(":") ? `[${host}]` : host}:${server.port}`,
    health,
    nodeHealth,
    cache,
    scheduler,
    reload: async () => {
      const tlsOk = reloadTls();
      return (await reloader.reload({ file: true, keys: true })) && tlsOk;
    },
    limiter,
    metrics,
    metricsUrl: metricsEndpoint?.url,
    tracing,
    close() {
      closed ??= (async () => {
        reloader.close();
        tlsWatch?.close();
        authenticator?.close();
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
        workerGate?.close();
        workerHealth?.close();
        workerLearning?.close();
        nodeHealth.stop();
        await Promise.all([
          ...nodes.map((n) => n.close()),
          cache.close(),
          leases?.close(),
          sharedHealth?.close(),
          limiter.close(),
          metricsEndpoint?.close(),
        ]);
        await redis?.close();
        // Last, so the spans of the calls that just ended are exported too.
        await tracing?.shutdown().catch((e: unknown) => log.warn({ err: e }, "trace export at shutdown failed"));
      })();
      return closed;
    },
  };
}

/** Whether `host` only accepts connections from this machine. */
function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || host.startsWith("127.");
}
