import type { CapacityEvidence, CapacityEvidenceKind, NodeCapacity } from "./capacity-model.js";
import { MAX_EVIDENCE } from "./capacity-model.js";
import type { SlotLearning } from "./slot-learning.js";
import { createSlotLearning } from "./slot-learning.js";

/**
 * What one worker learned about one node, in the form it is shared with the other workers of the
 * gateway (README, "Several replicas"): the capacity model's bounds, sizes and evidence, and the
 * slots lowered per model. Plain JSON-safe data of bounded size, and pure functions to make it,
 * check it (it arrives from another process: untrusted in shape) and merge it into a node's picture.
 * The merge only ever tightens what is learned (a larger total seen fitting, a smaller one seen
 * not fitting, fewer models or slots), so applying the same news twice changes nothing and two
 * workers' pictures converge whatever order news arrives in.
 */
export interface NodeLearning {
  /** Node name. */
  readonly node: string;
  /** Largest total seen loaded at once, bytes. */
  readonly fitsBytes: number;
  /** Smallest total seen not fitting, bytes (null: none). */
  readonly overflowBytes: number | null;
  /** Models Ollama was seen to keep at most (null: the configured count). */
  readonly learnedMaxLoaded: number | null;
  /** Loaded sizes seen, [model, bytes] (at most `MAX_SHARED_MODELS`). */
  readonly sizes: readonly (readonly [string, number])[];
  /** The newest observations (at most `MAX_EVIDENCE`). */
  readonly evidence: readonly CapacityEvidence[];
  /** Models whose slots were lowered there (at most `MAX_SHARED_MODELS`). */
  readonly slots: readonly LoweredSlots[];
}

/** One model's lowered slots on the node. */
export interface LoweredSlots {
  readonly model: string;
  /** The node's configured slots. */
  readonly configured: number;
  /** The slots it gets now. */
  readonly slots: number;
  /** Requests seen waiting inside the node for a slot. */
  readonly waits: number;
  /** When they were lowered, ms since the epoch. */
  readonly loweredAt: number;
}

/** Models (sizes, lowered slots) one message carries at most: bounds its size. */
export const MAX_SHARED_MODELS = 64;
/** Longest node or model name accepted. */
const MAX_NAME = 1_024;
const KINDS: ReadonlySet<string> = new Set<CapacityEvidenceKind>([
  "fits",
  "evicted",
  "offloaded",
  "count",
  "reset",
  "borrowed",
]);

/** What a node's picture holds that is worth sharing. */
export function nodeLearning(
  node: string,
  c: NodeCapacity,
  slotLearning: ReadonlyMap<string, SlotLearning>,
): NodeLearning {
  return {
    node,
    fitsBytes: c.fitsBytes,
    // A bound borrowed from a node configured alike is not this node's own: not passed on as such.
    overflowBytes: c.borrowedFrom === undefined ? (c.overflowBytes ?? null) : null,
    learnedMaxLoaded: c.learnedMaxLoaded ?? null,
    sizes: [...c.sizes].slice(0, MAX_SHARED_MODELS),
    evidence: c.evidence.slice(0, MAX_EVIDENCE).map((e) => ({ ...e, models: [...e.models] })),
    slots: [...slotLearning]
      .filter(([, l]) => l.slots < l.configured)
      .slice(0, MAX_SHARED_MODELS)
      .map(([model, l]) => ({
        model,
        configured: l.configured,
        slots: l.slots,
        waits: l.waits,
        loweredAt: l.loweredAt ?? 0,
      })),
  };
}

/** True when two pieces of news say the same (what was sent or applied last need not be sent again). */
export function sameLearning(a: NodeLearning | undefined, b: NodeLearning): boolean {
  return a !== undefined && JSON.stringify(a) === JSON.stringify(b);
}

const isName = (v: unknown): v is string => typeof v === "string" && v.length > 0 && v.length <= MAX_NAME;
const isCount = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null;

function isEvidence(v: unknown): v is CapacityEvidence {
  if (!isObject(v)) return false;
  const models = v["models"];
  return (
    isCount(v["at"]) &&
    typeof v["kind"] === "string" &&
    KINDS.has(v["kind"]) &&
    Array.isArray(models) &&
    models.length <= MAX_SHARED_MODELS &&
    models.every(isName) &&
    isCount(v["totalBytes"]) &&
    (v["from"] === undefined || isName(v["from"]))
  );
}

function isLowered(v: unknown): v is LoweredSlots {
  if (!isObject(v)) return false;
  const slots = v["slots"];
  return (
    isName(v["model"]) &&
    isCount(v["configured"]) &&
    isCount(slots) &&
    slots >= 1 &&
    isCount(v["waits"]) &&
    isCount(v["loweredAt"])
  );
}

/** True for well-formed news (bounded lists, names, non-negative integers); anything else is dropped. */
export function isNodeLearning(v: unknown): v is NodeLearning {
  if (!isObject(v)) return false;
  const { sizes, evidence, slots } = v;
  return (
    isName(v["node"]) &&
    isCount(v["fitsBytes"]) &&
    (v["overflowBytes"] === null || isCount(v["overflowBytes"])) &&
    (v["learnedMaxLoaded"] === null || (isCount(v["learnedMaxLoaded"]) && v["learnedMaxLoaded"] >= 1)) &&
    Array.isArray(sizes) &&
    sizes.length <= MAX_SHARED_MODELS &&
    sizes.every((s) => Array.isArray(s) && s.length === 2 && isName(s[0]) && isCount(s[1])) &&
    Array.isArray(evidence) &&
    evidence.length <= MAX_EVIDENCE &&
    evidence.every(isEvidence) &&
    Array.isArray(slots) &&
    slots.length <= MAX_SHARED_MODELS &&
    slots.every(isLowered)
  );
}

const lower = (a: number | undefined, b: number | undefined): number | undefined =>
  a === undefined ? b : b === undefined ? a : Math.min(a, b);

const evidenceId = (e: CapacityEvidence): string => `${e.at}/${e.kind}/${e.totalBytes}/${e.models.join(",")}`;

/**
 * A node's capacity with another worker's news merged in: the larger "fits", the smaller
 * "overflow" and learned count, sizes it had not seen, and the other's evidence beside its own
 * (newest first, bounded). When the two bounds contradict each other (what one saw fit is above
 * what the other saw not fit), the node changed, and the news — the later observation — wins.
 * Returns `c` itself when the news teaches nothing.
 */
export function mergeCapacity(c: NodeCapacity, news: NodeLearning): NodeCapacity {
  let fitsBytes = Math.max(c.fitsBytes, news.fitsBytes);
  let overflowBytes = lower(c.overflowBytes, news.overflowBytes ?? undefined);
  if (overflowBytes !== undefined && fitsBytes >= overflowBytes) {
    fitsBytes = news.fitsBytes;
    overflowBytes = news.overflowBytes ?? undefined;
  }
  const learnedMaxLoaded = lower(c.learnedMaxLoaded, news.learnedMaxLoaded ?? undefined);
  const newSizes = news.sizes.filter(([m]) => !c.sizes.has(m));
  const known = new Set(c.evidence.map(evidenceId));
  const newEvidence = news.evidence.filter((e) => !known.has(evidenceId(e)));
  if (
    fitsBytes === c.fitsBytes &&
    overflowBytes === c.overflowBytes &&
    learnedMaxLoaded === c.learnedMaxLoaded &&
    newSizes.length === 0 &&
    newEvidence.length === 0
  ) {
    return c;
  }
  const sizes = new Map(c.sizes);
  for (const [m, bytes] of newSizes) sizes.set(m, bytes);
  return {
    ...c,
    fitsBytes,
    overflowBytes,
    learnedMaxLoaded,
    sizes,
    evidence: [...c.evidence, ...newEvidence].sort((a, b) => b.at - a.at).slice(0, MAX_EVIDENCE),
    // A bound seen on this very node (by another worker) replaces one borrowed from a node alike.
    borrowedFrom: overflowBytes !== c.overflowBytes && news.overflowBytes !== null ? undefined : c.borrowedFrom,
  };
}

/**
 * The slot learning of a node with another worker's lowered slots merged in (the fewer slots win);
 * undefined when nothing changes. Configured counts that differ (a reload in between) are left alone.
 */
export function mergeSlots(
  local: ReadonlyMap<string, SlotLearning>,
  news: NodeLearning,
): Map<string, SlotLearning> | undefined {
  let out: Map<string, SlotLearning> | undefined;
  for (const l of news.slots) {
    const mine = local.get(l.model) ?? createSlotLearning(l.configured);
    if (mine.configured !== l.configured || l.slots >= mine.slots) continue;
    out ??= new Map(local);
    out.set(l.model, { ...mine, slots: l.slots, waits: Math.max(mine.waits, l.waits), loweredAt: l.loweredAt });
  }
  return out;
}
