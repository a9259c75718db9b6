/**
 * The plain-data picture of the fleet that the placement, drain and wait policies decide on
 * (`placement-policy.ts`, `drain-policy.ts`, `wait-estimate.ts`). The scheduler builds one from its
 * live state right before each decision; the policies only read it, so they can be tested with
 * tables of hand-written fleets instead of timed end-to-end runs.
 */
import type { NodeCapacity } from "./capacity-model.js";
import { createCapacity, evictionsFor, fitsForSure, residencyCertain } from "./capacity-model.js";

/** One model on one node, as far as the gateway knows. */
export interface ModelLoad {
  /** Requests the gateway has running there now (including slots reserved a moment ago). */
  readonly inFlight: number;
  /** Last time a request for it started or ended there, ms since the epoch (0 = never). */
  readonly lastUsed: number;
}

/** One node: its limits, health, what is loaded there and whether it is being drained. */
export interface NodeView {
  /** Unique node name. */
  readonly name: string;
  /** Routable (circuit closed or half-open). */
  readonly healthy: boolean;
  /** Relative share of traffic among equally good nodes. */
  readonly weight: number;
  /** Models the node keeps loaded at once (its OLLAMA_MAX_LOADED_MODELS): an upper bound. */
  readonly maxLoadedModels: number;
  /** Slots per loaded model (its OLLAMA_NUM_PARALLEL); embedding-only models get 1 (see `slotsFor`). */
  readonly parallel: number;
  /**
   * What fits together there, learned from Ollama (`capacity-model.ts`); absent = the count
   * `maxLoadedModels` alone decides, as configured.
   */
  readonly capacity?: NodeCapacity | undefined;
  /**
   * A model the gateway sent there to load whose arrival /api/ps has not confirmed yet: until
   * it does, the node takes no other load, and models that might be pushed out by it take no new
   * requests (unless they are known to fit next to it).
   */
  readonly loading?: string | undefined;
  /** Slots lowered per model, where the node was seen to serve fewer than `parallel` (`slot-learning.ts`). */
  readonly slotLimits?: ReadonlyMap<string, number> | undefined;
  /** Loaded (or loading) models by canonical name. */
  readonly models: ReadonlyMap<string, ModelLoad>;
  /** The model this node is being drained for, if any: it takes no new work of other models. */
  readonly drainingFor?: string | undefined;
}

/** One model's admission queue. */
export interface QueueView {
  /** Requests waiting. */
  readonly depth: number;
  /** How long the head of the queue (the next to be placed) has waited, ms. */
  readonly headWaitMs: number;
  /** The head's priority (higher goes first). */
  readonly headPriority: number;
}

/** The queues as the policies read them: one model's queue at a time. */
export interface QueueLookup {
  /** The model's queue, or undefined when nobody waits for it. */
  get(model: string): QueueView | undefined;
}

/** Everything the policies read: nodes, queues, learned times and the clock, frozen by the caller. */
export interface FleetView {
  /** Every node of the fleet, in configuration order (ties go to the earlier node). */
  readonly nodes: readonly NodeView[];
  /**
   * Queues by canonical model name; a model absent here has nobody waiting. Only looked up by
   * model (a `Map` fits), so the scheduler can answer lookups from its live queues instead of
   * copying every queue into each view.
   */
  readonly queues: QueueLookup;
  /** Per model: how long a request holds its slot, loads excluded (smoothed, ms). */
  readonly serviceMs: ReadonlyMap<string, number>;
  /** Per model: how long a node takes to load it (smoothed `load_duration`, ms). */
  readonly loadMs: ReadonlyMap<string, number>;
  /** The time of the decision, ms since the epoch. */
  readonly now: number;
}

/** What one request needs from the fleet. */
export interface PlacementRequest {
  /** Canonical model name. */
  readonly model: string;
  /** Nodes that have the model installed. */
  readonly candidates: ReadonlySet<string>;
  /** Nodes not to use (they just failed this request). */
  readonly exclude?: ReadonlySet<string> | undefined;
  /** Embedding-only models get one slot per node. */
  readonly embeddingOnly: boolean;
  /** The node that served this request's session last (affinity), if any. */
  readonly affinityNode?: string | undefined;
  /**
   * Bytes the model takes loaded, where a node has not shown it yet: as seen on another node, else
   * its file size (a low guess: the KV cache comes on top). Undefined = unknown (the count decides).
   */
  readonly sizeBytes?: number | undefined;
}

/**
 * Slots a model gets on a node: its parallel setting, 1 for embedding-only models (Ollama forces
 * that), fewer where the node was seen to serve fewer (`slotLimits`).
 */
export function slotsFor(
  node: Pick<NodeView, "parallel" | "slotLimits">,
  embeddingOnly: boolean,
  model?: string,
): number {
  if (embeddingOnly) return 1;
  const lowered = model === undefined ? undefined : node.slotLimits?.get(model);
  return lowered === undefined ? node.parallel : Math.min(node.parallel, lowered);
}

/** The node's capacity model, or one that knows only the configured count. */
function capacityOf(node: NodeView): NodeCapacity {
  return node.capacity ?? createCapacity({ maxLoadedModels: node.maxLoadedModels });
}

/**
 * The models that would leave `node` for `model` to load there (Ollama's order: idle first, least
 * recently used first); `[]` = it fits next to them (or is loaded already).
 */
export function evictionsOn(node: NodeView, model: string, sizeBytes: number | undefined): string[] {
  return evictionsFor(capacityOf(node), node.models, model, sizeBytes);
}

/**
 * True when `model` is known to fit on `node` without evicting anything (not merely not known to
 * be full). A node without a capacity model is taken at its configured count.
 */
export function roomForSure(node: NodeView, model: string, sizeBytes: number | undefined): boolean {
  if (node.capacity === undefined) return evictionsOn(node, model, sizeBytes).length === 0;
  return fitsForSure(node.capacity, node.models, model, sizeBytes);
}

/**
 * How `node` can take a load of `model` without evicting, if it can: `sure` when it is known to
 * fit; `guess` when it is merely not known to be full and every model there is idle with nobody
 * waiting for it (so if Ollama does evict, nothing in use is lost, and the gateway learns); else
 * undefined — a node not known to be full whose models are in use is not risked.
 */
export function roomFor(
  view: FleetView,
  node: NodeView,
  model: string,
  sizeBytes: number | undefined,
): "sure" | "guess" | undefined {
  if (evictionsOn(node, model, sizeBytes).length > 0) return undefined;
  if (roomForSure(node, model, sizeBytes)) return "sure";
  for (const [name, m] of node.models) if (m.inFlight > 0 || isWaiting(view, name)) return undefined;
  return "guess";
}

/**
 * True when `node` may take a new request for `model`, which is loaded there: always, except
 * while a load of another model the gateway sent there is unconfirmed and the two are not known to
 * fit together (the load may be pushing `model` out).
 */
export function mayServe(node: NodeView, model: string): boolean {
  if (node.loading === undefined || node.loading === model) return true;
  return node.capacity === undefined
    ? node.models.size <= node.maxLoadedModels
    : residencyCertain(node.capacity, node.models);
}

/** Requests the gateway has running on a node, all models together. */
export function inFlightOn(node: NodeView): number {
  let n = 0;
  for (const m of node.models.values()) n += m.inFlight;
  return n;
}

/** Requests running on a node relative to its weight: what "least loaded" compares. */
export function weightedLoad(node: NodeView): number {
  return inFlightOn(node) / Math.max(0.001, node.weight);
}

/** True when somebody waits in `model`'s queue. */
export function isWaiting(view: FleetView, model: string): boolean {
  return (view.queues.get(model)?.depth ?? 0) > 0;
}

/** How long the head of `model`'s queue has waited, ms (0 when nobody waits). */
export function headWaitMs(view: FleetView, model: string): number {
  return view.queues.get(model)?.headWaitMs ?? 0;
}

/** True when `model` is loaded on a healthy node other than `except`. */
export function loadedElsewhere(view: FleetView, model: string, except: NodeView): boolean {
  return view.nodes.some((o) => o !== except && o.healthy && o.models.has(model));
}

/** True when a request may use the node at all: installed there, healthy, not excluded. */
export function isUsable(node: NodeView, req: PlacementRequest): boolean {
  return req.candidates.has(node.name) && !req.exclude?.has(node.name) && node.healthy;
}

/** The nodes a request may use at all (`isUsable`). */
export function usableNodes(view: FleetView, req: PlacementRequest): NodeView[] {
  return view.nodes.filter((s) => isUsable(s, req));
}
