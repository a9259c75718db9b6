/**
 * What every route handler needs: configuration, installed models, the pull registry, the
 * scheduler, stats and events. Plus small helpers shared by several routes.
 */
import type { ResolvedModel } from "./catalog.js";
import type { EventHub } from "./events.js";
import type { Exchange } from "./http-exchange.js";
import type { ModelStore } from "./model-store.js";
import type { ResolvedSimulatorOptions } from "./options.js";
import type { Scheduler } from "./scheduler.js";
import type { SimulatorStats } from "./stats.js";

/** Shared state of one simulator instance. */
export interface SimContext {
  readonly config: ResolvedSimulatorOptions;
  readonly store: ModelStore;
  /** Pullable models by lower-case fully-qualified name. */
  readonly registry: ReadonlyMap<string, ResolvedModel>;
  readonly scheduler: Scheduler;
  readonly stats: SimulatorStats;
  readonly events: EventHub;
}

/** A route handler. */
export type Handler = (ex: Exchange, ctx: SimContext) => Promise<void>;

/** Ollama's timing metrics (nanoseconds), all omitted when zero. */
export interface Metrics {
  total_duration?: number;
  load_duration?: number;
  prompt_eval_count?: number;
  prompt_eval_duration?: number;
  eval_count?: number;
  eval_duration?: number;
}

/** Builds a metrics object in Ollama's field order, dropping zero values (Go `omitempty`). */
export function metrics(values: {
  total: bigint;
  load: bigint;
  promptEvalCount: number;
  promptEval: bigint;
  evalCount: number;
  evalDuration: bigint;
}): Metrics {
  const out: Metrics = {};
  const set = (key: keyof Metrics, value: number): void => {
    if (value > 0) out[key] = value;
  };
  set("total_duration", Number(values.total));
  set("load_duration", Number(values.load));
  set("prompt_eval_count", values.promptEvalCount);
  set("prompt_eval_duration", Number(values.promptEval));
  set("eval_count", values.evalCount);
  set("eval_duration", Number(values.evalDuration));
  return out;
}

/** Nanoseconds since `start` (an `hrtime.bigint()` value). */
export function since(start: bigint): bigint {
  return process.hrtime.bigint() - start;
}

/** Reads a string field, treating absent/null as "". */
export function stringField(body: Record<string, unknown>, key: string): string {
  const value = body[key];
  return typeof value === "string" ? value : "";
}
