/**
 * Request-body decoding with Go `encoding/json` semantics and error texts, because Ollama
 * answers malformed bodies with the decoder's message (e.g. `json: cannot unmarshal string into
 * Go struct field ChatRequest.stream of type bool`) and clients/gateways surface it verbatim.
 */
import { ApiError } from "./errors.js";

/** How a field is checked. */
export type FieldKind =
  | "string"
  | "bool"
  | "int"
  | "number"
  | "object"
  | "array"
  | "strings"
  | "ints"
  | "messages"
  | "any";

/** A field's check plus the Go type named in errors. */
export interface FieldSpec {
  readonly kind: FieldKind;
  readonly goType: string;
}

/** A request struct: its Go name and fields. */
export interface StructSpec {
  readonly name: string;
  readonly fields: Readonly<Record<string, FieldSpec>>;
}

const str: FieldSpec = { kind: "string", goType: "string" };
const bool: FieldSpec = { kind: "bool", goType: "bool" };
const pbool: FieldSpec = { kind: "bool", goType: "bool" };
const int: FieldSpec = { kind: "int", goType: "int" };
const any: FieldSpec = { kind: "any", goType: "" };
const options: FieldSpec = { kind: "object", goType: "map[string]interface {}" };

/** Go request structs the simulator decodes. */
export const STRUCTS = {
  generate: {
    name: "GenerateRequest",
    fields: {
      model: str,
      prompt: str,
      suffix: str,
      system: str,
      template: str,
      context: { kind: "ints", goType: "[]int" },
      stream: pbool,
      raw: bool,
      format: any,
      keep_alive: any,
      images: { kind: "strings", goType: "[]api.ImageData" },
      options,
      think: any,
      truncate: pbool,
      shift: pbool,
      logprobs: bool,
      top_logprobs: int,
    },
  },
  chat: {
    name: "ChatRequest",
    fields: {
      model: str,
      messages: { kind: "messages", goType: "[]api.Message" },
      stream: pbool,
      format: any,
      keep_alive: any,
      tools: { kind: "array", goType: "api.Tools" },
      options,
      think: any,
      truncate: pbool,
      shift: pbool,
      logprobs: bool,
      top_logprobs: int,
    },
  },
  embed: {
    name: "EmbedRequest",
    fields: { model: str, input: any, keep_alive: any, truncate: pbool, dimensions: int, options },
  },
  embeddings: {
    name: "EmbeddingRequest",
    fields: { model: str, prompt: str, keep_alive: any, options },
  },
  show: {
    name: "ShowRequest",
    fields: { model: str, name: str, system: str, template: str, verbose: bool, options },
  },
  pull: {
    name: "PullRequest",
    fields: { model: str, name: str, insecure: bool, username: str, password: str, stream: pbool },
  },
  push: {
    name: "PushRequest",
    fields: { model: str, name: str, insecure: bool, username: str, password: str, stream: pbool },
  },
  delete: { name: "DeleteRequest", fields: { model: str, name: str } },
  copy: { name: "CopyRequest", fields: { source: str, destination: str } },
} as const satisfies Record<string, StructSpec>;

/** A decoded JSON object. */
export type JsonObject = Record<string, unknown>;

/**
 * Decodes a body like gin's `ShouldBindJSON`: empty → 400 `missing request body`; syntax error →
 * 400 with Go's text; trailing data after the first value is ignored; `null` → empty struct;
 * keys match fields case-insensitively; type mismatches → 400 `json: cannot unmarshal …`.
 */
export function decodeBody(raw: Buffer, spec: StructSpec): JsonObject {
  const text = raw.toString("utf8");
  if (text.trim() === "") throw new ApiError(400, "missing request body");
  const value = parseFirstValue(text);
  if (value === null) return {};
  if (typeof value !== "object" || Array.isArray(value)) {
    throw new ApiError(400, `json: cannot unmarshal ${jsonKind(value)} into Go value of type api.${spec.name}`);
  }
  const input = value as JsonObject;
  const out: JsonObject = {};
  const lowerFields = new Map(Object.keys(spec.fields).map((k) => [k.toLowerCase(), k]));
  for (const [key, fieldValue] of Object.entries(input)) {
    const field = key in spec.fields ? key : lowerFields.get(key.toLowerCase());
    if (field === undefined) continue;
    const fieldSpec = spec.fields[field];
    if (fieldSpec && fieldValue !== null) checkField(spec.name, field, fieldSpec, fieldValue);
    out[field] = fieldValue;
  }
  return out;
}

/** Lenient parse used only to find the `model` a request names (for fault filters and events). */
export function peekModel(raw: Buffer): string | undefined {
  try {
    const value: unknown = JSON.parse(raw.toString("utf8"));
    if (typeof value !== "object" || value === null) return undefined;
    const o = value as JsonObject;
    for (const key of ["model", "name", "source"]) {
      const v = o[key];
      if (typeof v === "string" && v !== "") return v;
    }
  } catch {
    // not JSON: no model
  }
  return undefined;
}

function checkField(struct: string, field: string, spec: FieldSpec, value: unknown): void {
  const fail = (kind: string, path = field, goType = spec.goType): never => {
    throw new ApiError(400, `json: cannot unmarshal ${kind} into Go struct field ${struct}.${path} of type ${goType}`);
  };
  switch (spec.kind) {
    case "any":
      return;
    case "string":
      if (typeof value !== "string") fail(jsonKind(value));
      return;
    case "bool":
      if (typeof value !== "boolean") fail(jsonKind(value));
      return;
    case "int":
      if (typeof value !== "number") fail(jsonKind(value));
      else if (!Number.isInteger(value)) fail(`number ${value}`);
      return;
    case "number":
      if (typeof value !== "number") fail(jsonKind(value));
      return;
    case "object":
      if (typeof value !== "object" || Array.isArray(value)) fail(jsonKind(value));
      return;
    case "array":
      if (!Array.isArray(value)) fail(jsonKind(value));
      return;
    case "strings":
      if (!Array.isArray(value)) return fail(jsonKind(value));
      for (const item of value) if (item !== null && typeof item !== "string") fail(jsonKind(item), field, "string");
      return;
    case "ints":
      if (!Array.isArray(value)) return fail(jsonKind(value));
      for (const item of value) {
        if (typeof item !== "number") fail(jsonKind(item), field, "int");
        else if (!Number.isInteger(item)) fail(`number ${item}`, field, "int");
      }
      return;
    case "messages":
      if (!Array.isArray(value)) return fail(jsonKind(value));
      for (const item of value) {
        if (item === null) continue;
        if (typeof item !== "object" || Array.isArray(item)) fail(jsonKind(item), field, "api.Message");
        const m = item as JsonObject;
        for (const key of ["role", "content", "thinking", "tool_name", "tool_call_id"]) {
          const v = m[key];
          if (v !== undefined && v !== null && typeof v !== "string") fail(jsonKind(v), `${field}.${key}`, "string");
        }
        const images = m.images;
        if (images !== undefined && images !== null && !Array.isArray(images))
          fail(jsonKind(images), `${field}.images`, "[]api.ImageData");
        const calls = m.tool_calls;
        if (calls !== undefined && calls !== null && !Array.isArray(calls))
          fail(jsonKind(calls), `${field}.tool_calls`, "[]api.ToolCall");
      }
      return;
  }
}

/** The word Go's decoder uses for a JSON value's kind. */
export function jsonKind(value: unknown): string {
  if (typeof value === "string") return "string";
  if (typeof value === "number") return "number";
  if (typeof value === "boolean") return "bool";
  if (Array.isArray(value)) return "array";
  return "object";
}

function parseFirstValue(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    const after = /after JSON at position (\d+)/.exec(message);
    if (after) {
      // Go's Decoder reads one value and ignores what follows it.
      return JSON.parse(text.slice(0, Number(after[1])));
    }
    throw new ApiError(400, goSyntaxError(text, message));
  }
}

function goSyntaxError(text: string, v8Message: string): string {
  if (/end of JSON input|Unterminated string/i.test(v8Message)) return "unexpected EOF";
  const position = /position (\d+)/.exec(v8Message);
  let ch: string | undefined;
  if (position) ch = text.charAt(Number(position[1]));
  else {
    const token = /Unexpected token '?(.)'?/.exec(v8Message);
    ch = token?.[1] ?? text.trim().charAt(0);
  }
  if (ch === undefined || ch === "") return "unexpected EOF";
  const quoted = ch === "'" ? "'\\''" : ch === '"' ? "'\"'" : `'${ch}'`;
  const context = /property name|Expected ',' or '}'/.test(v8Message)
    ? "looking for beginning of object key string"
    : "looking for beginning of value";
  return `invalid character ${quoted} ${context}`;
}
