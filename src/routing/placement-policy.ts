/**
 * Placement policy: which node a request goes to right now, if any (README, "Routing across a
 * fleet", Choosing a node). A pure function over a `FleetView`; the scheduler reserves the slot
 * and asks the shared gate.
 */
import type { RebalanceOptions } from "./drain-policy.js";
import { spare, worthALoad } from "./drain-policy.js";
import type { FleetView, NodeView, PlacementRequest } from "./policy-snapshot.js";
import { inFlightOn, isWaiting, slotsFor, usableNodes, weightedLoad } from "./policy-snapshot.js";

/**
 * Why a node was chosen, in the order the rules are tried:
 * - `drained`: it was drained for this model and is now empty: load the model there (ends the drain);
 * - `loaded`: the model is loaded there with a free slot;
 * - `room`: it can load the model without evicting anything;
 * - `idle`: the model is loaded on no usable node, and this node has an idle model to push out;
 * - `scale-out`: the queue waited longer than two loads, and this node's idle model loses nothing
 *   by leaving (loaded elsewhere too, or cold).
 */
export type PlacementRule = "drained" | "loaded" | "room" | "idle" | "scale-out";

/** The node for a request, and the rule that chose it. */
export interface Placement {
  /** Node name. */
  node: string;
  /** Which rule chose it. */
  rule: PlacementRule;
}

/** Among equally good nodes: the session's node if it is one of them, else the least weighted load (earlier node on ties). */
function pick(list: readonly NodeView[], affinityNode: string | undefined): NodeView | undefined {
  if (list.length === 0) return undefined;
  const preferred = affinityNode === undefined ? undefined : list.find((s) => s.name === affinityNode);
  return preferred ?? list.reduce((best, s) => (weightedLoad(s) < weightedLoad(best) ? s : best));
}

/** True when `node` holds a model with nothing running and nobody waiting (that `alsoIf` accepts). */
function hasIdleModel(view: FleetView, node: NodeView, alsoIf: (name: string) => boolean = () => true): boolean {
  for (const [name, m] of node.models) if (m.inFlight === 0 && !isWaiting(view, name) && alsoIf(name)) return true;
  return false;
}

/**
 * The node `req` should be bound to now, or undefined when it must wait for a slot. Among the
 * usable nodes (installed, healthy, not excluded), and never a node drained for another model:
 * 1. a node drained for this model that has emptied (`drained`);
 * 2. a node where the model is loaded with a free slot (`loaded`) — the session's node first, else
 *    the least weighted load;
 * 3. a node with room to load it without evicting (`room`);
 * 4. only when the model is loaded on no usable node: a node with an idle model to push out (`idle`);
 * 5. with rebalancing, once the queue head waited longer than two loads: a node whose idle model
 *    is spare (`scale-out`).
 * A model with requests running or queued is never pushed out here; that is the drain policy's
 * call (`chooseDrainVictim`), asked when this returns undefined.
 */
export function choosePlacement(
  view: FleetView,
  req: PlacementRequest,
  options: RebalanceOptions = { rebalance: true },
): Placement | undefined {
  const usable = usableNodes(view, req);
  const drained = usable.find((s) => s.drainingFor === req.model && inFlightOn(s) === 0);
  if (drained) return { node: drained.name, rule: "drained" };
  // Nodes drained for another model take no new work.
  const open = usable.filter((s) => s.drainingFor === undefined || s.drainingFor === req.model);
  const chosen = (list: readonly NodeView[], rule: PlacementRule): Placement | undefined => {
    const s = pick(list, req.affinityNode);
    return s === undefined ? undefined : { node: s.name, rule };
  };
  const loadedFree = open.filter((s) => {
    const m = s.models.get(req.model);
    return m !== undefined && m.inFlight < slotsFor(s, req.embeddingOnly);
  });
  if (loadedFree.length > 0) return chosen(loadedFree, "loaded");
  const notLoaded = open.filter((s) => !s.models.has(req.model) && s.drainingFor === undefined);
  const withRoom = notLoaded.filter((s) => s.models.size < s.maxLoadedModels);
  if (withRoom.length > 0) return chosen(withRoom, "room");
  const loadedSomewhere = usable.some((s) => s.models.has(req.model));
  const idle = notLoaded.filter((s) => hasIdleModel(view, s));
  // Wait for a slot rather than evict; a model loaded nowhere takes any idle node.
  if (idle.length > 0 && !loadedSomewhere) return chosen(idle, "idle");
  if (options.rebalance && idle.length > 0 && worthALoad(view, req.model)) {
    const free = idle.filter((s) => hasIdleModel(view, s, (name) => spare(view, s, name, s.models.get(name)!)));
    if (free.length > 0) return chosen(free, "scale-out");
  }
  return undefined;
}
