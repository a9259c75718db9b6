import type { RedisLogger } from "./redis-logger.js";

/** Where a user of Redis stands: not known yet, usable, or not usable. */
export type HealthState = "starting" | "up" | "down";

/** A change worth one log line: usable for the first time, usable again after an outage, or lost. */
export type HealthChange = "up" | "up-again" | "down";

/**
 * The one state machine behind every "redis connected / unavailable / available again" line, so
 * each change is reported exactly once however many reconnect attempts or failed commands cause
 * it. Usable → up (reported as "up" the first time, "up-again" after a "down"). Not usable → down
 * when it was up; while still starting, only on an actual `failure` (an error, a lost connection,
 * the start-up grace running out), so a connection still being made is not reported as an outage.
 */
export function nextHealth(
  state: HealthState,
  usable: boolean,
  failure: boolean,
): { state: HealthState; change?: HealthChange } {
  if (usable) return state === "up" ? { state } : { state: "up", change: state === "down" ? "up-again" : "up" };
  if (state === "up" || (state === "starting" && failure)) return { state: "down", change: "down" };
  return { state };
}

/** One user's health, fed with observations; reports each change once. */
export interface HealthTracker {
  state(): HealthState;
  up(): boolean;
  /** Feeds one observation (see nextHealth); `reason` goes with a "down" report. */
  update(usable: boolean, failure: boolean, reason?: string): void;
  /** Reports nothing more (the user closed). */
  stop(): void;
}

/** Creates a tracker in "starting" that calls `onChange` once per change of state. */
export function createHealthTracker(
  onChange: (change: HealthChange, reason: string | undefined) => void,
): HealthTracker {
  let state: HealthState = "starting";
  let stopped = false;
  return {
    state: () => state,
    up: () => state === "up",
    update(usable, failure, reason) {
      if (stopped) return;
      const next = nextHealth(state, usable, failure);
      state = next.state;
      if (next.change !== undefined) onChange(next.change, reason);
    },
    stop() {
      stopped = true;
    },
  };
}

/** The log lines of one user's changes of state (tests and operators match these strings exactly). */
export interface HealthMessages {
  /** info, the first time the user can use Redis. */
  up: string;
  /** info, when it can again after an outage. */
  upAgain: string;
  /** warn, once per outage: what the user does without Redis. */
  down: string;
}

/** An `onChange` for createHealthTracker that logs the user's own line for each change, with the masked URL. */
export function logHealthChanges(
  log: RedisLogger,
  label: string,
  messages: HealthMessages,
  now: () => number = Date.now,
): (change: HealthChange, reason: string | undefined) => void {
  let warnedAt = Number.NEGATIVE_INFINITY;
  return (change, reason) => {
    if (change === "down") {
      // A relapse soon after a warning (Redis flapping while it restarts, one command timing
      // out under load right after the link came back) is the same incident: logged at info,
      // so an operator sees one warning per outage rather than one per flap.
      const at = now();
      if (at - warnedAt < RELAPSE_WINDOW_MS) {
        log.info({ redis: label, err: reason }, `${messages.down} (again)`);
        return;
      }
      warnedAt = at;
      log.warn({ redis: label, err: reason }, messages.down);
    } else log.info({ redis: label }, change === "up" ? messages.up : messages.upAgain);
  };
}

/** A second "down" within this long after a warning is logged at info (see logHealthChanges). */
export const RELAPSE_WINDOW_MS = 30_000;
