import type { MessageInitShape } from "@bufbuild/protobuf";
import type { JsonObject } from "@bufbuild/protobuf";
import type { ChatResponseSchema, GenerateResponseSchema } from "../gen/ollama/gateway/v1/inference_pb.js";
import { DoneReason, Role } from "../gen/ollama/gateway/v1/types_pb.js";
import type { ToolCallSchema, UsageSchema } from "../gen/ollama/gateway/v1/types_pb.js";

/** One parsed NDJSON object from Ollama. */
export type OllamaChunk = Record<string, unknown>;

/** What the gateway adds to the usage Ollama reports. */
export interface UsageContext {
  /** The node that served the request. */
  node: string;
  /** Time spent in the gateway's admission queue, in ms. */
  queueMs: number;
}

const DONE_REASONS: Record<string, DoneReason> = {
  stop: DoneReason.STOP,
  length: DoneReason.LENGTH,
  load: DoneReason.LOAD,
  unload: DoneReason.UNLOAD,
};

/** Maps one /api/generate chunk to a GenerateResponse. */
export function generateChunk(chunk: OllamaChunk, ctx: UsageContext): MessageInitShape<typeof GenerateResponseSchema> {
  const text = str(chunk["response"]);
  const thinking = str(chunk["thinking"]);
  if (chunk["done"] !== true) return { text, thinking };
  return { text, thinking, done: true, doneReason: doneReason(chunk), usage: usage(chunk, ctx) };
}

/** Maps one /api/chat chunk to a ChatResponse. */
export function chatChunk(chunk: OllamaChunk, ctx: UsageContext): MessageInitShape<typeof ChatResponseSchema> {
  const m = chunk["message"];
  const message = isObject(m)
    ? {
        role: Role.ASSISTANT,
        content: str(m["content"]),
        thinking: str(m["thinking"]),
        toolCalls: Array.isArray(m["tool_calls"]) ? m["tool_calls"].map(toolCall) : [],
      }
    : { role: Role.ASSISTANT };
  if (chunk["done"] !== true) return { message };
  return { message, done: true, doneReason: doneReason(chunk), usage: usage(chunk, ctx) };
}

/** Usage from Ollama's final-chunk metrics (nanoseconds, omitted when zero). */
export function usage(chunk: OllamaChunk, ctx: UsageContext): MessageInitShape<typeof UsageSchema> {
  return {
    promptTokens: int(chunk["prompt_eval_count"]),
    completionTokens: int(chunk["eval_count"]),
    totalDuration: nanosToDuration(chunk["total_duration"]),
    loadDuration: nanosToDuration(chunk["load_duration"]),
    promptEvalDuration: nanosToDuration(chunk["prompt_eval_duration"]),
    evalDuration: nanosToDuration(chunk["eval_duration"]),
    queueDuration: msToDuration(ctx.queueMs),
    node: ctx.node,
    model: str(chunk["model"]),
  };
}

function toolCall(raw: unknown, position: number): MessageInitShape<typeof ToolCallSchema> {
  if (!isObject(raw)) return { index: position };
  const fn = isObject(raw["function"]) ? raw["function"] : {};
  const args = fn["arguments"];
  return {
    id: str(raw["id"]),
    name: str(fn["name"]),
    // Some models emit arguments as a JSON string; keep them as an object.
    arguments: isObject(args) ? (args as JsonObject) : typeof args === "string" ? parseArgs(args) : {},
    index: typeof fn["index"] === "number" ? fn["index"] : position,
  };
}

function parseArgs(text: string): JsonObject {
  try {
    const v: unknown = JSON.parse(text);
    return isObject(v) ? (v as JsonObject) : { value: text };
  } catch {
    return { value: text };
  }
}

function doneReason(chunk: OllamaChunk): DoneReason {
  const r = chunk["done_reason"];
  return typeof r === "string" ? (DONE_REASONS[r] ?? DoneReason.UNSPECIFIED) : DoneReason.UNSPECIFIED;
}

function nanosToDuration(v: unknown): { seconds: bigint; nanos: number } | undefined {
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) return undefined;
  const ns = Math.round(v);
  return { seconds: BigInt(Math.floor(ns / 1e9)), nanos: ns % 1e9 };
}

function msToDuration(ms: number): { seconds: bigint; nanos: number } | undefined {
  return ms > 0 ? nanosToDuration(ms * 1e6) : undefined;
}

function str(v: unknown): string {
  return typeof v === "string" ? v : "";
}

function int(v: unknown): number {
  return typeof v === "number" && Number.isFinite(v) ? Math.max(0, Math.min(2 ** 31 - 1, Math.trunc(v))) : 0;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
