/**
 * Key ordering for response objects: Go serialises struct fields in declaration order, and
 * byte-level comparisons with real Ollama output are easier when the simulator does the same.
 */

/** Returns a copy of `obj` with `keys` first (in that order, skipping undefined) and the rest after. */
export function orderKeys<T extends object>(obj: T, keys: readonly string[]): T {
  const source = obj as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  for (const key of keys) if (source[key] !== undefined) out[key] = source[key];
  for (const [key, value] of Object.entries(source)) if (!(key in out) && value !== undefined) out[key] = value;
  return out as T;
}

/** Field order of Ollama's GenerateResponse. */
export const GENERATE_KEYS = [
  "model",
  "created_at",
  "response",
  "thinking",
  "done",
  "done_reason",
  "context",
  "total_duration",
  "load_duration",
  "prompt_eval_count",
  "prompt_eval_duration",
  "eval_count",
  "eval_duration",
] as const;

/** Field order of Ollama's ChatResponse. */
export const CHAT_KEYS = [
  "model",
  "created_at",
  "message",
  "done_reason",
  "done",
  "total_duration",
  "load_duration",
  "prompt_eval_count",
  "prompt_eval_duration",
  "eval_count",
  "eval_duration",
] as const;
