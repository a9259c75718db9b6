/**
 * How long a queued request is expected to wait, and how the times behind that guess are learned
 * from finished requests (README, "Routing across a fleet", Admission: a deadline shorter than the
 * expected wait, or a wait over QUEUE_MAX_WAIT_MS, is refused at once). Pure functions.
 */
import type { FleetView } from "./policy-snapshot.js";
import { slotsFor } from "./policy-snapshot.js";

/** Weight of a new sample in the smoothed service and load times. */
export const EWMA = 0.2;
/** Reported load times at or below this are not loads (the model was already resident). */
export const MIN_LOAD_SAMPLE_MS = 50;

/** Which queue position of which model the estimate is for. */
export interface WaitQuery {
  /** Canonical model name. */
  model: string;
  /** 1 = the next request to be placed. */
  position: number;
  /** Nodes that have the model installed. */
  candidates: ReadonlySet<string>;
  /** Embedding-only models get one slot per node. */
  embeddingOnly: boolean;
}

/**
 * Predicted wait of the `position`-th request in a model's queue, ms, or undefined before any
 * request of the model finished (nothing to predict from): rounds of the model's service time over
 * the slots it has on healthy candidate nodes where it is loaded, plus one load when it is loaded
 * on none of them.
 */
export function expectedWaitMs(view: FleetView, q: WaitQuery): number | undefined {
  const svc = view.serviceMs.get(q.model);
  if (svc === undefined) return undefined;
  let slots = 0;
  for (const s of view.nodes) {
    if (q.candidates.has(s.name) && s.healthy && s.models.has(q.model)) slots += slotsFor(s, q.embeddingOnly, q.model);
  }
  const load = slots === 0 ? (view.loadMs.get(q.model) ?? 0) : 0;
  return load + Math.ceil(q.position / Math.max(1, slots)) * svc;
}

/** Learned times of one model; undefined = nothing measured yet. */
export interface LearnedTimes {
  /** How long a request holds its slot, loads excluded (ms). */
  serviceMs: number | undefined;
  /** How long loading the model takes (ms). */
  loadMs: number | undefined;
}

/**
 * The learned times after a request that held its slot `heldMs` and during which Ollama reported
 * `loadMs` of loading (`load_duration`; 0 when not reported). The load is taken out of the service
 * time, and counts as a load sample only above `MIN_LOAD_SAMPLE_MS`.
 */
export function learnTimes(
  prev: LearnedTimes,
  observed: { heldMs: number; loadMs: number },
): { serviceMs: number; loadMs: number | undefined } {
  const smooth = (p: number | undefined, x: number): number => (p === undefined ? x : p * (1 - EWMA) + x * EWMA);
  const took = Math.max(0, observed.heldMs - observed.loadMs);
  return {
    serviceMs: smooth(prev.serviceMs, took),
    loadMs: observed.loadMs > MIN_LOAD_SAMPLE_MS ? smooth(prev.loadMs, observed.loadMs) : prev.loadMs,
  };
}
