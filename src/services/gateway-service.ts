import type { ServiceImpl } from "@connectrpc/connect";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { GatewayService } from "../gen/ollama/gateway/v1/gateway_pb.js";
import type { Cache } from "../cache/cache.js";
import { redactUrl } from "../config/load-config.js";
import { budgetBytes, maxLoaded } from "../routing/capacity-model.js";
import type { NodeCapacity } from "../routing/capacity-model.js";
import type { FleetMetadata } from "../routing/fleet-metadata.js";
import type { FleetState, NodeState } from "../routing/fleet-state.js";
import type { Scheduler } from "../routing/scheduler.js";
import type { NodeHealth } from "../upstream/node-health.js";
import type { OllamaNode } from "../upstream/ollama-node.js";

/** What GetStatus reports on. */
export interface GatewayServiceDeps {
  /** The gateway's version (package.json). */
  version: string;
  /** When the process started (ms since the epoch). */
  startedAtMs: number;
  /** Every configured node. */
  nodes: readonly OllamaNode[];
  /** Which nodes answer. */
  health: NodeHealth;
  /** Cached fleet view, for loaded models. */
  metadata: FleetMetadata;
  /** The cache, for its counters. */
  cache: Cache;
  /** Whether Embed results are cached. */
  embeddingsCached: boolean;
  /** Calls in progress. */
  activeCalls: () => number;
  /** The gateway's live view of loaded models and running requests. */
  fleet: FleetState;
  /** The admission queue. */
  scheduler: Scheduler;
  /** Whether slot accounting is shared through Redis right now. */
  slotsShared: () => boolean;
}

// GetStatus must answer quickly even when a node hangs: each node's loaded
// models are looked up with this bound, and left empty past it.
const PS_LOOKUP_MS = 500;

/** A node's learned capacity as GetStatus shows it (README, "Routing across a fleet", Capacity). */
function capacityStatus(c: NodeCapacity, loading: string | undefined) {
  return {
    budgetBytes: BigInt(budgetBytes(c) ?? 0),
    configuredBytes: BigInt(c.configuredBytes ?? 0),
    fitsBytes: BigInt(c.fitsBytes),
    overflowBytes: BigInt(c.overflowBytes ?? 0),
    maxLoadedModels: maxLoaded(c),
    modelSizes: [...c.sizes]
      .map(([model, size]) => ({ model, sizeBytes: BigInt(size) }))
      .sort((a, b) => (a.model < b.model ? -1 : 1)),
    evidence: c.evidence.map((e) => ({
      at: timestampFromMs(e.at),
      kind: e.kind,
      models: [...e.models],
      totalBytes: BigInt(e.totalBytes),
      fromNode: e.from ?? "",
    })),
    loading: loading ?? "",
    borrowedFrom: c.borrowedFrom ?? "",
  };
}

/** Models whose slots were lowered on a node, by name. */
function loweredSlots(state: NodeState) {
  return [...state.slotLearning]
    .filter(([, l]) => l.slots < l.configured)
    .map(([model, l]) => ({
      model,
      configured: l.configured,
      slots: l.slots,
      waits: l.waits,
      loweredAt: l.loweredAt === undefined ? undefined : timestampFromMs(l.loweredAt),
    }))
    .sort((a, b) => (a.model < b.model ? -1 : 1));
}

/** GatewayService: the gateway's own view of itself and the fleet. */
export function createGatewayService(deps: GatewayServiceDeps): ServiceImpl<typeof GatewayService> {
  return {
    async getStatus(_req, ctx) {
      const now = Date.now();
      const uptimeMs = now - deps.startedAtMs;
      const draining = new Map(deps.scheduler.draining().map((d) => [d.node, d.model]));
      const nodes = await Promise.all(
        deps.nodes.map(async (node) => {
          const healthy = deps.health.isHealthy(node.name);
          let loaded: string[] = [];
          if (healthy) {
            const signal = AbortSignal.any([ctx.signal, AbortSignal.timeout(PS_LOOKUP_MS)]);
            loaded = (await deps.metadata.ps(node, signal).catch(() => [])).map((r) => r.name).sort();
          }
          const state = deps.fleet.get(node.name);
          const models = state
            ? [...state.models]
                .map(([model, m]) => ({
                  model,
                  inFlight: m.inFlight,
                  slots: deps.fleet.slots(state, m.embeddingOnly, model),
                }))
                .sort((a, b) => (a.model < b.model ? -1 : 1))
            : [];
          return {
            name: node.name,
            url: redactUrl(node.url),
            healthy,
            ollamaVersion: deps.health.version(node.name) ?? "",
            loadedModels: loaded,
            circuitState: deps.health.state(node.name),
            inFlight: models.reduce((n, m) => n + m.inFlight, 0),
            parallel: state?.config.parallel ?? 0,
            maxLoadedModels: state?.config.maxLoadedModels ?? 0,
            models,
            drainingFor: draining.get(node.name) ?? "",
            capacity: state ? capacityStatus(state.capacity, state.loading?.model) : undefined,
            loweredSlots: state ? loweredSlots(state) : [],
          };
        }),
      );
      const stats = deps.cache.stats();
      return {
        version: deps.version,
        uptime: { seconds: BigInt(Math.floor(uptimeMs / 1000)), nanos: (uptimeMs % 1000) * 1e6 },
        startedAt: timestampFromMs(deps.startedAtMs),
        nodes,
        activeCalls: deps.activeCalls(),
        queues: deps.scheduler.queues(),
        slotsShared: deps.slotsShared(),
        cache: {
          backend: stats.backend,
          healthy: stats.healthy,
          counters: Object.entries(stats.kinds)
            .map(([kind, c]) => ({ kind, hits: BigInt(c.hits), misses: BigInt(c.misses) }))
            .sort((a, b) => (a.kind < b.kind ? -1 : 1)),
          memoryEntries: BigInt(stats.memoryEntries),
          memoryBytes: BigInt(stats.memoryBytes),
          redisErrors: BigInt(stats.redisErrors),
          embeddingsEnabled: deps.embeddingsCached,
        },
      };
    },
  };
}
