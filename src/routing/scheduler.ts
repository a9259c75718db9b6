import { Code } from "@connectrpc/connect";
import { gatewayError } from "../errors/gateway-error.js";
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
  /** Gives the slot back; `failed` when the upstream call failed. Idempotent. */
  release(): void;
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
 */
export interface Scheduler {
  /** Waits for a slot and binds the request to a node. */
  acquire(req: AdmissionRequest): Promise<Dispatch>;
  /** Current queue depths. */
  queues(): QueueDepth[];
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

// Smoothing of the per-model service time used to predict queue waits.
const EWMA = 0.2;

/** A gate for a single replica: the scheduler's own counting is the whole truth. */
export const LOCAL_GATE: SlotGate = {
  tryAcquire: () => Promise.resolve({ release: () => Promise.resolve() }),
};

/** Creates the scheduler. */
export function createScheduler(deps: SchedulerDeps): Scheduler {
  const { fleet, health } = deps;
  const queues = new Map<string, Waiter[]>();
  let queued = 0;
  const serviceMs = new Map<string, number>();
  let pumping = false;
  let pumpAgain = false;
  let retryTimer: NodeJS.Timeout | undefined;
  let syncTimer: NodeJS.Timeout | undefined;

  function waiting(model: string): boolean {
    return (queues.get(model)?.length ?? 0) > 0;
  }

  /** The node for this waiter now, or undefined (wait). Synchronous: no slot is taken yet. */
  function choose(w: Waiter): NodeState | undefined {
    const usable = fleet.nodes.filter(
      (s) => w.candidates.has(s.node.name) && !w.exclude?.has(s.node.name) && health.isHealthy(s.node.name),
    );
    const load = (s: NodeState): number => {
      let n = 0;
      for (const m of s.models.values()) n += m.inFlight;
      return n / Math.max(0.001, s.config.weight);
    };
    const pick = (list: NodeState[]): NodeState | undefined => {
      if (list.length === 0) return undefined;
      const sticky = w.affinity ? deps.affinity.get(w.affinity) : undefined;
      const preferred = sticky ? list.find((s) => s.node.name === sticky) : undefined;
      return preferred ?? list.reduce((best, s) => (load(s) < load(best) ? s : best));
    };
    const loadedFree = usable.filter((s) => {
      const m = s.models.get(w.model);
      return m !== undefined && m.inFlight < fleet.slots(s, w.embeddingOnly);
    });
    const chosen = pick(loadedFree);
    if (chosen) return chosen;
    const notLoaded = usable.filter((s) => !s.models.has(w.model));
    const withRoom = notLoaded.filter((s) => s.models.size < s.config.maxLoadedModels);
    if (withRoom.length > 0) return pick(withRoom);
    const loadedSomewhere = usable.some((s) => s.models.has(w.model));
    if (loadedSomewhere) return undefined; // wait for a slot rather than evict
    const evictable = notLoaded.filter((s) => {
      for (const [name, m] of s.models) if (m.inFlight === 0 && !waiting(name)) return true;
      return false;
    });
    return pick(evictable);
  }

  /** A request that holds its reserved slot. */
  function dispatch(w: Waiter, state: NodeState, slot: { release(): Promise<void> }): Dispatch {
    const started = Date.now();
    if (w.affinity) deps.affinity.set(w.affinity, state.node.name);
    let released = false;
    return {
      node: state.node,
      queueMs: started - w.enqueuedAt,
      release() {
        if (released) return;
        released = true;
        fleet.end(state, w.model);
        const took = Date.now() - started;
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
    const slot = await deps.gate.tryAcquire(state.node.name, w.model, fleet.slots(state, w.embeddingOnly)).catch(() => undefined);
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
          fleet.sync(s.node.name, ps.map((r) => canonicalModelName(r.name)));
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
          throw gatewayError(Code.Unavailable, "UPSTREAM_UNAVAILABLE", "no Ollama node answered", {
            retryAfterMs: 1000,
            metadata: { model: req.model },
          });
        }
        throw gatewayError(Code.NotFound, "MODEL_NOT_FOUND", `model ${req.model} not found on any node`, {
          metadata: { model: req.model },
        });
      }
      const candidates = new Set(where.located.map((l) => l.node.name));
      const caps = where.located[0]!.tag.capabilities;
      const embeddingOnly = caps.includes("embedding") && !caps.includes("completion");
      if (![...candidates].some((n) => health.isHealthy(n) && !req.exclude?.has(n))) {
        throw gatewayError(Code.Unavailable, "UPSTREAM_UNAVAILABLE", "no healthy Ollama node has this model", {
          retryAfterMs: 1000,
          metadata: { model: req.model },
        });
      }

      return new Promise<Dispatch>((resolve, reject) => {
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
          cleanup: () => req.signal.removeEventListener("abort", onAbort),
        };
        const onAbort = (): void => {
          if (remove(w)) reject(req.signal.reason);
        };

        const admit = async (): Promise<void> => {
          // Nobody ahead of it: try to place it straight away.
          if (!waiting(model) && (await place(w))) return;
          if (req.signal.aborted) return reject(req.signal.reason);
          const depth = queues.get(model)?.length ?? 0;
          const expected = expectedWaitMs(model, depth + 1, candidates, embeddingOnly);
          if (depth >= deps.admission.maxQueuedPerModel || queued >= deps.admission.maxQueuedTotal) {
            return reject(
              gatewayError(Code.ResourceExhausted, "QUEUE_FULL", `the queue for ${req.model} is full`, {
                retryAfterMs: clampRetry(expected),
                metadata: { model: req.model, queued: String(depth) },
              }),
            );
          }
          if (expected !== undefined && expected > req.remainingMs) {
            return reject(
              gatewayError(Code.ResourceExhausted, "DEADLINE_TOO_SHORT", `the expected wait for ${req.model} is longer than the deadline`, {
                retryAfterMs: clampRetry(expected),
                metadata: { model: req.model, expected_wait_ms: String(Math.round(expected)) },
              }),
            );
          }
          req.signal.addEventListener("abort", onAbort, { once: true });
          enqueue(w);
          void pump();
        };
        admit().catch(reject);
      });
    },

    queues: () => [...queues].map(([model, q]) => ({ model, depth: q.length })).sort((a, b) => (a.model < b.model ? -1 : 1)),

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
          w.reject(gatewayError(Code.Unavailable, "SHUTTING_DOWN", "server shutting down"));
        }
      }
      queues.clear();
      queued = 0;
    },
  };

  /** Predicted wait of the `position`-th request in a model's queue, or undefined before anything was measured. */
  function expectedWaitMs(model: string, position: number, candidates: ReadonlySet<string>, embeddingOnly: boolean): number | undefined {
    const svc = serviceMs.get(model);
    if (svc === undefined) return undefined;
    let slots = 0;
    for (const s of fleet.nodes) {
      if (candidates.has(s.node.name) && health.isHealthy(s.node.name) && s.models.has(model)) {
        slots += fleet.slots(s, embeddingOnly);
      }
    }
    return Math.ceil(position / Math.max(1, slots)) * svc;
  }
}

function clampRetry(ms: number | undefined): number {
  return Math.min(30_000, Math.max(100, ms ?? 1_000));
}
