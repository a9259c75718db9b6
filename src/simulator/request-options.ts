/**
 * The `options` map of generate/chat/embed requests, typed like Ollama's `api.Options.FromMap`:
 * unknown keys are ignored, wrong types fail with Ollama's text (HTTP 500), Modelfile
 * PARAMETERs act as defaults, and the load-time subset becomes the runner options.
 */
import type { ResolvedModel } from "./catalog.js";
import { ApiError } from "./errors.js";
import type { RunnerOptions } from "./scheduler.js";

/** Effective options for one request. */
export interface RequestOptions {
  /** Tokens to produce; undefined = let the model decide (num_predict absent or negative). */
  readonly numPredict: number | undefined;
  readonly stop: readonly string[];
  readonly seed: number | undefined;
  readonly runner: RunnerOptions;
}

const INT_OPTIONS = new Set([
  "num_keep",
  "seed",
  "num_predict",
  "top_k",
  "repeat_last_n",
  "num_ctx",
  "num_batch",
  "num_gpu",
  "main_gpu",
  "num_thread",
  "draft_num_predict",
]);
const FLOAT_OPTIONS = new Set([
  "temperature",
  "top_p",
  "min_p",
  "typical_p",
  "repeat_penalty",
  "presence_penalty",
  "frequency_penalty",
]);
const BOOL_OPTIONS = new Set(["use_mmap"]);

/** Merges Modelfile parameters with the request's options and validates them. */
export function resolveRequestOptions(raw: unknown, model: ResolvedModel, defaultNumCtx: number): RequestOptions {
  const merged = new Map<string, unknown>();
  for (const [key, value] of Object.entries(model.parameters)) merged.set(key, value);
  if (raw !== undefined && raw !== null) {
    for (const [key, value] of Object.entries(raw as Record<string, unknown>)) {
      if (value !== null) merged.set(key, value);
    }
  }
  const ints = new Map<string, number>();
  let stop: string[] = [];
  for (const [key, value] of merged) {
    if (INT_OPTIONS.has(key)) {
      if (typeof value !== "number") throw new ApiError(500, `option ${JSON.stringify(key)} must be of type integer`);
      ints.set(key, Math.trunc(value));
    } else if (FLOAT_OPTIONS.has(key)) {
      if (typeof value !== "number") throw new ApiError(500, `option ${JSON.stringify(key)} must be of type float32`);
    } else if (BOOL_OPTIONS.has(key)) {
      if (typeof value !== "boolean") throw new ApiError(500, `option ${JSON.stringify(key)} must be of type boolean`);
    } else if (key === "stop") {
      if (!Array.isArray(value)) throw new ApiError(500, `option "stop" must be of type array`);
      stop = value.map((item: unknown) => {
        if (typeof item !== "string") throw new ApiError(500, `option "stop" must be of an array of strings`);
        return item;
      });
    }
  }
  const requestedCtx = ints.get("num_ctx") ?? defaultNumCtx;
  let numCtx = Math.min(requestedCtx, model.contextLength);
  if (model.capabilities.includes("vision")) numCtx = Math.max(numCtx, 2048);
  numCtx = Math.max(numCtx, 4);
  const numPredict = ints.get("num_predict");
  const useMmap = merged.get("use_mmap");
  return {
    numPredict: numPredict === undefined || numPredict < 0 ? undefined : numPredict,
    stop: stop.filter((s) => s !== ""),
    seed: ints.get("seed"),
    runner: {
      numCtx,
      numBatch: ints.get("num_batch") ?? 512,
      numGpu: ints.get("num_gpu") ?? -1,
      mainGpu: ints.get("main_gpu") ?? 0,
      useMmap: typeof useMmap === "boolean" ? useMmap : undefined,
      numThread: ints.get("num_thread") ?? 0,
    },
  };
}
