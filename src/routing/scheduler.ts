import {
  deadlineTooShort,
  expectedWaitTooLong,
  modelNotFound,
  noHealthyNodeFor,
  noNodeAnswered,
  queueFull,
  shuttingDown,
  waitedTooLong,
} from "../errors/domain-errors.js";
import { setTimeout as sleep } from "node:timers/promises";
import { canonicalModelName } from "../upstream/model-name.js";
import type { OllamaRunning } from "../upstream/ollama-metadata.js";
import type { NodeHealth } from "../upstream/node-health.js";
import type { OllamaNode } from "../upstream/ollama-node.js";
import type { AffinityTable } from "./affinity.js";
import type { NodeCapacity, ResidentModel } from "./capacity-model.js";
import { budgetBytes } from "./capacity-model.js";
import { chooseDrainVictim, obsoleteDrains } from "./drain-policy.js";
import type { FleetMetadata } from "./fleet-metadata.js";
import type { FleetState, NodeState } from "./fleet-state.js";
import { choosePlacement } from "./placement-policy.js";
import type { FleetView, NodeView, PlacementRequest } from "./policy-snapshot.js";
import { compareHeads, queueInsertIndex } from "./queue-order-policy.js";
import type { OllamaTimings } from "./slot-learning.js";
import type { SlotRank } from "./slot-table.js";
import { expectedWaitMs, learnTimes } from "./wait-estimate.js";

/** Bounds of the admission queue. */
export interface AdmissionOptions {
  /** Requests waiting for one model. @default 256 */
  maxQueuedPerModel: number;
  /** Requests waiting in all. @default 2048 */
  maxQueuedTotal: number;
  /** Longest wait in the queue whatever the deadline; 0 = the deadline alone. @default 0 */
  maxWaitMs?: number;
}

/** A slot taken on a node, shared with other replicas (Redis) or the other workers of the gateway (IPC). */
export interface SlotGate {
  /**
   * Takes one of `limit` slots of (node, model), or undefined when all are held (by any replica).
   * `rank` is where the request stands in the admission order: a gate that keeps one order across
   * processes (the workers' IPC gate) remembers a refused request by it; others ignore it.
   */
  tryAcquire(
    node: string,
    model: string,
    limit: number,
    rank?: SlotRank,
  ): Promise<{ release(): Promise<void> } | undefined>;
  /**
   * Optional: calls `listener` when a slot this process waits for was handed to it (the IPC gate),
   * so the scheduler places its heads at once instead of on its retry timer. Returns the unsubscribe.
   */
  onFree?(listener: (node: string, model: string) => void): () => void;
}

/** What a request asks of the scheduler. */
export interface AdmissionRequest {
  /** Model name as the client wrote it. */
  model: string;
  /** Higher goes first; FIFO within a priority. */
  priority: number;
  /** Session or conversation key for node affinity. */
  affinity?: string;
  /** Nodes not to use (they just failed this request). */
  exclude?: ReadonlySet<string>;
  /** The RPC's signal: a cancelled request leaves the queue at once. */
  signal: AbortSignal;
  /** Time left before the RPC's deadline, ms. */
  remainingMs: number;
}

/** A request bound to a node and holding one of its slots. */
export interface Dispatch {
  /** The node chosen. */
  node: OllamaNode;
  /** Time spent waiting in the admission queue, ms. */
  queueMs: number;
  /**
   * Gives the slot back. `loadMs` is the model load time Ollama reported for this request
   * (`load_duration`), so the scheduler can tell load time from service time; Ollama's other
   * timings (`totalMs`, `promptEvalMs`, `evalMs`) show whether the request waited inside Ollama
   * for a slot (see `slot-learning.ts`). Idempotent.
   */
  release(observed?: { loadMs?: number | undefined } & OllamaTimings): void;
}

/** Queue depth per model, for GetStatus. */
export interface QueueDepth {
  /** Canonical model name. */
  model: string;
  /** Requests waiting. */
  depth: number;
}

/** A node being drained, and the model it is drained for (GetStatus `draining_for`). */
export interface DrainingNode {
  /** Node name. */
  node: string;
  /** Canonical name of the model the node is drained for. */
  model: string;
}

/**
 * Admission and node choice. A request is bound to a node only when a slot
 * is free there (late binding); until then it waits in a bounded queue per
 * model, highest priority first and FIFO within a priority. A full queue, or
 * a deadline shorter than the expected wait, fails at once with
 * RESOURCE_EXHAUSTED rather than as a timeout later.
 *
 * Choosing among the nodes that have the model installed and are routable
 * (the rules are in `placement-policy.ts`):
 * 1. a node where the model is loaded and a slot is free — the affinity
 *    node first (Ollama reuses its prompt cache), else the least loaded;
 * 2. else a node that can load it without evicting anything, then (only
 *    when the model is loaded nowhere) one whose eviction victim is idle and
 *    has nobody waiting; a model with requests running or queued is never
 *    pushed out while another choice exists;
 * 3. else wait: the request is placed when a slot frees up.
 *
 * Rebalancing (`drain-policy.ts`): a model that is loaded nowhere, or whose
 * oldest waiting request has waited longer than loading the model takes,
 * gets a node *drained* for it: no new work of other models goes there, and
 * once its running requests end the hungry model is loaded there. The victim
 * is the node whose loss hurts least: idle models first, then models that
 * stay loaded on another node and have nobody waiting; a model that would be
 * left loaded nowhere with requests waiting is only displaced for a model
 * whose oldest request has waited longer (oldest first), so two hot models on
 * too few nodes take turns instead of one starving.
 *
 * Capacity (`capacity-model.ts`, `slot-learning.ts`): "room" and "which model
 * would be evicted" are answered by what each node was seen to hold at once, the
 * configured count being only an upper bound. After sending a load, the scheduler
 * re-reads /api/ps on that node (and on the nodes sharing its host, which may
 * share its GPU) until the model shows, learns what was evicted for it, and until
 * then sends no other load there and no request for a model the load may be
 * pushing out. Slots per model are lowered where Ollama's timings show requests
 * waiting inside it for a slot.
 *
 * Mechanism: a placement reserves its slot in `FleetState` synchronously, then
 * asks the `SlotGate` (Redis when replicas share the fleet). The queue heads of
 * different models are placed concurrently — one head per model at a time — so
 * a slow gate answer for one model never holds up another's admission.
 */
export interface Scheduler {
  /** Waits for a slot and binds the request to a node. */
  acquire(req: AdmissionRequest): Promise<Dispatch>;
  /** Current queue depths. */
  queues(): QueueDepth[];
  /** Nodes being drained for a hungry model (see rebalancing above). */
  draining(): DrainingNode[];
  /**
   * Calls `listener` with the new `draining()` list whenever a drain starts or ends, so
   * observers (tests, metrics) see even short drains without polling. Returns the unsubscribe.
   */
  onDrainChange(listener: (draining: DrainingNode[]) => void): () => void;
  /** Starts the periodic sync with /api/ps. */
  start(): void;
  /** Stops it, and fails every queued request with UNAVAILABLE. */
  stop(): void;
}

/** Where the scheduler reports trouble; a pino logger fits. */
export interface SchedulerLog {
  /** A problem the operator should know about; `obj` carries the context. */
  warn(obj: object, msg: string): void;
  /** Something learned about the fleet (a node's capacity); optional. */
  info?(obj: object, msg: string): void;
}

/** Everything the scheduler works with. */
export interface SchedulerDeps {
  /** The fleet's live state. */
  fleet: FleetState;
  /** Installed and loaded models, through the cache. */
  metadata: FleetMetadata;
  /** Which nodes are routable. */
  health: NodeHealth;
  /** Session affinity. */
  affinity: AffinityTable;
  /** Shared slot accounting (always grants when there is one replica). */
  gate: SlotGate;
  /** Queue bounds. */
  admission: AdmissionOptions;
  /** How often loaded models are re-read from /api/ps, ms. @default 2000 */
  syncMs?: number;
  /** Drain nodes for hungry models (see the Scheduler doc). @default true */
  rebalance?: boolean;
  /** Where a failing `SlotGate` is reported (once per streak of failures per model). @default silent */
  log?: SchedulerLog;
}

/** Logged (warn) when the slot gate throws for a model whose placements were going fine; retried with backoff. */
export const SLOT_GATE_FAILED_MSG = "slot gate failed, retrying placement with backoff";
/** Logged (warn) once per node and model when the node was seen to serve fewer requests of it at once than configured. */
export const SLOTS_LOWERED_MSG = "node serves fewer parallel requests than configured: slots lowered";
/** Logged (info) when what was seen on a node changes its learned capacity. */
export const CAPACITY_LEARNED_MSG = "node capacity learned from ollama";

interface Waiter {
  readonly model: string;
  readonly priority: number;
  readonly affinity: string | undefined;
  readonly exclude: ReadonlySet<string> | undefined;
  readonly candidates: ReadonlySet<string>;
  readonly embeddingOnly: boolean;
  /** The model's file size (from /api/tags): the size guess where no node has shown it loaded. */
  readonly fileBytes: number | undefined;
  readonly enqueuedAt: number;
  /** Its deadline, ms since the epoch (undefined: none), for a gate that orders across processes. */
  readonly deadlineAt: number | undefined;
  readonly signal: AbortSignal;
  /** Set once the request got its dispatch or its error: later outcomes are dropped. */
  done: boolean;
  resolve(d: Dispatch): void;
  reject(e: unknown): void;
  cleanup(): void;
}

/** A held slot refused by every replica is looked at again after this long, ms. */
const RETRY_MS = 25;
/**
 * The same with a gate that wakes the scheduler when a slot is handed to it (`SlotGate.onFree`):
 * only a safety net then (a slot handed over while this model's head was busy is given back), ms.
 */
const NOTIFIED_RETRY_MS = 250;
/** Longest pause between placements of a model while the gate keeps throwing, ms. */
const MAX_BACKOFF_MS = 2_000;
/** How often /api/ps is re-read on a node while a load sent there is not confirmed, ms (at most `syncMs`). */
const LOAD_POLL_MS = 250;
/** Longest the scheduler waits for /api/ps to show a model it sent to load, ms (its request ending stops it too). */
const LOAD_CONFIRM_MAX_MS = 120_000;

/** What /api/ps lists, as the capacity model reads it. */
function residentOf(ps: readonly OllamaRunning[]): ResidentModel[] {
  return ps.map((r) => ({ name: canonicalModelName(r.name), sizeBytes: r.size, vramBytes: r.sizeVram }));
}

/** The host part of a node URL: nodes on one host may share a GPU, and so evictions. */
function hostOf(url: string): string {
  try {
    return new URL(url).hostname;
  } catch {
    return url;
  }
}

/** The slot `LOCAL_GATE` grants: nothing to give back. */
const LOCAL_SLOT = { release: (): Promise<void> => Promise.resolve() };

/**
 * A gate for a single replica: the scheduler's own counting is the whole truth. The scheduler
 * recognises it and settles a placement without asking it (no promise per call).
 */
export const LOCAL_GATE: SlotGate = {
  tryAcquire: () => Promise.resolve(LOCAL_SLOT),
};

/** An error's message with any `scheme://user:password@` credentials masked, fit for a log line. */
function describeError(e: unknown): string {
  const message = e instanceof Error ? e.message : String(e);
  return message.replace(/([a-z][a-z0-9+.-]*:\/\/)[^/\s@]*@/gi, "$1***@");
}

/** Creates the scheduler. */
export function createScheduler(deps: SchedulerDeps): Scheduler {
  const { fleet, health } = deps;
  const policy = { rebalance: deps.rebalance ?? true };
  const maxWaitMs = deps.admission.maxWaitMs ?? 0;
  const queues = new Map<string, Waiter[]>();
  let queued = 0;
  /** Per model: how long a request holds its slot, loads excluded (EWMA, ms). */
  const serviceMs = new Map<string, number>();
  /** Per model: how long Ollama takes to load it (EWMA of reported load_duration, ms). */
  const loadMs = new Map<string, number>();
  /** Nodes being drained, and the model each is drained for. */
  const draining = new Map<string, string>();
  const drainListeners = new Set<(draining: DrainingNode[]) => void>();
  /** Models whose queue head is waiting for the gate: at most one placement per model at a time. */
  const placing = new Set<string>();
  /** A single replica: placements settle at once, without asking a gate. */
  const local = deps.gate === LOCAL_GATE;
  /** Per model, while its gate calls throw: failures in a row, and when to try again (ms). */
  const gateBackoff = new Map<string, { failures: number; until: number }>();
  let wakeTimer: NodeJS.Timeout | undefined;
  let wakeAt = 0;
  let syncTimer: NodeJS.Timeout | undefined;
  let unsubscribeHealth: (() => void) | undefined;
  /** Aborted by `stop`: ends the load watchers. */
  let stopping = new AbortController();
  /**
   * Per "node\0model": the running requests' peaks of concurrent requests there (for slot
   * learning). Arrays, not Sets: a Set churned once per call made V8 promote its entries out of
   * the young generation (docs/architecture.md, "Cost per call").
   */
  const running = new Map<string, { peak: number }[]>();
  /** "node\0model" pairs whose lowered slots were logged. */
  const slotsLogged = new Set<string>();
  const pollMs = Math.max(10, Math.min(LOAD_POLL_MS, deps.syncMs ?? 2_000));
  const retryMs = deps.gate.onFree ? NOTIFIED_RETRY_MS : RETRY_MS;
  // A slot another process freed for this one: place the heads now (the gate gives it back otherwise).
  deps.gate.onFree?.(() => pump());

  const waiting = (model: string): boolean => (queues.get(model)?.length ?? 0) > 0;
  const drainList = (): DrainingNode[] => [...draining].map(([node, model]) => ({ node, model }));

  function drainsChanged(): void {
    if (drainListeners.size === 0) return;
    const now = drainList();
    for (const listener of [...drainListeners]) {
      try {
        listener(now);
      } catch (e) {
        deps.log?.warn({ err: describeError(e) }, "drain listener failed");
      }
    }
  }

  function startDrain(node: string, model: string): void {
    draining.set(node, model);
    drainsChanged();
  }

  function endDrains(nodes: readonly string[]): void {
    let changed = false;
    for (const node of nodes) changed = draining.delete(node) || changed;
    if (changed) drainsChanged();
  }

  /**
   * The policies' picture of the fleet, rebuilt in place for each decision: one object per node
   * refreshed field by field, queues answered from the live queues. Policies read a view
   * synchronously and keep nothing of it, and views are taken several times per call, so they
   * must not allocate (docs/architecture.md, "Cost per call"). The models maps are shared,
   * read-only, not copied.
   */
  type MutableNodeView = { -readonly [K in keyof NodeView]: NodeView[K] };
  /** Copies what the policies read of node `s` into its view `v`. */
  const refresh = (v: MutableNodeView, s: NodeState): MutableNodeView => {
    v.name = s.node.name;
    v.healthy = health.isHealthy(s.node.name);
    v.weight = s.config.weight;
    v.maxLoadedModels = s.config.maxLoadedModels;
    v.parallel = s.config.parallel;
    v.capacity = s.capacity;
    v.loading = s.loading?.model;
    v.slotLimits = s.slotLimits.size > 0 ? s.slotLimits : undefined;
    v.models = s.models;
    v.drainingFor = draining.size === 0 ? undefined : draining.get(s.node.name);
    return v;
  };
  const nodeViews: MutableNodeView[] = fleet.nodes.map((s) => refresh({} as MutableNodeView, s));
  const shared: { -readonly [K in keyof FleetView]: FleetView[K] } = {
    now: 0,
    nodes: nodeViews,
    queues: {
      get(model) {
        const q = queues.get(model);
        const head = q?.[0];
        if (head === undefined) return undefined;
        return { depth: q!.length, headWaitMs: shared.now - head.enqueuedAt, headPriority: head.priority };
      },
    },
    serviceMs,
    loadMs,
  };

  function view(): FleetView {
    shared.now = Date.now();
    const states = fleet.nodes;
    for (let i = 0; i < states.length; i++) refresh(nodeViews[i]!, states[i]!);
    return shared;
  }

  function placementRequest(w: Waiter): PlacementRequest {
    return {
      model: w.model,
      candidates: w.candidates,
      exclude: w.exclude,
      embeddingOnly: w.embeddingOnly,
      affinityNode: w.affinity ? deps.affinity.get(w.affinity) : undefined,
      sizeBytes: sizeGuess(w),
    };
  }

  /** Bytes `w`'s model takes loaded: as a node showed it, else its file size. */
  function sizeGuess(w: Waiter): number | undefined {
    return fleet.sizeHint(w.model) ?? w.fileBytes;
  }

  /** A slot reserved on a node; `load` = the model was not loaded there (this request loads it). */
  interface Reservation {
    state: NodeState;
    load: boolean;
  }

  /**
   * Chooses a node for `w` and reserves one of its slots in `FleetState` at once, so decisions
   * taken before the gate answers see the slot taken; undefined = wait (a drain may have started).
   */
  function reserve(w: Waiter): Reservation | undefined {
    const v = view();
    const req = placementRequest(w);
    const placement = choosePlacement(v, req, policy);
    if (placement === undefined) {
      const victim = chooseDrainVictim(v, req, policy);
      if (victim !== undefined) startDrain(victim, w.model);
      return undefined;
    }
    if (placement.rule === "drained") endDrains([placement.node]);
    const state = fleet.get(placement.node)!;
    const load = fleet.begin(state, w.model, w.embeddingOnly, req.sizeBytes);
    // Every request of the model running there now has this many next to it (itself included).
    const now = state.models.get(w.model)?.inFlight ?? 1;
    for (const r of running.get(`${state.node.name}\0${w.model}`) ?? []) r.peak = Math.max(r.peak, now);
    return { state, load };
  }

  /** Gives back a reservation whose request will not be sent. */
  function unreserve(w: Waiter, r: Reservation): void {
    fleet.end(r.state, w.model);
    if (r.load) fleet.cancelLoad(r.state, w.model);
  }

  /** Settles `w` once: takes it out of its queue, drops its listeners and timer, then runs `outcome`. */
  function finish(w: Waiter, outcome: () => void): boolean {
    if (w.done) return false;
    w.done = true;
    remove(w);
    w.cleanup();
    outcome();
    return true;
  }

  /** Wakes `pump` after `delayMs` (or earlier, if a wake-up is already due sooner). */
  function wakeIn(delayMs: number): void {
    const at = Date.now() + delayMs;
    if (wakeTimer !== undefined && wakeAt <= at) return;
    if (wakeTimer !== undefined) clearTimeout(wakeTimer);
    wakeAt = at;
    wakeTimer = setTimeout(() => {
      wakeTimer = undefined;
      pump();
    }, delayMs);
  }

  function backingOff(model: string, now: number): boolean {
    return (gateBackoff.get(model)?.until ?? 0) > now;
  }

  function gateFailed(node: string, model: string, e: unknown): void {
    const b = gateBackoff.get(model) ?? { failures: 0, until: 0 };
    b.failures++;
    const delay = Math.min(MAX_BACKOFF_MS, RETRY_MS * 2 ** Math.min(b.failures - 1, 16));
    b.until = Date.now() + delay;
    gateBackoff.set(model, b);
    if (b.failures === 1) {
      deps.log?.warn({ node, model, err: describeError(e), retryInMs: delay }, SLOT_GATE_FAILED_MSG);
    }
    wakeIn(delay);
  }

  /**
   * Asks the gate for the slot reserved on `state` and settles `w` with it. False when the gate
   * refused (or failed): the reservation is given back and a retry is scheduled. True when `w` is
   * settled — dispatched, or (when it was cancelled or timed out meanwhile) its slot given back.
   */
  async function confirm(w: Waiter, r: Reservation): Promise<boolean> {
    const { state } = r;
    const node = state.node.name;
    let slot: { release(): Promise<void> } | undefined;
    try {
      slot = await deps.gate.tryAcquire(node, w.model, fleet.slots(state, w.embeddingOnly, w.model), {
        priority: w.priority,
        enqueuedAt: w.enqueuedAt,
        deadlineAt: w.deadlineAt,
      });
      gateBackoff.delete(w.model);
    } catch (e) {
      unreserve(w, r);
      gateFailed(node, w.model, e);
      return false;
    }
    if (slot === undefined) {
      unreserve(w, r);
      // Another replica holds the slots: look again shortly.
      wakeIn(retryMs);
      return false;
    }
    return settle(w, r, slot);
  }

  /**
   * Settles `w` with the slot the gate granted for its reservation `r` (see `confirm`). Called
   * directly, without a promise, with a single replica's gate (`LOCAL_GATE`), which always grants.
   */
  function settle(w: Waiter, r: Reservation, slot: { release(): Promise<void> }): boolean {
    if (w.done || w.signal.aborted) {
      unreserve(w, r);
      void slot.release().catch(() => undefined);
      finish(w, () => w.reject(w.signal.reason));
      pump(); // the reserved slot is free again
      return true;
    }
    const d = dispatch(w, r, slot);
    finish(w, () => w.resolve(d));
    return true;
  }

  /** Places a queue head reserved on a node; the model's next head is considered once this settles. */
  async function placeHead(w: Waiter, r: Reservation): Promise<void> {
    let settled = false;
    try {
      settled = await confirm(w, r);
    } finally {
      placing.delete(w.model);
    }
    // After a refusal the retry timer looks again; pumping now would ask the gate in a loop.
    if (settled) pump();
  }

  /** A request that holds its reserved slot. */
  function dispatch(w: Waiter, r: Reservation, slot: { release(): Promise<void> }): Dispatch {
    const { state } = r;
    const started = Date.now();
    if (w.affinity) deps.affinity.set(w.affinity, state.node.name);
    const key = `${state.node.name}\0${w.model}`;
    let peers = running.get(key);
    if (peers === undefined) running.set(key, (peers = []));
    const me = { peak: state.models.get(w.model)?.inFlight ?? 1 };
    peers.push(me);
    let released = false;
    let onRelease: () => void = () => undefined;
    const ended = new Promise<void>((resolve) => {
      onRelease = resolve;
    });
    if (r.load) void watchLoad(state, w.model, ended);
    return {
      node: state.node,
      queueMs: started - w.enqueuedAt,
      release(observed) {
        if (released) return;
        released = true;
        fleet.end(state, w.model);
        // Swap with the last and pop: order does not matter, and a node runs at most its slots.
        const i = peers.indexOf(me);
        if (i >= 0) {
          peers[i] = peers[peers.length - 1]!;
          peers.pop();
        }
        onRelease();
        const learned = learnTimes(
          { serviceMs: serviceMs.get(w.model), loadMs: loadMs.get(w.model) },
          { heldMs: Date.now() - started, loadMs: observed?.loadMs ?? 0 },
        );
        serviceMs.set(w.model, learned.serviceMs);
        if (learned.loadMs !== undefined) loadMs.set(w.model, learned.loadMs);
        if (observed !== undefined && !w.embeddingOnly) learnSlots(state, w.model, observed, me.peak);
        slot.release().catch(() => undefined);
        pump();
      },
    };
  }

  /** Feeds one finished request's timings to the node's slot learning; logs the first lowering. */
  function learnSlots(state: NodeState, model: string, timings: OllamaTimings, peak: number): void {
    const lowered = fleet.observeSlots(state, model, { timings, peak, at: Date.now() });
    if (lowered === undefined) return;
    const key = `${state.node.name}\0${model}`;
    if (slotsLogged.has(key)) return;
    slotsLogged.add(key);
    deps.log?.warn(
      { node: state.node.name, model, configured: lowered.configured, slots: lowered.slots, waits: lowered.waits },
      SLOTS_LOWERED_MSG,
    );
  }

  /** Logs what a read of /api/ps taught about a node's capacity, when it taught something. */
  function reportCapacity(node: string, change: { before: NodeCapacity; after: NodeCapacity }): void {
    const e = change.after.evidence[0];
    if (e === undefined || e === change.before.evidence[0] || e.kind === "fits") return;
    deps.log?.info?.(
      { node, evidence: e.kind, models: e.models, totalBytes: e.totalBytes, budgetBytes: budgetBytes(change.after) },
      CAPACITY_LEARNED_MSG,
    );
  }

  /**
   * After a load sent to `state`'s node: re-reads /api/ps there (bypassing the cache) until the
   * model shows — Ollama has evicted what it had to by then — or its request ended, then teaches
   * the capacity model, corrects the picture, refreshes the nodes on the same host and places
   * what waited for the picture to settle.
   */
  async function watchLoad(state: NodeState, model: string, ended: Promise<void>): Promise<void> {
    const signal = stopping.signal;
    const startedAt = Date.now();
    let over = false;
    void ended.then(() => {
      over = true;
    });
    while (!signal.aborted && state.loading?.model === model) {
      let after: ResidentModel[] | undefined;
      try {
        after = residentOf(await deps.metadata.ps(state.node, AbortSignal.timeout(2_000), true));
      } catch {
        after = undefined;
      }
      if (signal.aborted || state.loading?.model !== model) return;
      const arrived = after?.some((m) => m.name === model) === true;
      if (arrived || over || Date.now() - startedAt > LOAD_CONFIRM_MAX_MS) {
        reportCapacity(state.node.name, fleet.loadObserved(state, model, after));
        await refreshSameHost(state, signal);
        pump();
        return;
      }
      await Promise.race([sleep(pollMs, undefined, { ref: false, signal }).catch(() => undefined), ended]);
    }
  }

  /** Re-reads /api/ps on the other nodes of `state`'s host: they may share its GPU, and so its evictions. */
  async function refreshSameHost(state: NodeState, signal: AbortSignal): Promise<void> {
    const host = hostOf(state.node.url);
    await Promise.all(
      fleet.nodes
        .filter((s) => s !== state && hostOf(s.node.url) === host && health.isHealthy(s.node.name))
        .map(async (s) => {
          try {
            const ps = await deps.metadata.ps(s.node, AbortSignal.timeout(2_000), true);
            if (!signal.aborted) fleet.sync(s.node.name, residentOf(ps));
          } catch {
            // keep the last view; the periodic sync tries again
          }
        }),
    );
  }

  /**
   * Offers free slots to the queue heads, highest priority then oldest first. Choosing and
   * reserving is synchronous, in that order; the gate calls then run concurrently, one per model.
   */
  function pump(): void {
    // Only a draining node can have an obsolete drain (and a view is not free: this runs per call).
    if (draining.size > 0) endDrains(obsoleteDrains(view()));
    if (queues.size === 0) return;
    for (let progress = true; progress; ) {
      progress = false;
      const now = Date.now();
      let nextUntil = Number.POSITIVE_INFINITY;
      const heads: Waiter[] = [];
      for (const q of queues.values()) {
        const w = q[0];
        if (w === undefined || placing.has(w.model)) continue;
        if (gateBackoff.size > 0 && backingOff(w.model, now)) {
          nextUntil = Math.min(nextUntil, gateBackoff.get(w.model)!.until);
          continue;
        }
        heads.push(w);
      }
      if (heads.length > 1) heads.sort(compareHeads);
      // A head still backing off gets a wake-up at its end: a timer that fired a millisecond
      // early by Date.now (timers run on another clock) must not leave it queued for good.
      if (nextUntil !== Number.POSITIVE_INFINITY) wakeIn(Math.max(1, nextUntil - now));
      for (const w of heads) {
        const r = reserve(w);
        if (r === undefined) continue;
        // A placement may end a drain or load a model: look at the other heads again.
        progress = true;
        if (local) {
          // The single-replica gate always grants: settled here, no promise per call.
          settle(w, r, LOCAL_SLOT);
          continue;
        }
        placing.add(w.model);
        void placeHead(w, r);
      }
    }
  }

  function enqueue(w: Waiter): void {
    let q = queues.get(w.model);
    if (q === undefined) queues.set(w.model, (q = []));
    q.splice(queueInsertIndex(q, w.priority), 0, w);
    queued++;
  }

  function remove(w: Waiter): boolean {
    const q = queues.get(w.model);
    const i = q?.indexOf(w) ?? -1;
    if (q === undefined || i === -1) return false;
    q.splice(i, 1);
    if (q.length === 0) queues.delete(w.model);
    queued--;
    return true;
  }

  function expectedWait(w: Waiter, position: number): number | undefined {
    return expectedWaitMs(view(), {
      model: w.model,
      position,
      candidates: w.candidates,
      embeddingOnly: w.embeddingOnly,
    });
  }

  async function sync(): Promise<void> {
    await Promise.all(
      fleet.nodes.map(async (s) => {
        if (!health.isHealthy(s.node.name)) return;
        try {
          const ps = await deps.metadata.ps(s.node, AbortSignal.timeout(2_000));
          fleet.sync(s.node.name, residentOf(ps));
        } catch {
          // keep the last view; health probes deal with dead nodes
        }
      }),
    );
    pump();
  }

  return {
    async acquire(req) {
      const model = canonicalModelName(req.model);
      const where = await deps.metadata.locate(req.model, req.signal);
      if (where.located.length === 0) {
        if (where.unavailable.length === fleet.nodes.length) {
          throw noNodeAnswered({ model: req.model });
        }
        throw modelNotFound(req.model);
      }
      const candidates = where.names;
      const caps = where.located[0]!.tag.capabilities;
      const fileBytes = where.located[0]!.tag.size > 0 ? where.located[0]!.tag.size : undefined;
      const embeddingOnly = caps.includes("embedding") && !caps.includes("completion");
      if (!where.located.some((l) => health.isHealthy(l.node.name) && !req.exclude?.has(l.node.name))) {
        throw noHealthyNodeFor(req.model);
      }

      return new Promise<Dispatch>((resolve, reject) => {
        let waitTimer: NodeJS.Timeout | undefined;
        const enqueuedAt = Date.now();
        const w: Waiter = {
          model,
          priority: req.priority,
          affinity: req.affinity,
          exclude: req.exclude,
          candidates,
          embeddingOnly,
          fileBytes,
          enqueuedAt,
          deadlineAt: Number.isFinite(req.remainingMs) ? enqueuedAt + req.remainingMs : undefined,
          signal: req.signal,
          done: false,
          resolve,
          reject,
          cleanup: () => {
            req.signal.removeEventListener("abort", onAbort);
            if (waitTimer) clearTimeout(waitTimer);
          },
        };
        const onAbort = (): void => {
          if (finish(w, () => reject(req.signal.reason))) pump();
        };

        const admit = async (): Promise<void> => {
          // Nobody ahead of it: try to place it straight away.
          if (!waiting(model) && !backingOff(model, Date.now())) {
            const r = reserve(w);
            if (r !== undefined && (local ? settle(w, r, LOCAL_SLOT) : await confirm(w, r))) return;
          }
          if (req.signal.aborted) return reject(req.signal.reason);
          const depth = queues.get(model)?.length ?? 0;
          const expected = expectedWait(w, depth + 1);
          if (depth >= deps.admission.maxQueuedPerModel || queued >= deps.admission.maxQueuedTotal) {
            return reject(queueFull(req.model, depth, expected));
          }
          const budgetLimited = maxWaitMs > 0 && maxWaitMs < req.remainingMs;
          const budget = budgetLimited ? maxWaitMs : req.remainingMs;
          if (expected !== undefined && expected > budget) {
            return reject(
              budgetLimited
                ? expectedWaitTooLong(req.model, expected, maxWaitMs)
                : deadlineTooShort(req.model, expected),
            );
          }
          req.signal.addEventListener("abort", onAbort, { once: true });
          if (budgetLimited) {
            // The prediction was wrong: leave the queue at the budget instead of waiting on.
            waitTimer = setTimeout(() => {
              const left = finish(w, () => reject(waitedTooLong(req.model, maxWaitMs, expectedWait(w, 1))));
              if (left) pump();
            }, maxWaitMs);
            waitTimer.unref();
          }
          enqueue(w);
          pump();
        };
        admit().catch(reject);
      });
    },

    queues: () =>
      [...queues].map(([model, q]) => ({ model, depth: q.length })).sort((a, b) => (a.model < b.model ? -1 : 1)),

    draining: drainList,

    onDrainChange(listener) {
      drainListeners.add(listener);
      return () => {
        drainListeners.delete(listener);
      };
    },

    start() {
      if (syncTimer) return;
      if (stopping.signal.aborted) stopping = new AbortController();
      void sync();
      syncTimer = setInterval(() => void sync(), deps.syncMs ?? 2_000);
      syncTimer.unref();
      // A node coming back may unblock queued requests.
      unsubscribeHealth = health.onChange((_, healthy) => {
        if (healthy) pump();
      });
    },

    stop() {
      if (syncTimer) clearInterval(syncTimer);
      if (wakeTimer) clearTimeout(wakeTimer);
      syncTimer = undefined;
      wakeTimer = undefined;
      unsubscribeHealth?.();
      unsubscribeHealth = undefined;
      stopping.abort();
      for (const w of [...queues.values()].flat()) finish(w, () => w.reject(shuttingDown()));
      queues.clear();
      queued = 0;
      gateBackoff.clear();
      endDrains([...draining.keys()]);
    },
  };
}
