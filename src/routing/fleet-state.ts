import type { NodeConfig } from "../config/config.js";
import type { OllamaNode } from "../upstream/ollama-node.js";
import type { NodeCapacity, ResidentModel } from "./capacity-model.js";
import {
  assumeSize,
  borrowBounds,
  createCapacity,
  evictionsFor,
  observeLoad,
  observeResidency,
} from "./capacity-model.js";
import { slotsFor } from "./policy-snapshot.js";
import type { SlotLearning, SlotSample } from "./slot-learning.js";
import { createSlotLearning, observeSlots } from "./slot-learning.js";

/** What the gateway knows about one model on one node. */
export interface ModelOnNode {
  /** Requests the gateway has running there now. */
  inFlight: number;
  /** Last time a request for it started or ended there (ms). */
  lastUsed: number;
  /** Embedding-only models get one slot (Ollama forces that); known once a request ran. */
  embeddingOnly: boolean;
}

/** A load the gateway sent to a node that /api/ps has not confirmed yet. */
export interface PendingLoad {
  /** The model being loaded. */
  readonly model: string;
  /** What /api/ps last showed on the node before it (what an eviction is measured against). */
  readonly before: readonly ResidentModel[];
  /** When it was sent, ms since the epoch. */
  readonly since: number;
}

/** One node with its limits and the models the gateway believes are loaded there. */
export interface NodeState {
  /** The node. */
  node: OllamaNode;
  /** Its configured limits. */
  config: NodeConfig;
  /** Loaded (or loading) models by canonical name. */
  models: Map<string, ModelOnNode>;
  /** What fits together there, learned from Ollama (replaced by every observation). */
  capacity: NodeCapacity;
  /** What /api/ps last showed there (sizes included). */
  resident: readonly ResidentModel[];
  /** A load sent there and not confirmed by /api/ps yet. */
  loading: PendingLoad | undefined;
  /** Per model: what its requests' timings showed about the slots (only models seen running next to another). */
  slotLearning: Map<string, SlotLearning>;
  /** Per model whose slots were lowered there: the slots it gets now. */
  slotLimits: Map<string, number>;
}

/**
 * The gateway's live picture of the fleet: which models are loaded where, how many requests it
 * has running on each, and what each node was seen to hold at once. It is updated at once by the
 * gateway's own dispatches (a request for a model that was not loaded makes it loaded, and pushes
 * out the models the capacity model says Ollama will evict for it), and corrected from /api/ps:
 * periodically by `sync`, and right after a load by `loadObserved`, which also teaches the node's
 * capacity model what was evicted. A node that has seen no eviction yet borrows the upper bound of
 * one configured alike (`borrowBounds`), so one node's eviction spares the others theirs.
 */
export interface FleetState {
  /** Every node, in configuration order. */
  readonly nodes: readonly NodeState[];
  /** The state of a node by name. */
  get(node: string): NodeState | undefined;
  /**
   * Slots a model gets on a node: the node's parallel setting, 1 for embedding-only models (Ollama
   * forces that), fewer where the node was seen to serve fewer of `model` at once.
   */
  slots(state: NodeState, embeddingOnly: boolean, model?: string): number;
  /**
   * Records a request starting on a node. True when the model was not loaded there: the request
   * loads it (the node's `loading` is set until `loadObserved` or `cancelLoad`). `sizeBytes` is
   * the size to assume where the node has not shown the model yet.
   */
  begin(state: NodeState, model: string, embeddingOnly: boolean, sizeBytes?: number): boolean;
  /** Records a request ending on a node. */
  end(state: NodeState, model: string): void;
  /**
   * Replaces what is loaded on a node with what its /api/ps says (keeping models with requests
   * running, or used in the last seconds), and learns sizes and co-residence from it.
   */
  sync(node: string, loaded: readonly ResidentModel[]): void;
  /**
   * What /api/ps showed on the node after the load of `model` the gateway sent there (undefined:
   * no answer): learns what was evicted for it, brings the picture in line, ends the pending load.
   * Returns the capacity before and after, so the caller can report what changed.
   */
  loadObserved(
    state: NodeState,
    model: string,
    after: readonly ResidentModel[] | undefined,
  ): { before: NodeCapacity; after: NodeCapacity };
  /** The load of `model` begun on the node was not sent after all (the slot was refused). */
  cancelLoad(state: NodeState, model: string): void;
  /** Bytes `model` takes loaded as some node showed it (the largest seen), if any did. */
  sizeHint(model: string): number | undefined;
  /**
   * What one finished request's timings tell about the node's slots for `model`; returns the
   * learning when this lowered them (the caller logs it once).
   */
  observeSlots(state: NodeState, model: string, sample: SlotSample): SlotLearning | undefined;
}

/** How long the gateway trusts its own recent dispatches over what /api/ps says (ps may be cached, and loads take time). */
const RECENT_MS = 5_000;

/** Creates the state for these nodes. */
export function createFleetState(nodes: readonly { node: OllamaNode; config: NodeConfig }[]): FleetState {
  const states: NodeState[] = nodes.map((n) => ({
    ...n,
    models: new Map(),
    capacity: createCapacity({ maxLoadedModels: n.config.maxLoadedModels, vramBytes: n.config.vramBytes }),
    resident: [],
    loading: undefined,
    slotLearning: new Map(),
    slotLimits: new Map(),
  }));
  const byName = new Map(states.map((s) => [s.node.name, s]));
  // When the gateway's own dispatch pushed a model out of a node ("node\0model" → ms). A /api/ps
  // answer read before the eviction must not put it back, or the next request for it would be
  // sent there and make Ollama swap the models again.
  const evictedAt = new Map<string, number>();

  function applyPs(state: NodeState, loaded: readonly ResidentModel[], trustPs: boolean): void {
    const node = state.node.name;
    const now = Date.now();
    const seen = new Set(loaded.map((m) => m.name));
    for (const name of seen) {
      const key = `${node}\0${name}`;
      const evicted = evictedAt.get(key);
      if (!trustPs && evicted !== undefined && now - evicted < RECENT_MS) continue;
      if (evicted !== undefined) evictedAt.delete(key);
      if (!state.models.has(name)) state.models.set(name, { inFlight: 0, lastUsed: 0, embeddingOnly: false });
    }
    for (const [name, m] of state.models) {
      // A model used in the last few seconds may not show in ps yet (still loading), unless this
      // answer was read after its load was sent.
      const recent = now - m.lastUsed <= RECENT_MS && !trustPs;
      if (!seen.has(name) && m.inFlight === 0 && !recent) state.models.delete(name);
    }
    state.resident = loaded;
    state.capacity = observeResidency(state.capacity, loaded, now);
    share(state);
  }

  /** Lends `from`'s upper bound to the nodes configured alike that have seen no eviction yet. */
  function share(from: NodeState): void {
    const now = Date.now();
    for (const s of states) if (s !== from) s.capacity = borrowBounds(s.capacity, from.capacity, from.node.name, now);
  }

  return {
    nodes: states,
    get: (node) => byName.get(node),
    slots: (state, embeddingOnly, model) =>
      slotsFor({ parallel: state.config.parallel, slotLimits: state.slotLimits }, embeddingOnly, model),
    begin(state, model, embeddingOnly, sizeBytes) {
      let m = state.models.get(model);
      const load = m === undefined;
      if (m === undefined) {
        // Ollama evicts to make room (memory and count): mirror it by forgetting the idle models
        // the capacity model says it will push out. A busy one stays until /api/ps says otherwise
        // (Ollama waits for its requests to end).
        const victims = evictionsFor(state.capacity, state.models, model, sizeBytes);
        for (const victim of victims) {
          if ((state.models.get(victim)?.inFlight ?? 0) > 0) continue;
          state.models.delete(victim);
          evictedAt.set(`${state.node.name}\0${victim}`, Date.now());
        }
        m = { inFlight: 0, lastUsed: 0, embeddingOnly };
        state.models.set(model, m);
        state.capacity = assumeSize(state.capacity, model, sizeBytes);
        state.loading = { model, before: state.resident, since: Date.now() };
      }
      m.inFlight++;
      m.lastUsed = Date.now();
      m.embeddingOnly = embeddingOnly;
      return load;
    },
    end(state, model) {
      const m = state.models.get(model);
      if (m === undefined) return;
      m.inFlight = Math.max(0, m.inFlight - 1);
      m.lastUsed = Date.now();
    },
    sync(node, loaded) {
      const state = byName.get(node);
      if (state !== undefined) applyPs(state, loaded, false);
    },
    loadObserved(state, model, after) {
      const before = state.capacity;
      const pending = state.loading;
      if (pending?.model === model) state.loading = undefined;
      if (after === undefined) return { before, after: before };
      if (pending?.model === model && after.some((m) => m.name === model)) {
        state.capacity = observeLoad(state.capacity, {
          model,
          before: pending.before,
          after,
          now: Date.now(),
        });
      }
      // Read after the load was sent: what it shows is the truth, evictions the gateway expected included.
      applyPs(state, after, true);
      return { before, after: state.capacity };
    },
    cancelLoad(state, model) {
      if (state.loading?.model === model) state.loading = undefined;
    },
    sizeHint(model) {
      let best: number | undefined;
      for (const s of states) {
        const size = s.capacity.sizes.get(model);
        if (size !== undefined && (best === undefined || size > best)) best = size;
      }
      return best;
    },
    observeSlots(state, model, sample) {
      const prev = state.slotLearning.get(model) ?? createSlotLearning(state.config.parallel);
      const { next, lowered: didLower } = observeSlots(prev, sample);
      state.slotLearning.set(model, next);
      if (!didLower) return undefined;
      state.slotLimits.set(model, next.slots);
      return next;
    },
  };
}
