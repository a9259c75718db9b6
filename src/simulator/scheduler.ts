/**
 * The model scheduler, modelled on Ollama's `server/sched.go`:
 * - a request for a model that is loaded (or loading) with matching runner options attaches at
 *   once, bypassing the pending queue;
 * - anything needing a load or reload goes through a bounded pending queue (OLLAMA_MAX_QUEUE,
 *   503 when full) processed one request at a time, so only one model loads at a time;
 * - MAX_LOADED_MODELS evicts the idle runner with the soonest expiry (waiting for in-flight work),
 *   and so does a VRAM budget: runners are evicted, one at a time, until the new model fits next
 *   to the ones left, or nothing is left; a model larger than the whole budget then loads alone,
 *   partly offloaded (`sizeVram` < `size`);
 * - each runner has a FIFO slot semaphore of NUM_PARALLEL (1 for embedding models) with
 *   unbounded waiters;
 * - keep-alive: the last request that sets it wins; the idle timer starts when the runner's
 *   reference count reaches zero; 0 unloads as soon as idle; Infinity keeps it forever.
 * Runners are keyed by digest, so tags that share a blob share one runner (as in Ollama).
 */
import { abortable, sleep } from "./abortable.js";
import type { ResolvedModel } from "./catalog.js";
import { abortError, ApiError, SERVER_BUSY_MESSAGE } from "./errors.js";
import type { UnloadReason } from "./events.js";
import { createSemaphore, type Semaphore } from "./semaphore.js";

/** Load-time options; a difference from the loaded runner forces a reload (Ollama `needsReload`). */
export interface RunnerOptions {
  readonly numCtx: number;
  readonly numBatch: number;
  /** Negative means "don't care" and never forces a reload. */
  readonly numGpu: number;
  readonly mainGpu: number;
  readonly useMmap: boolean | undefined;
  readonly numThread: number;
}

/** Scheduler limits and timings. */
export interface SchedulerConfig {
  readonly loadMs: number;
  readonly numParallel: number;
  readonly maxLoadedModels: number;
  /** GPU memory shared by the loaded runners, bytes; 0 = unlimited. */
  readonly vramBytes: number;
  readonly maxQueue: number;
  /** Keep-alive for fresh loads when the request does not set one (Infinity = forever). */
  readonly keepAliveMs: number;
}

/** Callbacks for stats and events. */
export interface SchedulerHooks {
  onLoad(model: string, numCtx: number): void;
  onUnload(model: string, reason: UnloadReason): void;
  onPendingChange(pending: number): void;
  onBusy(): void;
}

/** Read-only view of a loaded (or loading) runner, for /api/ps and tests. */
export interface LoadedRunner {
  readonly model: ResolvedModel;
  /** Display name of the model that loaded it (also the stats key). */
  readonly name: string;
  readonly numCtx: number;
  readonly numParallel: number;
  /** Bytes: weights plus KV cache for numCtx × numParallel. */
  readonly size: number;
  /** Bytes of `size` held in VRAM: all of it, or less when the model did not fit (partial offload). */
  readonly sizeVram: number;
  /** Epoch ms when it will be unloaded if it stays idle. */
  readonly expiresAt: number;
  /** Requests attached (waiting for a slot or generating). */
  readonly refCount: number;
  /** Generations currently holding a slot. */
  readonly busySlots: number;
  readonly loading: boolean;
}

/** What a handler holds while using a runner. */
export interface RunnerLease {
  readonly runner: LoadedRunner;
  /** Waits for a parallel slot; resolves to its release function. */
  acquireSlot(signal: AbortSignal): Promise<() => void>;
  /** Detaches from the runner (idempotent); the last detach starts the keep-alive timer. */
  release(): void;
}

/** A request for a runner. */
export interface ScheduleRequest {
  readonly model: ResolvedModel;
  /** Display name under which the model is installed. */
  readonly name: string;
  readonly options: RunnerOptions;
  /** The request's keep_alive in ms, undefined when absent. */
  readonly keepAliveMs: number | undefined;
  readonly signal: AbortSignal;
}

/** The scheduler. */
export interface Scheduler {
  /** Attaches to (loading if needed) a runner; throws ApiError 503 when the pending queue is full. */
  acquire(request: ScheduleRequest): Promise<RunnerLease>;
  /** Unload request (`keep_alive: 0` with an empty prompt): unload now if idle, else when idle. */
  expire(model: ResolvedModel): void;
  /** Runners currently loaded or loading. */
  loaded(): LoadedRunner[];
  /** Stops timers, rejects pending requests and forgets all runners. */
  close(): void;
}

/** Max Go duration (MaxInt64 ns) in ms: what Ollama uses for "forever". */
const FOREVER_MS = 9_223_372_036_854;
/** setTimeout's limit; longer keep-alives are treated as "no timer". */
const MAX_TIMER_MS = 2_147_483_647;

interface Runner {
  readonly key: string;
  readonly model: ResolvedModel;
  readonly name: string;
  readonly options: RunnerOptions;
  readonly numParallel: number;
  /** Weights plus KV cache, bytes. */
  readonly size: number;
  /** Bytes of `size` in VRAM. */
  readonly sizeVram: number;
  readonly slots: Semaphore;
  readonly ready: Promise<void>;
  markReady: () => void;
  refCount: number;
  keepAliveMs: number;
  expiresAt: number;
  timer: NodeJS.Timeout | undefined;
  loading: boolean;
  retiring: UnloadReason | undefined;
  gone: boolean;
  goneWaiters: Array<() => void>;
}

interface PendingEntry {
  readonly request: ScheduleRequest;
  readonly resolve: (runner: Runner) => void;
  readonly reject: (error: Error) => void;
}

/** Creates a scheduler. */
export function createScheduler(config: SchedulerConfig, hooks: SchedulerHooks): Scheduler {
  const loaded = new Map<string, Runner>();
  const pending: PendingEntry[] = [];
  const closeController = new AbortController();
  let processing = false;
  let closed = false;

  const view = (r: Runner): LoadedRunner => ({
    model: r.model,
    name: r.name,
    numCtx: r.options.numCtx,
    numParallel: r.numParallel,
    size: r.size,
    sizeVram: r.sizeVram,
    expiresAt: r.expiresAt,
    refCount: r.refCount,
    busySlots: r.slots.held,
    loading: r.loading,
  });

  const clearTimer = (r: Runner): void => {
    if (r.timer) clearTimeout(r.timer);
    r.timer = undefined;
  };

  const unload = (r: Runner, reason: UnloadReason): void => {
    if (r.gone) return;
    r.gone = true;
    clearTimer(r);
    if (loaded.get(r.key) === r) loaded.delete(r.key);
    hooks.onUnload(r.name, reason);
    for (const wake of r.goneWaiters.splice(0)) wake();
  };

  const attach = (r: Runner, keepAliveMs: number | undefined): void => {
    r.refCount++;
    clearTimer(r);
    if (keepAliveMs !== undefined) r.keepAliveMs = keepAliveMs;
    r.expiresAt = expiry(r.keepAliveMs);
  };

  const detach = (r: Runner): void => {
    r.refCount = Math.max(0, r.refCount - 1);
    if (r.refCount === 0) onIdle(r);
  };

  /** The runner's last request ended: unload now, or start the keep-alive timer. */
  const onIdle = (r: Runner): void => {
    if (r.gone || r.loading) return;
    if (r.retiring) return unload(r, r.retiring);
    if (r.keepAliveMs <= 0) return unload(r, "expired");
    r.expiresAt = expiry(r.keepAliveMs);
    if (Number.isFinite(r.keepAliveMs) && r.keepAliveMs <= MAX_TIMER_MS && !closed) {
      r.timer = setTimeout(() => unload(r, "expired"), r.keepAliveMs);
      r.timer.unref();
    }
  };

  /** Marks a runner for unloading and resolves once it is gone (after in-flight work ends). */
  const retire = (r: Runner, reason: UnloadReason): Promise<void> => {
    if (r.gone) return Promise.resolve();
    r.retiring = reason;
    const gone = new Promise<void>((resolve) => r.goneWaiters.push(resolve));
    if (r.refCount === 0 && !r.loading) unload(r, reason);
    return gone;
  };

  const pickVictim = (): Runner | undefined => {
    const candidates = [...loaded.values()].filter((r) => !r.gone);
    candidates.sort((a, b) => {
      const idle = Number(b.refCount === 0) - Number(a.refCount === 0);
      return idle !== 0 ? idle : a.expiresAt - b.expiresAt;
    });
    return candidates[0];
  };

  /** VRAM held by the runners loaded (or loading) now. */
  const vramInUse = (): number => {
    let used = 0;
    for (const r of loaded.values()) if (!r.gone) used += r.sizeVram;
    return used;
  };

  /** True when a runner of `size` bytes may load now: under the count limit and, with a budget, in the free VRAM. */
  const fits = (size: number): boolean =>
    loaded.size < Math.max(1, config.maxLoadedModels) &&
    (config.vramBytes <= 0 || vramInUse() + size <= config.vramBytes);

  const startLoad = (request: ScheduleRequest, numParallel: number, size: number): Runner => {
    let markReady = (): void => {};
    const ready = new Promise<void>((resolve) => {
      markReady = resolve;
    });
    const free = config.vramBytes <= 0 ? size : Math.max(0, config.vramBytes - vramInUse());
    const runner: Runner = {
      key: request.model.digest,
      model: request.model,
      name: request.name,
      options: request.options,
      numParallel,
      size,
      sizeVram: Math.min(size, free),
      slots: createSemaphore(numParallel),
      ready,
      markReady,
      refCount: 0,
      keepAliveMs: request.keepAliveMs ?? config.keepAliveMs,
      expiresAt: 0,
      timer: undefined,
      loading: true,
      retiring: undefined,
      gone: false,
      goneWaiters: [],
    };
    loaded.set(runner.key, runner);
    attach(runner, undefined);
    hooks.onLoad(runner.name, runner.options.numCtx);
    return runner;
  };

  const processEntry = async (entry: PendingEntry): Promise<void> => {
    const { request } = entry;
    if (request.signal.aborted) return entry.reject(abortError());
    const key = request.model.digest;
    const existing = loaded.get(key);
    if (existing && !existing.retiring && !needsReload(existing.options, request.options)) {
      attach(existing, request.keepAliveMs);
      return entry.resolve(existing);
    }
    if (existing) await retire(existing, existing.retiring ?? "reload");
    const numParallel = isEmbeddingOnly(request.model) ? 1 : Math.max(1, config.numParallel);
    const size = runnerSize(request.model, request.options, numParallel);
    // Evict until the new runner fits next to the rest (count and memory), or nothing is left:
    // a model larger than the whole budget then loads alone, partly offloaded.
    while (loaded.size > 0 && !fits(size)) {
      const victim = pickVictim();
      if (!victim) break;
      await retire(victim, "evicted");
    }
    if (closed) return entry.reject(abortError());
    if (request.signal.aborted) return entry.reject(abortError());
    const runner = startLoad(request, numParallel, size);
    try {
      await sleep(config.loadMs + request.model.extraLoadMs, closeController.signal);
    } catch (error) {
      unload(runner, "shutdown");
      return entry.reject(error instanceof Error ? error : abortError());
    }
    runner.loading = false;
    runner.expiresAt = expiry(runner.keepAliveMs);
    runner.markReady();
    if (runner.refCount === 0) onIdle(runner);
    entry.resolve(runner);
  };

  const processLoop = async (): Promise<void> => {
    processing = true;
    try {
      for (let entry = pending.shift(); entry; entry = pending.shift()) {
        hooks.onPendingChange(pending.length);
        const current = entry;
        await processEntry(current).catch((error: unknown) => {
          current.reject(error instanceof Error ? error : new Error(String(error)));
        });
      }
    } finally {
      processing = false;
    }
  };

  const makeLease = (r: Runner): RunnerLease => {
    let released = false;
    return {
      runner: view(r),
      acquireSlot: (signal) => r.slots.acquire(signal),
      release: () => {
        if (released) return;
        released = true;
        detach(r);
      },
    };
  };

  return {
    async acquire(request) {
      if (closed || request.signal.aborted) throw abortError();
      const existing = loaded.get(request.model.digest);
      let runner: Runner;
      if (existing && !existing.retiring && !needsReload(existing.options, request.options)) {
        attach(existing, request.keepAliveMs);
        runner = existing;
      } else {
        if (pending.length >= Math.max(0, config.maxQueue)) {
          hooks.onBusy();
          throw new ApiError(503, SERVER_BUSY_MESSAGE);
        }
        runner = await new Promise<Runner>((resolve, reject) => {
          pending.push({ request, resolve, reject });
          hooks.onPendingChange(pending.length);
          if (!processing) void processLoop();
        });
      }
      try {
        await abortable(runner.ready, request.signal);
      } catch (error) {
        detach(runner);
        throw error;
      }
      return makeLease(runner);
    },
    expire(model) {
      const r = loaded.get(model.digest);
      if (!r) return;
      r.keepAliveMs = 0;
      r.expiresAt = Date.now();
      if (r.refCount === 0 && !r.loading) unload(r, "requested");
    },
    loaded() {
      return [...loaded.values()].map(view);
    },
    close() {
      closed = true;
      closeController.abort();
      for (const entry of pending.splice(0)) entry.reject(abortError());
      hooks.onPendingChange(0);
      for (const r of loaded.values()) {
        clearTimer(r);
        r.gone = true;
        for (const wake of r.goneWaiters.splice(0)) wake();
      }
      loaded.clear();
    },
  };
}

/** Ollama's `needsReload` for the options the simulator models. */
export function needsReload(current: RunnerOptions, wanted: RunnerOptions): boolean {
  if (current.numCtx !== wanted.numCtx) return true;
  if (current.numBatch !== wanted.numBatch) return true;
  if (current.numGpu >= 0 && wanted.numGpu >= 0 && current.numGpu !== wanted.numGpu) return true;
  if (current.mainGpu !== wanted.mainGpu) return true;
  if (current.useMmap !== undefined && wanted.useMmap !== undefined && current.useMmap !== wanted.useMmap) return true;
  return current.numThread !== wanted.numThread;
}

/** Bytes a runner takes: the weights plus a KV cache of num_ctx tokens for each parallel slot. */
export function runnerSize(model: ResolvedModel, options: RunnerOptions, numParallel: number): number {
  return model.size + options.numCtx * numParallel * model.kvBytesPerToken;
}

function isEmbeddingOnly(model: ResolvedModel): boolean {
  return model.capabilities.includes("embedding") && !model.capabilities.includes("completion");
}

function expiry(keepAliveMs: number): number {
  return Date.now() + Math.min(Number.isFinite(keepAliveMs) ? keepAliveMs : FOREVER_MS, FOREVER_MS);
}
