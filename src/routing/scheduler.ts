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
import { canonicalModelName } from "../upstream/model-name.js";
import type { NodeHealth } from "../upstream/node-health.js";
import type { OllamaNode } from "../upstream/ollama-node.js";
import type { AffinityTable } from "./affinity.js";
import { chooseDrainVictim, obsoleteDrains } from "./drain-policy.js";
import type { FleetMetadata } from "./fleet-metadata.js";
import type { FleetState, NodeState } from "./fleet-state.js";
import { choosePlacement } from "./placement-policy.js";
import type { FleetView, PlacementRequest, QueueView } from "./policy-snapshot.js";
import { compareHeads, queueInsertIndex } from "./queue-order-policy.js";
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

/** A slot taken on a node, shared with other replicas when Redis is used. */
export interface SlotGate {
  /** Takes one of `limit` slots of (node, model), or undefined when all are held (by any replica). */
  tryAcquire(node: string, model: string, limit: number): Promise<{ release(): Promise<void> } | undefined>;
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
   * (`load_duration`), so the scheduler can tell load time from service time. Idempotent.
   */
  release(observed?: { loadMs?: number }): void;
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

interface Waiter {
  readonly model: string;
  readonly priority: number;
  readonly affinity: string | undefined;
  readonly exclude: ReadonlySet<string> | undefined;
  readonly candidates: ReadonlySet<string>;
  readonly embeddingOnly: boolean;
  readonly enqueuedAt: number;
  readonly signal: AbortSignal;
  /** Set once the request got its dispatch or its error: later outcomes are dropped. */
  done: boolean;
  resolve(d: Dispatch): void;
  reject(e: unknown): void;
  cleanup(): void;
}

/** A held slot refused by every replica is looked at again after this long, ms. */
const RETRY_MS = 25;
/** Longest pause between placements of a model while the gate keeps throwing, ms. */
const MAX_BACKOFF_MS = 2_000;

/** A gate for a single replica: the scheduler's own counting is the whole truth. */
export const LOCAL_GATE: SlotGate = {
  tryAcquire: () => Promise.resolve({ release: () => Promise.resolve() }),
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
  /** Per model, while its gate calls throw: failures in a row, and when to try again (ms). */
  const gateBackoff = new Map<string, { failures: number; until: number }>();
  let wakeTimer: NodeJS.Timeout | undefined;
  let wakeAt = 0;
  let syncTimer: NodeJS.Timeout | undefined;
  let unsubscribeHealth: (() => void) | undefined;

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

  /** The policies' picture of the fleet right now (the models maps are shared, read-only, not copied). */
  function view(): FleetView {
    const now = Date.now();
    const queueViews = new Map<string, QueueView>();
    for (const [model, q] of queues) {
      const head = q[0];
      if (head !== undefined) {
        queueViews.set(model, { depth: q.length, headWaitMs: now - head.enqueuedAt, headPriority: head.priority });
      }
    }
    return {
      now,
      nodes: fleet.nodes.map((s) => ({
        name: s.node.name,
        healthy: health.isHealthy(s.node.name),
        weight: s.config.weight,
        maxLoadedModels: s.config.maxLoadedModels,
        parallel: s.config.parallel,
        models: s.models,
        drainingFor: draining.get(s.node.name),
      })),
      queues: queueViews,
      serviceMs,
      loadMs,
    };
  }

  function placementRequest(w: Waiter): PlacementRequest {
    return {
      model: w.model,
      candidates: w.candidates,
      exclude: w.exclude,
      embeddingOnly: w.embeddingOnly,
      affinityNode: w.affinity ? deps.affinity.get(w.affinity) : undefined,
    };
  }

  /**
   * Chooses a node for `w` and reserves one of its slots in `FleetState` at once, so decisions
   * taken before the gate answers see the slot taken; undefined = wait (a drain may have started).
   */
  function reserve(w: Waiter): NodeState | undefined {
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
    fleet.begin(state, w.model, w.embeddingOnly);
    return state;
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
  async function confirm(w: Waiter, state: NodeState): Promise<boolean> {
    const node = state.node.name;
    let slot: { release(): Promise<void> } | undefined;
    try {
      slot = await deps.gate.tryAcquire(node, w.model, fleet.slots(state, w.embeddingOnly));
      gateBackoff.delete(w.model);
    } catch (e) {
      fleet.end(state, w.model);
      gateFailed(node, w.model, e);
      return false;
    }
    if (slot === undefined) {
      fleet.end(state, w.model);
      // Another replica holds the slots: look again shortly.
      wakeIn(RETRY_MS);
      return false;
    }
    if (w.done || w.signal.aborted) {
      fleet.end(state, w.model);
      void slot.release().catch(() => undefined);
      finish(w, () => w.reject(w.signal.reason));
      pump(); // the reserved slot is free again
      return true;
    }
    const d = dispatch(w, state, slot);
    finish(w, () => w.resolve(d));
    return true;
  }

  /** Places a queue head reserved on `state`; the model's next head is considered once this settles. */
  async function placeHead(w: Waiter, state: NodeState): Promise<void> {
    let settled = false;
    try {
      settled = await confirm(w, state);
    } finally {
      placing.delete(w.model);
    }
    // After a refusal the retry timer looks again; pumping now would ask the gate in a loop.
    if (settled) pump();
  }

  /** A request that holds its reserved slot. */
  function dispatch(w: Waiter, state: NodeState, slot: { release(): Promise<void> }): Dispatch {
    const started = Date.now();
    if (w.affinity) deps.affinity.set(w.affinity, state.node.name);
    let released = false;
    return {
      node: state.node,
      queueMs: started - w.enqueuedAt,
      release(observed) {
        if (released) return;
        released = true;
        fleet.end(state, w.model);
        const learned = learnTimes(
          { serviceMs: serviceMs.get(w.model), loadMs: loadMs.get(w.model) },
          { heldMs: Date.now() - started, loadMs: observed?.loadMs ?? 0 },
        );
        serviceMs.set(w.model, learned.serviceMs);
        if (learned.loadMs !== undefined) loadMs.set(w.model, learned.loadMs);
        slot.release().catch(() => undefined);
        pump();
      },
    };
  }

  /**
   * Offers free slots to the queue heads, highest priority then oldest first. Choosing and
   * reserving is synchronous, in that order; the gate calls then run concurrently, one per model.
   */
  function pump(): void {
    endDrains(obsoleteDrains(view()));
    for (let progress = true; progress; ) {
      progress = false;
      const now = Date.now();
      const heads = [...queues.values()]
        .map((q) => q[0])
        .filter((w): w is Waiter => w !== undefined && !placing.has(w.model) && !backingOff(w.model, now))
        .sort(compareHeads);
      for (const w of heads) {
        const state = reserve(w);
        if (state === undefined) continue;
        // A placement may end a drain or load a model: look at the other heads again.
        progress = true;
        placing.add(w.model);
        void placeHead(w, state);
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
          fleet.sync(
            s.node.name,
            ps.map((r) => canonicalModelName(r.name)),
          );
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
      const candidates = new Set(where.located.map((l) => l.node.name));
      const caps = where.located[0]!.tag.capabilities;
      const embeddingOnly = caps.includes("embedding") && !caps.includes("completion");
      if (![...candidates].some((n) => health.isHealthy(n) && !req.exclude?.has(n))) {
        throw noHealthyNodeFor(req.model);
      }

      return new Promise<Dispatch>((resolve, reject) => {
        let waitTimer: NodeJS.Timeout | undefined;
        const w: Waiter = {
          model,
          priority: req.priority,
          affinity: req.affinity,
          exclude: req.exclude,
          candidates,
          embeddingOnly,
          enqueuedAt: Date.now(),
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
            const state = reserve(w);
            if (state !== undefined && (await confirm(w, state))) return;
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
      for (const w of [...queues.values()].flat()) finish(w, () => w.reject(shuttingDown()));
      queues.clear();
      queued = 0;
      gateBackoff.clear();
      endDrains([...draining.keys()]);
    },
  };
}
