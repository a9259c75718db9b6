/**
 * Rebalancing policy: when a model is hungry enough to get a node of its own, and which node gives
 * way (README, "Routing across a fleet", Rebalancing). Pure functions over a `FleetView`; the
 * scheduler keeps the drains and acts on these answers.
 */
import type { FleetView, ModelLoad, NodeView, PlacementRequest } from "./policy-snapshot.js";
import { headWaitMs, isUsable, isWaiting, loadedElsewhere, roomFor, weightedLoad } from "./policy-snapshot.js";

/** Assumed model load time before one was measured: seconds, as for a 3–8 B model. */
export const DEFAULT_LOAD_MS = 3_000;
/** A hungry model's head must have waited at least this long before it is worth a load elsewhere. */
export const MIN_REBALANCE_WAIT_MS = 500;
/** An idle model unused this long may be pushed out for a busier one even where it is loaded nowhere else. */
export const COLD_MS = 30_000;

/** Switches of the rebalancing policy. */
export interface RebalanceOptions {
  /** Drain nodes and scale hot models out (the REBALANCE setting). @default true */
  rebalance: boolean;
}

/**
 * True when `model`'s queue head has waited longer than two loads take: worth giving the model
 * another node. (Twice, so that a queue that merely waits for a load in progress does not trigger
 * another one elsewhere.)
 */
export function worthALoad(view: FleetView, model: string): boolean {
  const load = view.loadMs.get(model) ?? DEFAULT_LOAD_MS;
  return headWaitMs(view, model) >= Math.max(MIN_REBALANCE_WAIT_MS, 2 * load);
}

/**
 * True when pushing the idle model `name` out of `node` costs nothing: it stays loaded on another
 * healthy node, or nobody used it for `COLD_MS`.
 */
export function spare(view: FleetView, node: NodeView, name: string, m: ModelLoad): boolean {
  return loadedElsewhere(view, name, node) || view.now - m.lastUsed >= COLD_MS;
}

/**
 * What draining `node` for `hungry` costs the models on it, or undefined when it is not allowed.
 * The cost of a node is that of its dearest model:
 * - 0: idle (nothing running, nobody waiting);
 * - 1: loaded on another node too, nobody waiting;
 * - 2: loaded on another node too, requests waiting;
 * - 3: loaded only here, nobody waiting;
 * - 4: loaded only here with requests waiting — allowed only when `hungry`'s head has waited
 *   longer than that model's (oldest first, so two hot models on too few nodes take turns).
 *
 * A model that is served somewhere (`starving` false) is only scaled out over costs 0 and 1: that
 * never takes capacity a queue needs.
 */
export function drainCost(view: FleetView, node: NodeView, hungry: string, starving: boolean): number | undefined {
  let cost = 0;
  for (const [name, m] of node.models) {
    if (name === hungry) return undefined;
    const elsewhere = loadedElsewhere(view, name, node);
    const queuedToo = isWaiting(view, name);
    let c: number;
    if (m.inFlight === 0 && !queuedToo) c = 0;
    else if (elsewhere) c = queuedToo ? 2 : 1;
    else if (!queuedToo) c = 3;
    else if (headWaitMs(view, hungry) > headWaitMs(view, name)) c = 4;
    else return undefined;
    cost = Math.max(cost, c);
  }
  return starving || cost <= 1 ? cost : undefined;
}

/**
 * The node to drain for `req.model`, or undefined. Asked only when no node can take the request
 * now. A node is drained when the model is loaded on none of the request's usable nodes
 * (starving), or its head has waited longer than two loads (`worthALoad`); at most one node is
 * drained per model at a time. Candidates are nodes without the model, not drained already, that
 * the placement policy would not load it on directly (`roomFor`: by memory and count it must
 * evict, or it is not known to have room and its models are in use); the cheapest by `drainCost` wins, then the least weighted load, then the
 * earlier node.
 */
export function chooseDrainVictim(
  view: FleetView,
  req: PlacementRequest,
  options: RebalanceOptions = { rebalance: true },
): string | undefined {
  if (!options.rebalance) return undefined;
  // Asked each time a request must wait: the common answers come from one pass that allocates nothing.
  let starving = true;
  for (const s of view.nodes) {
    if (s.drainingFor === req.model) return undefined;
    if (starving && isUsable(s, req) && s.models.has(req.model)) starving = false;
  }
  if (!starving && !worthALoad(view, req.model)) return undefined;
  let best: { node: NodeView; cost: number; busy: number } | undefined;
  for (const s of view.nodes) {
    if (!isUsable(s, req) || s.drainingFor !== undefined || s.models.has(req.model)) continue;
    // Room: chosen directly, never drained.
    if (roomFor(view, s, req.model, req.sizeBytes) !== undefined) continue;
    const cost = drainCost(view, s, req.model, starving);
    if (cost === undefined) continue;
    const busy = weightedLoad(s);
    if (best === undefined || cost < best.cost || (cost === best.cost && busy < best.busy)) {
      best = { node: s, cost, busy };
    }
  }
  return best?.node.name;
}

/** Nodes whose drain is no longer needed: nobody waits for the model any more, or the node cannot serve. */
export function obsoleteDrains(view: FleetView): string[] {
  return view.nodes
    .filter((s) => s.drainingFor !== undefined && (!isWaiting(view, s.drainingFor) || !s.healthy))
    .map((s) => s.name);
}
