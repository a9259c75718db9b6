import type { NodeConfig } from "../config/config.js";
import type { OllamaNode } from "../upstream/ollama-node.js";
import { slotsFor } from "./policy-snapshot.js";

/** What the gateway knows about one model on one node. */
export interface ModelOnNode {
  /** Requests the gateway has running there now. */
  inFlight: number;
  /** Last time a request for it started or ended there (ms). */
  lastUsed: number;
  /** Embedding-only models get one slot (Ollama forces that); known once a request ran. */
  embeddingOnly: boolean;
}

/** One node with its limits and the models the gateway believes are loaded there. */
export interface NodeState {
  /** The node. */
  node: OllamaNode;
  /** Its configured limits. */
  config: NodeConfig;
  /** Loaded (or loading) models by canonical name. */
  models: Map<string, ModelOnNode>;
}

/**
 * The gateway's live picture of the fleet: which models are loaded where
 * and how many requests it has running on each. It is updated at once by the
 * gateway's own dispatches (a request for a model that was not loaded makes
 * it loaded, and may push out the least recently used idle model, as Ollama
 * does), and corrected from /api/ps by `sync`.
 */
export interface FleetState {
  /** Every node, in configuration order. */
  readonly nodes: readonly NodeState[];
  /** The state of a node by name. */
  get(node: string): NodeState | undefined;
  /** Slots a model gets on a node: the node's parallel setting, 1 for embedding-only models (Ollama forces that). */
  slots(state: NodeState, embeddingOnly: boolean): number;
  /** Records a request starting on a node. */
  begin(state: NodeState, model: string, embeddingOnly: boolean): void;
  /** Records a request ending on a node. */
  end(state: NodeState, model: string): void;
  /** Replaces what is loaded on a node with what its /api/ps says (keeping models with requests running). */
  sync(node: string, loaded: readonly string[]): void;
}

/** How long the gateway trusts its own recent dispatches over what /api/ps says (ps may be cached, and loads take time). */
const RECENT_MS = 5_000;

/** Creates the state for these nodes. */
export function createFleetState(nodes: readonly { node: OllamaNode; config: NodeConfig }[]): FleetState {
  const states: NodeState[] = nodes.map((n) => ({ ...n, models: new Map() }));
  const byName = new Map(states.map((s) => [s.node.name, s]));
  // When the gateway's own dispatch pushed a model out of a node ("node\0model" → ms). A /api/ps
  // answer read before the eviction must not put it back, or the next request for it would be
  // sent there and make Ollama swap the models again.
  const evictedAt = new Map<string, number>();
  return {
    nodes: states,
    get: (node) => byName.get(node),
    slots: (state, embeddingOnly) => slotsFor(state.config, embeddingOnly),
    begin(state, model, embeddingOnly) {
      let m = state.models.get(model);
      if (m === undefined) {
        m = { inFlight: 0, lastUsed: 0, embeddingOnly };
        state.models.set(model, m);
        // Ollama evicts to stay within its limit: mirror it by forgetting the
        // least recently used idle model.
        if (state.models.size > state.config.maxLoadedModels) {
          let victim: string | undefined;
          let oldest = Infinity;
          for (const [name, other] of state.models) {
            if (name !== model && other.inFlight === 0 && other.lastUsed < oldest) {
              oldest = other.lastUsed;
              victim = name;
            }
          }
          if (victim !== undefined) {
            state.models.delete(victim);
            evictedAt.set(`${state.node.name}\0${victim}`, Date.now());
          }
        }
      }
      m.inFlight++;
      m.lastUsed = Date.now();
      m.embeddingOnly = embeddingOnly;
    },
    end(state, model) {
      const m = state.models.get(model);
      if (m === undefined) return;
      m.inFlight = Math.max(0, m.inFlight - 1);
      m.lastUsed = Date.now();
    },
    sync(node, loaded) {
      const state = byName.get(node);
      if (state === undefined) return;
      const now = Date.now();
      const seen = new Set(loaded);
      for (const name of seen) {
        const key = `${node}\0${name}`;
        const evicted = evictedAt.get(key);
        if (evicted !== undefined && now - evicted < RECENT_MS) continue;
        if (evicted !== undefined) evictedAt.delete(key);
        if (!state.models.has(name)) state.models.set(name, { inFlight: 0, lastUsed: 0, embeddingOnly: false });
      }
      for (const [name, m] of state.models) {
        // A model used in the last few seconds may not show in ps yet (still loading).
        if (!seen.has(name) && m.inFlight === 0 && now - m.lastUsed > RECENT_MS) state.models.delete(name);
      }
    },
  };
}
