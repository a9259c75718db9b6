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
import type { FleetMetadata } from "./fleet-metadata.js";
import type { FleetState, NodeState } from "./fleet-state.js";

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

/**
 * Admission and node choice. A request is bound to a node only when a slot
 * is free there (late binding); until then it waits in a bounded queue per
 * model, highest priority first and FIFO within a priority. A full queue, or
 * a deadline shorter than the expected wait, fails at once with
 * RESOURCE_EXHAUSTED rather than as a timeout later.
 *
 * Choosing among the nodes that have the model installed and are routable:
 * 1. a node where the model is loaded and a slot is free — the affinity
 *    node first (Ollama reuses its prompt cache), else the least loaded;
 * 2. else a node that can load it without evicting anything, then (only
 *    when the model is loaded nowhere) one whose eviction victim is idle and
 *    has nobody waiting; a model with requests running or queued is never
 *    pushed out while another choice exists;
 * 3. else wait: the request is placed when a slot frees up.
 *
 * Rebalancing (see `rebalance`): a model that is loaded nowhere, or whose
 * oldest waiting request has waited longer than loading the model takes,
 * gets a node *drained* for it: no new work of other models goes there, and
 * once its running requests end the hungry model is loaded there. The victim
 * is the node whose loss hurts least: idle models first, then models that
 * stay loaded on another node and have nobody waiting; a model that would be
 * left loaded nowhere with requests waiting is only displaced for a model
 * whose oldest request has waited longer (oldest first), so two hot models on
 * too few nodes take turns instead of one starving.
 */
export interface Scheduler {
  /** Waits for a slot and binds the request to a node. */
  acquire(req: AdmissionRequest): Promise<Dispatch>;
  /** Current queue depths. */
  queues(): QueueDepth[];
  /** Nodes being drained for a hungry model (see rebalancing above). */
  draining(): { node: string; model: string }[];
  /** Starts the periodic sync with /api/ps. */
  start(): void;
  /** Stops it, and fails every queued request with UNAVAILABLE. */
  stop(): void;
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
}

interface Waiter {
  model: string;
  priority: number;
  affinity: string | undefined;
  exclude: ReadonlySet<string> | undefined;
  candidates: ReadonlySet<string>;
  embeddingOnly: boolean;
  enqueuedAt: number;
  signal: AbortSignal;
  resolve(d: Dispatch): void;
  reject(e: unknown): void;
  cleanup(): void;
}

// Smoothing of the per-model service and load times used to predict waits.
const EWMA = 0.2;
/** Assumed model load time before one was measured: seconds, as for a 3–8 B model. */
const DEFAULT_LOAD_MS = 3_000;
/** A hungry model's oldest request must have waited at least this long before a node is drained for it. */
const MIN_REBALANCE_WAIT_MS = 500;
/** An idle model unused this long may be pushed out for a busier one even where it is loaded nowhere else. */
const COLD_MS = 30_000;

/** A gate for a single replica: the scheduler's own counting is the whole truth. */
export const LOCAL_GATE: SlotGate = {
  tryAcquire: () => Promise.resolve({ release: () => Promise.resolve() }),
};

/** Creates the scheduler. */
export function createScheduler(deps: SchedulerDeps): Scheduler {
  const { fleet, health } = deps;
  const rebalance = deps.rebalance ?? true;
  const maxWaitMs = deps.admission.maxWaitMs ?? 0;
  const queues = new Map<string, Waiter[]>();
  let queued = 0;
  /** Per model: how long a request holds its slot, loads excluded (EWMA, ms). */
  const serviceMs = new Map<string, number>();
  /** Per model: how long Ollama takes to load it (EWMA of reported load_duration, ms). */
  const loadMs = new Map<string, number>();
  /** Nodes being drained, and the model each is drained for. */
  const draining = new Map<string, string>();
  let pumping = false;
  let pumpAgain = false;
  let retryTimer: NodeJS.Timeout | undefined;
  let syncTimer: NodeJS.Timeout | undefined;

  function waiting(model: string): boolean {
    return (queues.get(model)?.length ?? 0) > 0;
  }

  function headWaitMs(model: string, now: number): number {
    const head = queues.get(model)?.[0];
    return head === undefined ? 0 : now - head.enqueuedAt;
  }

  function inFlight(s: NodeState): number {
    let n = 0;
    for (const m of s.models.values()) n += m.inFlight;
    return n;
  }

  /** Requests running on a node, relative to its weight: what "least loaded" compares. */
  function weightedLoad(s: NodeState): number {
    return inFlight(s) / Math.max(0.001, s.config.weight);
  }

  /** Loaded on some routable node other than `except`. */
  function loadedElsewhere(model: string, except: NodeState): boolean {
    return fleet.nodes.some((o) => o !== except && o.models.has(model) && health.isHealthy(o.node.name));
  }

  /**
   * Waiting longer than two loads take: worth giving the model another node. (Twice, so that a
   * queue that merely waits for a load in progress does not trigger another one elsewhere.)
   */
  function worthALoad(model: string, now: number): boolean {
    return headWaitMs(model, now) >= Math.max(MIN_REBALANCE_WAIT_MS, 2 * (loadMs.get(model) ?? DEFAULT_LOAD_MS));
  }

  /** Pushing this idle model out of `s` costs nothing: it stays loaded elsewhere, or nobody used it for a while. */
  function spare(name: string, m: { lastUsed: number }, s: NodeState, now: number): boolean {
    return loadedElsewhere(name, s) || now - m.lastUsed >= COLD_MS;
  }

  /**
   * What draining `s` for `hungry` costs the models on it, or undefined when it is not allowed:
   * 0 idle, 1 loaded elsewhere too and nobody waiting, 2 loaded elsewhere with requests waiting,
   * 3 loaded only here and nobody waiting, 4 loaded only here with requests waiting (allowed
   * only for a model whose oldest request waited longer).
   */
  function drainCost(s: NodeState, hungry: string, starving: boolean, now: number): number | undefined {
    let cost = 0;
    for (const [name, m] of s.models) {
      if (name === hungry) return undefined;
      const elsewhere = loadedElsewhere(name, s);
      const queuedToo = waiting(name);
      let c: number;
      if (m.inFlight === 0 && !queuedToo) c = 0;
      else if (elsewhere) c = queuedToo ? 2 : 1;
      else if (!queuedToo) c = 3;
      else if (headWaitMs(hungry, now) > headWaitMs(name, now)) c = 4;
      else return undefined;
      cost = Math.max(cost, c);
    }
    // Scaling out a model that is served somewhere never takes capacity a queue needs.
    return starving || cost <= 1 ? cost : undefined;
  }

  /** Starts draining a node for the head of `w`'s model when it is hungry and none is being drained for it yet. */
  function maybeDrain(w: Waiter, usable: NodeState[], loadedSomewhere: boolean): void {
    if (!rebalance) return;
    for (const model of draining.values()) if (model === w.model) return;
    const now = Date.now();
    const starving = !loadedSomewhere;
    if (!starving && !worthALoad(w.model, now)) return;
    let best: { s: NodeState; cost: number; busy: number } | undefined;
    for (const s of usable) {
      if (draining.has(s.node.name) || s.models.has(w.model)) continue;
      if (s.models.size < s.config.maxLoadedModels) continue; // has room: chosen directly, not drained
      const cost = drainCost(s, w.model, starving, now);
      if (cost === undefined) continue;
      const busy = weightedLoad(s);
      if (best === undefined || cost < best.cost || (cost === best.cost && busy < best.busy)) best = { s, cost, busy };
    }
    if (best !== undefined) draining.set(best.s.node.name, w.model);
  }

  /** The node for this waiter now, or undefined (wait). Synchronous: no slot is taken yet. */
  function choose(w: Waiter): NodeState | undefined {
    const usable = fleet.nodes.filter(
      (s) => w.candidates.has(s.node.name) && !w.exclude?.has(s.node.name) && health.isHealthy(s.node.name),
    );
    // A node drained for this model, now empty: load it there.
    const drained = usable.find((s) => draining.get(s.node.name) === w.model && inFlight(s) === 0);
    if (drained) {
      draining.delete(drained.node.name);
      return drained;
    }
    // Nodes drained for another model take no new work.
    const open = usable.filter((s) => {
      const d = draining.get(s.node.name);
      return d === undefined || d === w.model;
    });
    const pick = (list: NodeState[]): NodeState | undefined => {
      if (list.length === 0) return undefined;
      const sticky = w.affinity ? deps.affinity.get(w.affinity) : undefined;
      const preferred = sticky ? list.find((s) => s.node.name === sticky) : undefined;
      return preferred ?? list.reduce((best, s) => (weightedLoad(s) < weightedLoad(best) ? s : best));
    };
    const loadedFree = open.filter((s) => {
      const m = s.models.get(w.model);
      return m !== undefined && m.inFlight < fleet.slots(s, w.embeddingOnly);
    });
    const chosen = pick(loadedFree);
    if (chosen) return chosen;
    const notLoaded = open.filter((s) => !s.models.has(w.model) && draining.get(s.node.name) === undefined);
    const withRoom = notLoaded.filter((s) => s.models.size < s.config.maxLoadedModels);
    if (withRoom.length > 0) return pick(withRoom);
    const loadedSomewhere = usable.some((s) => s.models.has(w.model));
    const idle = notLoaded.filter((s) => {
      for (const [name, m] of s.models) if (m.inFlight === 0 && !waiting(name)) return true;
      return false;
    });
    // Wait for a slot rather than evict; a model loaded nowhere takes any idle node.
    if (idle.length > 0 && !loadedSomewhere) return pick(idle);
    // Scaling out once the wait has grown longer than a load: only onto a node whose idle
    // model loses nothing by it (loaded elsewhere too, or cold).
    const now = Date.now();
    if (rebalance && idle.length > 0 && worthALoad(w.model, now)) {
      const free = idle.filter((s) => {
        for (const [name, m] of s.models) if (m.inFlight === 0 && !waiting(name) && spare(name, m, s, now)) return true;
        return false;
      });
      if (free.length > 0) return pick(free);
    }
    maybeDrain(w, open, loadedSomewhere);
    return undefined;
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
        const loaded = observed?.loadMs ?? 0;
        if (loaded > 50) {
          const prev = loadMs.get(w.model);
          loadMs.set(w.model, prev === undefined ? loaded : prev * (1 - EWMA) + loaded * EWMA);
        }
        const took = Math.max(0, Date.now() - started - loaded);
        const prev = serviceMs.get(w.model);
        serviceMs.set(w.model, prev === undefined ? took : prev * (1 - EWMA) + took * EWMA);
        slot.release().catch(() => undefined);
        void pump();
      },
    };
  }

  /** Tries to place `w`; true when it got a node. */
  async function place(w: Waiter): Promise<boolean> {
    const state = choose(w);
    if (state === undefined) return false;
    // Reserve before the first await, so concurrent placements see the slot taken.
    fleet.begin(state, w.model, w.embeddingOnly);
    const slot = await deps.gate
      .tryAcquire(state.node.name, w.model, fleet.slots(state, w.embeddingOnly))
      .catch(() => undefined);
    if (slot === undefined) {
      fleet.end(state, w.model);
      // Another replica holds the slots: look again shortly.
      retryTimer ??= setTimeout(() => {
        retryTimer = undefined;
        void pump();
      }, 25);
      return false;
    }
    if (w.signal.aborted) {
      fleet.end(state, w.model);
      await slot.release().catch(() => undefined);
      w.cleanup();
      w.reject(w.signal.reason);
      return true; // the waiter is gone (a second reject is a no-op)
    }
    w.cleanup();
    w.resolve(dispatch(w, state, slot));
    return true;
  }

  /** Forgets drains that are no longer needed: nobody waits for the model, or the node cannot serve. */
  function pruneDrains(): void {
    for (const [node, model] of draining) {
      if (!waiting(model) || !health.isHealthy(node)) draining.delete(node);
    }
  }

  /** Places queued requests while slots are free; heads of the oldest queues first. */
  async function pump(): Promise<void> {
    if (pumping) {
      pumpAgain = true;
      return;
    }
    pumping = true;
    try {
      do {
        pumpAgain = false;
        pruneDrains();
        const heads = [...queues.values()]
          .map((q) => q[0])
          .filter((w): w is Waiter => w !== undefined)
          .sort((a, b) => b.priority - a.priority || a.enqueuedAt - b.enqueuedAt);
        for (const w of heads) {
          if (queues.get(w.model)?.[0] !== w) continue;
          if (await place(w)) {
            remove(w); // false when its abort handler already took it out
            pumpAgain = true;
          }
        }
      } while (pumpAgain);
    } finally {
      pumping = false;
    }
  }

  function enqueue(w: Waiter): void {
    let q = queues.get(w.model);
    if (q === undefined) queues.set(w.model, (q = []));
    let i = q.length;
    while (i > 0 && q[i - 1]!.priority < w.priority) i--;
    q.splice(i, 0, w);
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
    await pump();
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
          resolve,
          reject,
          cleanup: () => {
            req.signal.removeEventListener("abort", onAbort);
            if (waitTimer) clearTimeout(waitTimer);
          },
        };
        const onAbort = (): void => {
          if (remove(w)) {
            w.cleanup();
            reject(req.signal.reason);
          }
        };

        const admit = async (): Promise<void> => {
          // Nobody ahead of it: try to place it straight away.
          if (!waiting(model) && (await place(w))) return;
          if (req.signal.aborted) return reject(req.signal.reason);
          const depth = queues.get(model)?.length ?? 0;
          const expected = expectedWaitMs(model, depth + 1, candidates, embeddingOnly);
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
              if (!remove(w)) return;
              w.cleanup();
              reject(waitedTooLong(req.model, maxWaitMs, expectedWaitMs(model, 1, candidates, embeddingOnly)));
              void pump();
            }, maxWaitMs);
            waitTimer.unref();
          }
          enqueue(w);
          void pump();
        };
        admit().catch(reject);
      });
    },

    queues: () =>
      [...queues].map(([model, q]) => ({ model, depth: q.length })).sort((a, b) => (a.model < b.model ? -1 : 1)),

    draining: () => [...draining].map(([node, model]) => ({ node, model })),

    start() {
      if (syncTimer) return;
      void sync();
      syncTimer = setInterval(() => void sync(), deps.syncMs ?? 2_000);
      syncTimer.unref();
      // A node coming back may unblock queued requests.
      health.onChange((_, healthy) => {
        if (healthy) void pump();
      });
    },

    stop() {
      if (syncTimer) clearInterval(syncTimer);
      if (retryTimer) clearTimeout(retryTimer);
      syncTimer = undefined;
      for (const q of queues.values()) {
        for (const w of q) {
          w.cleanup();
          w.reject(shuttingDown());
        }
      }
      queues.clear();
      draining.clear();
      queued = 0;
    },
  };

  /**
   * Predicted wait of the `position`-th request in a model's queue, or undefined before anything
   * was measured: rounds of the model's service time over the slots it has, plus a load when it
   * is loaded nowhere.
   */
  function expectedWaitMs(
    model: string,
    position: number,
    candidates: ReadonlySet<string>,
    embeddingOnly: boolean,
  ): number | undefined {
    const svc = serviceMs.get(model);
    if (svc === undefined) return undefined;
    let slots = 0;
    for (const s of fleet.nodes) {
      if (candidates.has(s.node.name) && health.isHealthy(s.node.name) && s.models.has(model)) {
        slots += fleet.slots(s, embeddingOnly);
      }
    }
    const load = slots === 0 ? (loadMs.get(model) ?? 0) : 0;
    return load + Math.ceil(position / Math.max(1, slots)) * svc;
  }
}
