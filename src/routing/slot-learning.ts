/**
 * Parallel slots observed (README, "Routing across a fleet", Capacity): a node may serve fewer
 * requests of a model at once than its configured `parallel` (Ollama 0.9.7+ defaults
 * OLLAMA_NUM_PARALLEL to 1, older versions chose 4 or 1 by memory, and the config may simply be
 * wrong). A request that reaches Ollama while every slot is taken waits inside Ollama, where the
 * gateway cannot see it; Ollama's own timings show it: `total_duration` counts from the moment the
 * request arrived, `load_duration` the model getting ready, `prompt_eval_duration` and
 * `eval_duration` the work, so what is left is the wait for a slot.
 *
 * The rule (to keep cold loads and long prompts from being mistaken for it):
 * - a request *waited for a slot* when what is left is at least `SLOT_WAIT_MIN_MS` and a quarter
 *   of its work, while it did not load the model (`load_duration` ≤ 50 ms) and the gateway had
 *   at least one other request of the model running on the node during it. Its peak of the
 *   gateway's requests there (itself included) then bounds the node's slots: at most peak − 1;
 * - among the last `SLOT_WINDOW` requests that ran next to another, `SLOT_EVIDENCE` must have
 *   waited before the slots are lowered, to the largest of their bounds (the most cautious); the
 *   window then starts afresh, so a node with far fewer slots is lowered step by step.
 * Slots are never raised again by this (the gateway then never sends more than the lowered count,
 * so nothing could show more would be served); a restart of the gateway starts from the config.
 * Pure functions; the scheduler keeps one `SlotLearning` per node and model and logs a lowering.
 */

/** Ollama's timings of a finished request, ms (undefined when absent). */
export interface OllamaTimings {
  /** `total_duration`: from the request's arrival at Ollama to its end. */
  readonly totalMs?: number | undefined;
  /** `load_duration`: getting the model ready (loading, or waiting for a load). */
  readonly loadMs?: number | undefined;
  /** `prompt_eval_duration`: evaluating the prompt. */
  readonly promptEvalMs?: number | undefined;
  /** `eval_duration`: generating. */
  readonly evalMs?: number | undefined;
}

/** Least unexplained time that counts as a wait for a slot, ms. */
export const SLOT_WAIT_MIN_MS = 100;
/** A reported `load_duration` above this means the request loaded (or waited for a load), ms. */
export const LOADED_MS = 50;
/** Requests that ran next to another of the same model, looked at together. */
export const SLOT_WINDOW = 8;
/** Waits among them that lower the slots. */
export const SLOT_EVIDENCE = 3;

/** What one finished request tells about a node's slots for its model. */
export interface SlotSample {
  /** Ollama's timings. */
  readonly timings: OllamaTimings;
  /** Most requests of the model the gateway had running on the node during it, itself included. */
  readonly peak: number;
  /** When it ended, ms since the epoch. */
  readonly at: number;
}

/** One recent request that ran next to another. */
interface Recent {
  /** True when it waited for a slot. */
  readonly waited: boolean;
  /** The slots its wait implies at most (peak − 1). */
  readonly bound: number;
}

/** What the gateway learned about one model's slots on one node. Immutable. */
export interface SlotLearning {
  /** The configured slots (the node's `parallel`). */
  readonly configured: number;
  /** The slots used now: the configured count, or fewer once waits showed that. */
  readonly slots: number;
  /** Recent requests that ran next to another, oldest first (at most `SLOT_WINDOW`). */
  readonly recent: readonly Recent[];
  /** Requests seen waiting for a slot in all. */
  readonly waits: number;
  /** When the slots were last lowered, ms since the epoch (undefined = never). */
  readonly loweredAt: number | undefined;
}

/** Nothing learned yet: the configured slots. */
export function createSlotLearning(configured: number): SlotLearning {
  return { configured, slots: configured, recent: [], waits: 0, loweredAt: undefined };
}

/**
 * How long the request waited inside Ollama for a slot, ms; undefined when the timings cannot
 * tell (a metric missing) or the request loaded the model (its wait is a load, not a slot).
 */
export function slotWaitMs(t: OllamaTimings): number | undefined {
  if (t.totalMs === undefined || t.evalMs === undefined) return undefined;
  if ((t.loadMs ?? 0) > LOADED_MS) return undefined;
  return Math.max(0, t.totalMs - (t.loadMs ?? 0) - (t.promptEvalMs ?? 0) - t.evalMs);
}

/** True when the request waited for a slot by the rule above; undefined when it cannot tell. */
export function waitedForSlot(t: OllamaTimings): boolean | undefined {
  const wait = slotWaitMs(t);
  if (wait === undefined) return undefined;
  const work = (t.promptEvalMs ?? 0) + (t.evalMs ?? 0);
  return wait >= Math.max(SLOT_WAIT_MIN_MS, work / 4);
}

/** The learning after one finished request, and whether it lowered the slots. */
export function observeSlots(s: SlotLearning, sample: SlotSample): { next: SlotLearning; lowered: boolean } {
  if (sample.peak < 2 || s.slots <= 1) return { next: s, lowered: false };
  const waited = waitedForSlot(sample.timings);
  if (waited === undefined) return { next: s, lowered: false };
  // The common case, once per request: no wait in a full window of no waits. Only waited entries
  // are ever read (evidence), so the window is the same after it: nothing to copy.
  if (!waited && s.recent.length === SLOT_WINDOW && !anyWaited(s.recent)) return { next: s, lowered: false };
  const recent = [...s.recent, { waited, bound: Math.max(1, sample.peak - 1) }].slice(-SLOT_WINDOW);
  const waits = s.waits + (waited ? 1 : 0);
  const evidence = recent.filter((r) => r.waited && r.bound < s.slots);
  if (evidence.length < SLOT_EVIDENCE) return { next: { ...s, recent, waits }, lowered: false };
  const slots = Math.max(1, ...evidence.map((r) => r.bound));
  return { next: { ...s, slots, recent: [], waits, loweredAt: sample.at }, lowered: true };
}

function anyWaited(recent: readonly Recent[]): boolean {
  for (const r of recent) if (r.waited) return true;
  return false;
}

/** The timings in a final Ollama chunk (`*_duration` in ns), in ms. */
export function ollamaTimings(chunk: Readonly<Record<string, unknown>>): OllamaTimings {
  const ms = (v: unknown): number | undefined =>
    typeof v === "number" && Number.isFinite(v) && v >= 0 ? v / 1e6 : undefined;
  return {
    totalMs: ms(chunk["total_duration"]),
    loadMs: ms(chunk["load_duration"]),
    promptEvalMs: ms(chunk["prompt_eval_duration"]),
    evalMs: ms(chunk["eval_duration"]),
  };
}
