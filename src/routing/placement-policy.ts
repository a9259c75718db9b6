/**
 * Placement policy: which node a request goes to right now, if any (README, "Routing across a
 * fleet", Choosing a node). A pure function over a `FleetView`; the scheduler reserves the slot
 * and asks the shared gate.
 */
import type { RebalanceOptions } from "./drain-policy.js";
import { spare, worthALoad } from "./drain-policy.js";
import type { FleetView, NodeView, PlacementRequest } from "./policy-snapshot.js";
import {
  evictionsOn,
  inFlightOn,
  isUsable,
  isWaiting,
  mayServe,
  roomFor,
  slotsFor,
  usableNodes,
  weightedLoad,
} from "./policy-snapshot.js";

/**
 * Why a node was chosen, in the order the rules are tried:
 * - `drained`: it was drained for this model and is now empty: load the model there (ends the drain);
 * - `loaded`: the model is loaded there with a free slot;
 * - `room`: it can load the model without evicting anything (known room before a guess);
 * - `idle`: the model is loaded on no usable node, and the models this node would push out for it
 *   are idle;
 * - `scale-out`: the queue waited longer than two loads, and the idle models this node would push
 *   out lose nothing by leaving (loaded elsewhere too, or cold).
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

/**
 * True when every model `node` would push out for `req.model` has nothing running and nobody
 * waiting (and `alsoIf` accepts it); false when nothing would be pushed out.
 */
function victimsIdle(
  view: FleetView,
  node: NodeView,
  req: PlacementRequest,
  alsoIf: (name: string) => boolean = () => true,
): boolean {
  const victims = evictionsOn(node, req.model, req.sizeBytes);
  return (
    victims.length > 0 &&
    victims.every((name) => node.models.get(name)!.inFlight === 0 && !isWaiting(view, name) && alsoIf(name))
  );
}

/**
 * The node `req` should be bound to now, or undefined when it must wait for a slot. Among the
 * usable nodes (installed, healthy, not excluded), and never a node drained for another model:
 * 1. a node drained for this model that has emptied (`drained`);
 * 2. a node where the model is loaded with a free slot (`loaded`) — the session's node first, else
 *    the least weighted load; while a load sent to that node is unconfirmed and may be pushing the
 *    model out, the request rather waits for /api/ps than loads the model a second time elsewhere;
 * 3. a node with room to load it without evicting (`room`): one known to have room (empty, or the
 *    total seen to fit) before one merely not known to be full — and that only when nothing on it
 *    is in use (`roomFor`): a wrong guess then costs an idle model, and teaches the capacity model;
 * 4. only when the model is loaded on no usable node: a node whose models to push out are idle (`idle`);
 * 5. with rebalancing, once the queue head waited longer than two loads: a node whose models to
 *    push out are idle and spare (`scale-out`).
 * "Push out" is the capacity model's answer (`evictionsOn`): memory and count, not the count alone.
 * A node with an unconfirmed load takes no other load. A model with requests running or queued is
 * never pushed out here; that is the drain policy's call (`chooseDrainVictim`), asked when this
 * returns undefined.
 */
export function choosePlacement(
  view: FleetView,
  req: PlacementRequest,
  options: RebalanceOptions = { rebalance: true },
): Placement | undefined {
  // One pass without allocating (this runs several times per call): a drained node wins at once
  // (nothing else returns inside the loop, so it wins over every node before it too); nodes
  // drained for another model take no new work; among the open nodes where the model is loaded
  // with a free slot, the session's node, else the least weighted load (the earlier on ties) wins
  // next, unless none is free and one may be losing the model to a load in flight (wait for /api/ps).
  let preferred: NodeView | undefined;
  let best: NodeView | undefined;
  let bestLoad = Number.POSITIVE_INFINITY;
  let unsure = false;
  let someNotLoaded = false;
  for (const s of view.nodes) {
    if (!isUsable(s, req)) continue;
    if (s.drainingFor === req.model && inFlightOn(s) === 0) return { node: s.name, rule: "drained" };
    if (s.drainingFor !== undefined && s.drainingFor !== req.model) continue;
    const m = s.models.get(req.model);
    if (m === undefined) {
      if (s.drainingFor === undefined && s.loading === undefined) someNotLoaded = true;
      continue;
    }
    if (!mayServe(s, req.model)) unsure = true;
    else if (m.inFlight < slotsFor(s, req.embeddingOnly, req.model)) {
      if (preferred === undefined && s.name === req.affinityNode) preferred = s;
      const load = weightedLoad(s);
      if (load < bestLoad) {
        best = s;
        bestLoad = load;
      }
    }
  }
  if (best !== undefined) return { node: (preferred ?? best).name, rule: "loaded" };
  // Every rule below places on a node without the model: none, nothing to place.
  if (unsure || !someNotLoaded) return undefined;
  const chosen = (list: readonly NodeView[], rule: PlacementRule): Placement | undefined => {
    const s = pick(list, req.affinityNode);
    return s === undefined ? undefined : { node: s.name, rule };
  };
  const usable = usableNodes(view, req);
  const notLoaded = usable.filter(
    (s) => !s.models.has(req.model) && s.drainingFor === undefined && s.loading === undefined,
  );
  const room = notLoaded.map((s) => ({ s, how: roomFor(view, s, req.model, req.sizeBytes) }));
  const sure = room.filter((r) => r.how === "sure").map((r) => r.s);
  const guess = room.filter((r) => r.how === "guess").map((r) => r.s);
  if (sure.length > 0 || guess.length > 0) return chosen(sure.length > 0 ? sure : guess, "room");
  const loadedSomewhere = usable.some((s) => s.models.has(req.model));
  const idle = notLoaded.filter((s) => victimsIdle(view, s, req));
  // Wait for a slot rather than evict; a model loaded nowhere takes any idle node.
  if (idle.length > 0 && !loadedSomewhere) return chosen(idle, "idle");
  if (options.rebalance && idle.length > 0 && worthALoad(view, req.model)) {
    const free = idle.filter((s) => victimsIdle(view, s, req, (name) => spare(view, s, name, s.models.get(name)!)));
    if (free.length > 0) return chosen(free, "scale-out");
  }
  return undefined;
}
