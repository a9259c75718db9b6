/**
 * What fits together on one node, learned from what Ollama reports and does (README, "Routing
 * across a fleet", Capacity). The configured `maxLoadedModels` (Ollama's count) is only an upper
 * bound: what stays loaded on a GPU is decided by memory, and Ollama evicts whenever the next model
 * does not fit next to the loaded ones. So each node keeps an estimated memory budget between two
 * bounds: the largest total seen loaded at once (it fits) and the smallest total that made Ollama
 * evict or offload (it does not). An eviction tightens the estimate, co-residence loosens it, and
 * `vramBytes` from the config is a starting point that this evidence still corrects.
 *
 * Plain immutable data and pure functions: the scheduler's shell feeds observations in and the
 * policies ask `evictionsFor` ("which models would leave for this one?") and `fitsForSure`, so
 * the model can be tested with tables and shared between processes as it is.
 */

/** One loaded model as /api/ps reports it. */
export interface ResidentModel {
  /** Canonical model name. */
  readonly name: string;
  /** Bytes of the loaded instance: weights plus KV cache (`size`). */
  readonly sizeBytes: number;
  /** Bytes of it on the GPU (`size_vram`): all of it, less when partly offloaded, 0 on CPU-only nodes. */
  readonly vramBytes: number;
}

/**
 * One observation behind the estimate:
 * - `fits`: these models were loaded together (raises the lower bound);
 * - `evicted`: loading the first model pushed out the others (the total did not fit);
 * - `offloaded`: the first model did not fit even after the others left, and Ollama put part of it
 *   on the CPU (the total did not fit; what it kept on the GPU did);
 * - `count`: Ollama evicted although the total was known to fit: it keeps fewer models than
 *   configured (at most the number loaded before, which becomes the learned count);
 * - `reset`: the new evidence contradicted the old bounds (the node changed), which were dropped;
 * - `borrowed`: nothing was seen evicted here yet; the upper bound is that of a node configured
 *   alike (`from`), until this node shows its own.
 */
export type CapacityEvidenceKind = "fits" | "evicted" | "offloaded" | "count" | "reset" | "borrowed";

/** One observation, as GetStatus shows it. */
export interface CapacityEvidence {
  /** When it was seen, ms since the epoch. */
  readonly at: number;
  /** What it says (see the kinds). */
  readonly kind: CapacityEvidenceKind;
  /** The models involved: for `evicted`/`offloaded` the model loaded first, then those that left. */
  readonly models: readonly string[];
  /** The total it is about, bytes. */
  readonly totalBytes: number;
  /** For `borrowed`: the node the bound comes from. */
  readonly from?: string | undefined;
}

/** The capacity model of one node. Immutable: every observation returns a new one. */
export interface NodeCapacity {
  /** Models the node may keep loaded at once as configured (OLLAMA_MAX_LOADED_MODELS): an upper bound. */
  readonly configuredMaxLoaded: number;
  /** `vramBytes` from the config file, if the operator gave it. */
  readonly configuredBytes: number | undefined;
  /** Largest total seen loaded at once, bytes (0 = none seen): the budget is at least this. */
  readonly fitsBytes: number;
  /** Smallest total that did not fit, bytes (undefined = none seen): the budget is below this. */
  readonly overflowBytes: number | undefined;
  /** Models Ollama was seen to keep at most, when fewer than configured (undefined = the configured count). */
  readonly learnedMaxLoaded: number | undefined;
  /** Loaded size of each model seen on this node, bytes (the last /api/ps `size`). */
  readonly sizes: ReadonlyMap<string, number>;
  /** The latest observations that changed the picture, newest first (at most `MAX_EVIDENCE`). */
  readonly evidence: readonly CapacityEvidence[];
  /** The node whose upper bound this one uses while it has seen no eviction of its own, if any. */
  readonly borrowedFrom: string | undefined;
  /** False once this node's own evidence contradicted a bound (it is not like the others): it borrows no more. */
  readonly mayBorrow: boolean;
}

/** Observations kept for GetStatus. */
export const MAX_EVIDENCE = 8;

/** A new node's model: the configured count and budget, nothing learned yet. */
export function createCapacity(config: { maxLoadedModels: number; vramBytes?: number | undefined }): NodeCapacity {
  return {
    configuredMaxLoaded: Math.max(1, config.maxLoadedModels),
    configuredBytes: config.vramBytes !== undefined && config.vramBytes > 0 ? config.vramBytes : undefined,
    fitsBytes: 0,
    overflowBytes: undefined,
    learnedMaxLoaded: undefined,
    sizes: new Map(),
    evidence: [],
    borrowedFrom: undefined,
    mayBorrow: true,
  };
}

/**
 * The estimated budget, bytes, or undefined when nothing limits it but the count (no eviction seen
 * and none configured). With `vramBytes` configured: that value, kept within what was observed
 * (at least the largest total that fitted, below the smallest that did not). Without it: unknown
 * until Ollama first evicts or offloads, then the largest total seen to fit — a total between the
 * two bounds is not risked until Ollama shows it fits (an eviction the gateway expected that does
 * not happen raises the estimate).
 */
export function budgetBytes(c: NodeCapacity): number | undefined {
  if (c.configuredBytes !== undefined) {
    const upper = c.overflowBytes === undefined ? Number.POSITIVE_INFINITY : c.overflowBytes - 1;
    return Math.max(c.fitsBytes, Math.min(c.configuredBytes, upper));
  }
  return c.overflowBytes === undefined ? undefined : c.fitsBytes;
}

/** Models the node keeps at once: the configured count, or fewer when Ollama was seen to keep fewer. */
export function maxLoaded(c: NodeCapacity): number {
  return Math.min(c.configuredMaxLoaded, c.learnedMaxLoaded ?? Number.POSITIVE_INFINITY);
}

/** Bytes a resident model holds on the GPU (its whole size on a CPU-only node, where nothing is on a GPU). */
function heldBytes(m: ResidentModel): number {
  return m.vramBytes > 0 ? m.vramBytes : m.sizeBytes;
}

function withEvidence(c: NodeCapacity, e: CapacityEvidence): readonly CapacityEvidence[] {
  return [e, ...c.evidence].slice(0, MAX_EVIDENCE);
}

/**
 * What /api/ps shows on the node now (a periodic read, or one right after a load). Learns each
 * model's loaded size; the total held is a lower bound of the budget (`fits`), and a model only
 * partly on the GPU means the total of full sizes did not fit (`offloaded`). Evidence that
 * contradicts the old bounds replaces them (`reset`): the node changed.
 */
export function observeResidency(c: NodeCapacity, resident: readonly ResidentModel[], now: number): NodeCapacity {
  if (resident.length === 0) return c;
  const sizes = new Map(c.sizes);
  for (const m of resident) if (m.sizeBytes > 0) sizes.set(m.name, m.sizeBytes);
  let next: NodeCapacity = { ...c, sizes };
  const held = resident.reduce((n, m) => n + heldBytes(m), 0);
  const names = resident.map((m) => m.name);
  if (next.learnedMaxLoaded !== undefined && resident.length > next.learnedMaxLoaded) {
    next = { ...next, learnedMaxLoaded: resident.length < next.configuredMaxLoaded ? resident.length : undefined };
  }
  if (held > next.fitsBytes) {
    const contradicts = next.overflowBytes !== undefined && held >= next.overflowBytes;
    next = {
      ...next,
      fitsBytes: held,
      overflowBytes: contradicts ? undefined : next.overflowBytes,
      borrowedFrom: contradicts ? undefined : next.borrowedFrom,
      mayBorrow: next.mayBorrow && !contradicts,
      evidence: withEvidence(next, { at: now, kind: contradicts ? "reset" : "fits", models: names, totalBytes: held }),
    };
  }
  const partial = resident.find((m) => m.vramBytes > 0 && m.vramBytes < m.sizeBytes);
  if (partial !== undefined) {
    const needed = resident.reduce((n, m) => n + m.sizeBytes, 0);
    if (next.overflowBytes === undefined || next.borrowedFrom !== undefined || needed < next.overflowBytes) {
      const others = names.filter((n) => n !== partial.name);
      next = {
        ...next,
        overflowBytes: Math.min(needed, next.overflowBytes ?? needed),
        borrowedFrom: undefined,
        evidence: withEvidence(next, {
          at: now,
          kind: "offloaded",
          models: [partial.name, ...others],
          totalBytes: needed,
        }),
      };
    }
  }
  return next;
}

/** A load the gateway sent to the node, and what /api/ps showed before and once the model appeared. */
export interface LoadObservation {
  /** The model loaded. */
  readonly model: string;
  /** What was loaded before (the last /api/ps read of the node). */
  readonly before: readonly ResidentModel[];
  /** What is loaded now. */
  readonly after: readonly ResidentModel[];
  /** When, ms since the epoch. */
  readonly now: number;
}

/**
 * Learns from a load: the models loaded before that are gone now were evicted for it. If the
 * node already held its configured count, the count explains that; if the total was known to
 * fit, Ollama keeps fewer models than configured (`count`); else the total did not fit
 * (`evicted`), and the budget is below it. Co-residence (nothing evicted) raises `fits` through
 * `observeResidency`.
 */
export function observeLoad(c: NodeCapacity, o: LoadObservation): NodeCapacity {
  const next = observeResidency(withSizes(c, o.before), o.after, o.now);
  const now = new Set(o.after.map((m) => m.name));
  const evicted = o.before.filter((m) => m.name !== o.model && !now.has(m.name));
  const loaded = o.after.find((m) => m.name === o.model);
  if (evicted.length === 0 || loaded === undefined) return next;
  const before = o.before.filter((m) => m.name !== o.model);
  if (before.length >= maxLoaded(c)) return next; // the count explains it
  const needed = before.reduce((n, m) => n + heldBytes(m), 0) + loaded.sizeBytes;
  const models = [o.model, ...evicted.map((m) => m.name)];
  if (needed <= next.fitsBytes) {
    // The memory was known to suffice: Ollama keeps fewer models than configured.
    return {
      ...next,
      learnedMaxLoaded: before.length,
      evidence: withEvidence(next, { at: o.now, kind: "count", models, totalBytes: needed }),
    };
  }
  if (next.overflowBytes !== undefined && needed >= next.overflowBytes && next.borrowedFrom === undefined) return next;
  return {
    ...next,
    overflowBytes: Math.min(needed, next.overflowBytes ?? needed),
    borrowedFrom: undefined,
    evidence: withEvidence(next, { at: o.now, kind: "evicted", models, totalBytes: needed }),
  };
}

/**
 * `c` using the upper bound of `from` (named `name`), a node configured alike (same count, no
 * configured budget), while `c` has seen no eviction of its own: in a fleet of like GPUs, one
 * node's eviction spares the others theirs. Only the upper bound is borrowed (what fits is
 * still seen per node), so a wrong guess costs packing, not an eviction; and this node's own
 * evidence replaces it — one that contradicts it stops the borrowing for good.
 */
export function borrowBounds(c: NodeCapacity, from: NodeCapacity, name: string, now: number): NodeCapacity {
  if (!c.mayBorrow || c.configuredBytes !== undefined || from.configuredBytes !== undefined) return c;
  if (c.configuredMaxLoaded !== from.configuredMaxLoaded) return c;
  if (from.overflowBytes === undefined || from.borrowedFrom !== undefined) return c;
  if (c.overflowBytes !== undefined && c.borrowedFrom === undefined) return c; // it has its own
  if (c.overflowBytes === from.overflowBytes) return c;
  if (from.overflowBytes <= c.fitsBytes) return c; // contradicted by what this node holds
  return {
    ...c,
    overflowBytes: from.overflowBytes,
    borrowedFrom: name,
    evidence: withEvidence(c, { at: now, kind: "borrowed", models: [], totalBytes: from.overflowBytes, from: name }),
  };
}

/** `c` knowing the sizes of `models` it had not seen yet. */
function withSizes(c: NodeCapacity, models: readonly ResidentModel[]): NodeCapacity {
  const fresh = models.filter((m) => m.sizeBytes > 0 && !c.sizes.has(m.name));
  if (fresh.length === 0) return c;
  const sizes = new Map(c.sizes);
  for (const m of fresh) sizes.set(m.name, m.sizeBytes);
  return { ...c, sizes };
}

/**
 * `c` assuming `model` takes `bytes` loaded until /api/ps shows its real size (used when the
 * gateway sends a model to a node that has not shown it: as another node showed it, or its file
 * size). A size already seen on the node is kept.
 */
export function assumeSize(c: NodeCapacity, model: string, bytes: number | undefined): NodeCapacity {
  if (bytes === undefined || bytes <= 0 || c.sizes.has(model)) return c;
  return { ...c, sizes: new Map(c.sizes).set(model, bytes) };
}

/** What the policies know of a model resident on the node. */
export interface ResidentUse {
  /** Requests running on it. */
  readonly inFlight: number;
  /** Last use, ms since the epoch: the least recently used goes first, as Ollama's soonest expiry. */
  readonly lastUsed: number;
}

/** The size to assume for `model` on this node: as seen here, else the hint (seen elsewhere, or its file size), else 0. */
export function sizeOn(c: NodeCapacity, model: string, hint: number | undefined): number {
  return c.sizes.get(model) ?? hint ?? 0;
}

/**
 * The models that would leave the node for `model` to load there, in the order Ollama picks them
 * (idle ones first, then the least recently used): none when it fits next to the loaded ones;
 * every one when it fits only alone — or not even alone: a model larger than the budget still
 * loads, partly offloaded. `[]` when `model` is loaded already.
 */
export function evictionsFor(
  c: NodeCapacity,
  resident: ReadonlyMap<string, ResidentUse>,
  model: string,
  sizeHint: number | undefined,
): string[] {
  if (resident.has(model)) return [];
  const budget = budgetBytes(c);
  const limit = maxLoaded(c);
  const need = sizeOn(c, model, sizeHint);
  let count = resident.size;
  let used = 0;
  for (const name of resident.keys()) used += sizeOn(c, name, undefined);
  const order = [...resident].sort(
    ([, a], [, b]) => Number(a.inFlight > 0) - Number(b.inFlight > 0) || a.lastUsed - b.lastUsed,
  );
  const victims: string[] = [];
  for (const [name] of order) {
    if (count < limit && (budget === undefined || used + need <= budget)) break;
    victims.push(name);
    count--;
    used -= sizeOn(c, name, undefined);
  }
  return victims;
}

/**
 * True when `model` is known to fit next to the resident models without evicting any: the node is
 * empty, or every size is known and the total is within what was seen to fit (or within the
 * configured budget) and under the count. A node that merely is not known to be full is a guess; the placement policy prefers
 * known room, so learning costs as few evictions as possible.
 */
export function fitsForSure(
  c: NodeCapacity,
  resident: ReadonlyMap<string, unknown>,
  model: string,
  sizeHint: number | undefined,
): boolean {
  if (resident.has(model) || resident.size === 0) return true;
  if (resident.size + 1 > maxLoaded(c)) return false;
  let total = c.sizes.get(model) ?? sizeHint;
  if (total === undefined) return false;
  for (const name of resident.keys()) {
    const size = c.sizes.get(name);
    if (size === undefined) return false;
    total += size;
  }
  const sure = c.configuredBytes !== undefined ? (budgetBytes(c) ?? 0) : c.fitsBytes;
  return total <= sure;
}

/**
 * True when the models resident together are known to fit (so none of them can be pushed out by
 * the others): what the scheduler asks while a load it sent there is not yet confirmed by /api/ps.
 */
export function residencyCertain(c: NodeCapacity, resident: ReadonlyMap<string, unknown>): boolean {
  if (resident.size <= 1) return true;
  if (resident.size > maxLoaded(c)) return false;
  let total = 0;
  for (const name of resident.keys()) {
    const size = c.sizes.get(name);
    if (size === undefined) return false;
    total += size;
  }
  const sure = c.configuredBytes !== undefined ? (budgetBytes(c) ?? 0) : c.fitsBytes;
  return total <= sure;
}
