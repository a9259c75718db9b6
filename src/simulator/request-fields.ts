/**
 * Validation of request fields shared by several routes (`think`, `format`, `tools`, model
 * names), each failing with Ollama's status code and exact message.
 */
import { ApiError, PROMPT_TOO_LONG_MESSAGE } from "./errors.js";
import type { ThinkSetting, ToolSpec } from "./text-model.js";

/** Decodes `think` (bool or level string); throws 400 with Ollama's text for anything else. */
export function parseThink(value: unknown): ThinkSetting | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value === "boolean") return value;
  if (value === "high" || value === "medium" || value === "low" || value === "max") return value;
  throw new ApiError(
    400,
    `invalid think value: ${JSON.stringify(value)} (must be "high", "medium", "low", "max", true, or false)`,
  );
}

/** True when a think setting asks for thinking (`true` or a level). */
export function wantsThinking(think: ThinkSetting | undefined): boolean {
  return think !== undefined && think !== false;
}

/**
 * Validates `format` the way the runner does: absent/null/"" = unset, "json", or a JSON-schema
 * object; anything else fails with HTTP 500 before streaming.
 */
export function parseFormat(value: unknown): unknown {
  if (value === undefined || value === null || value === "") return undefined;
  if (value === "json") return "json";
  if (typeof value === "object" && !Array.isArray(value)) return value;
  throw new ApiError(
    500,
    `invalid format: ${JSON.stringify(JSON.stringify(value))}; expected "json" or a valid JSON Schema object`,
  );
}

/** Extracts `{name, parameters}` from OpenAI-style tools, ignoring malformed entries. */
export function parseTools(value: unknown): ToolSpec[] {
  if (!Array.isArray(value)) return [];
  const tools: ToolSpec[] = [];
  for (const item of value) {
    if (typeof item !== "object" || item === null) continue;
    const fn = (item as Record<string, unknown>).function;
    if (typeof fn !== "object" || fn === null) continue;
    const name = (fn as Record<string, unknown>).name;
    if (typeof name !== "string") continue;
    tools.push({ name, parameters: (fn as Record<string, unknown>).parameters });
  }
  return tools;
}

/** Validates `top_logprobs` (0–20). */
export function checkTopLogprobs(value: unknown): void {
  if (typeof value === "number" && (value < 0 || value > 20)) {
    throw new ApiError(400, "top_logprobs must be between 0 and 20");
  }
}

/**
 * With `shift: false` a prompt of `num_ctx` tokens or more cannot be evaluated: 400 before
 * streaming, after the model is loaded (the runner raises it). With shift on (the default) the
 * runner truncates instead, which the simulator does not model.
 */
export function checkPromptFits(shift: unknown, promptTokens: number, numCtx: number): void {
  if (shift === false && promptTokens >= numCtx) throw new ApiError(400, PROMPT_TOO_LONG_MESSAGE);
}
