/**
 * Live counters tests read directly (`sim.stats.maxInFlight["llama3.2:latest"]`), e.g. to prove
 * a gateway never exceeds a node's slots or that a cancel really stopped generation.
 * Per-model keys are display names such as `llama3.2:latest`.
 */

/** Plain numbers and records, mutated in place so a held reference stays current. */
export interface SimulatorStats {
  /** Requests per path (`/api/chat`…); admin routes are not counted. */
  requests: Record<string, number>;
  /** Responses per HTTP status code (as a string key). */
  responses: Record<string, number>;
  /** Model loads per model. */
  loads: Record<string, number>;
  /** Model loads in total. */
  loadsTotal: number;
  /** Unloads per model. */
  unloads: Record<string, number>;
  /** Unloads in total. */
  unloadsTotal: number;
  /** Runners unloaded to make room (MAX_LOADED_MODELS, or the VRAM budget). */
  evictions: number;
  /** Runners unloaded because a request needed different runner options (num_ctx…). */
  reloads: number;
  /** Requests whose client closed the connection before the response finished. */
  disconnects: number;
  /** Tokens generated (thinking + content + tool-call chunks), counted only until a cancel. */
  tokensEmitted: number;
  /** Generations currently holding a parallel slot, per model. */
  inFlight: Record<string, number>;
  /** High-water mark of `inFlight`, per model. */
  maxInFlight: Record<string, number>;
  /** Requests currently waiting in the scheduler's pending (load) queue. */
  pendingLoads: number;
  /** High-water mark of `pendingLoads`. */
  maxPendingLoads: number;
  /** 503 answers because the pending queue was full. */
  busyRejections: number;
  /** Generate/chat/embed requests that finished normally. */
  completed: number;
  /** Faults that fired. */
  faultsTriggered: number;
}

/** Creates zeroed stats. */
export function createStats(): SimulatorStats {
  return {
    requests: {},
    responses: {},
    loads: {},
    loadsTotal: 0,
    unloads: {},
    unloadsTotal: 0,
    evictions: 0,
    reloads: 0,
    disconnects: 0,
    tokensEmitted: 0,
    inFlight: {},
    maxInFlight: {},
    pendingLoads: 0,
    maxPendingLoads: 0,
    busyRejections: 0,
    completed: 0,
    faultsTriggered: 0,
  };
}

/** Adds `by` to `record[key]`. */
export function bump(record: Record<string, number>, key: string, by = 1): void {
  record[key] = (record[key] ?? 0) + by;
}

/**
 * Zeroes counters in place but keeps gauges truthful: `inFlight` and `pendingLoads` describe
 * work still running, and high-water marks restart from those current values.
 */
export function resetStats(stats: SimulatorStats): void {
  const fresh = createStats();
  const inFlight = { ...stats.inFlight };
  const pending = stats.pendingLoads;
  for (const key of Object.keys(stats) as Array<keyof SimulatorStats>) {
    const value = fresh[key];
    if (typeof value === "number") (stats[key] as number) = value;
    else {
      const record = stats[key] as Record<string, number>;
      for (const k of Object.keys(record)) delete record[k];
    }
  }
  for (const [model, count] of Object.entries(inFlight)) {
    if (count > 0) {
      stats.inFlight[model] = count;
      stats.maxInFlight[model] = count;
    }
  }
  stats.pendingLoads = pending;
  stats.maxPendingLoads = pending;
}
