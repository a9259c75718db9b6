import { toJson } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import type { JsonObject, JsonValue } from "@bufbuild/protobuf";
import type { Duration } from "@bufbuild/protobuf/wkt";
import type { ChatRequest, EmbedRequest, GenerateRequest } from "../gen/ollama/gateway/v1/inference_pb.js";
import { Role, ThinkMode } from "../gen/ollama/gateway/v1/types_pb.js";
import type { Format, Message, Options } from "../gen/ollama/gateway/v1/types_pb.js";

/** The JSON body of an Ollama request, built from a validated RPC request. */
export type OllamaBody = Record<string, JsonValue | undefined>;

// Typed Options fields and their Ollama names, in one table so the mapping
// and the "no duplicates in extra" validation agree.
const OPTION_FIELDS = [
  ["numCtx", "num_ctx"],
  ["numPredict", "num_predict"],
  ["temperature", "temperature"],
  ["topK", "top_k"],
  ["topP", "top_p"],
  ["minP", "min_p"],
  ["typicalP", "typical_p"],
  ["repeatLastN", "repeat_last_n"],
  ["repeatPenalty", "repeat_penalty"],
  ["presencePenalty", "presence_penalty"],
  ["frequencyPenalty", "frequency_penalty"],
  ["numKeep", "num_keep"],
  ["numBatch", "num_batch"],
  ["numGpu", "num_gpu"],
  ["mainGpu", "main_gpu"],
  ["numThread", "num_thread"],
  ["useMmap", "use_mmap"],
] as const satisfies ReadonlyArray<readonly [keyof Options, string]>;

/** Ollama names of the options that have typed fields (plus seed and stop). */
export const OPTION_NAMES: ReadonlySet<string> = new Set([...OPTION_FIELDS.map(([, n]) => n), "seed", "stop"]);

const ROLE_NAMES: Record<Role, string> = {
  [Role.UNSPECIFIED]: "user",
  [Role.SYSTEM]: "system",
  [Role.USER]: "user",
  [Role.ASSISTANT]: "assistant",
  [Role.TOOL]: "tool",
};

const THINK_VALUES: Record<ThinkMode, boolean | string | undefined> = {
  [ThinkMode.UNSPECIFIED]: undefined,
  [ThinkMode.OFF]: false,
  [ThinkMode.ON]: true,
  [ThinkMode.LOW]: "low",
  [ThinkMode.MEDIUM]: "medium",
  [ThinkMode.HIGH]: "high",
  [ThinkMode.MAX]: "max",
};

/** Body for POST /api/generate. */
export function generateBody(req: GenerateRequest): OllamaBody {
  const body: OllamaBody = { model: req.model, prompt: req.prompt, stream: true };
  if (req.system !== "") body["system"] = req.system;
  if (req.suffix !== "") body["suffix"] = req.suffix;
  if (req.images.length > 0) body["images"] = req.images.map(base64);
  if (req.raw) body["raw"] = true;
  addCommon(body, req.format, req.options, req.keepAlive, req.think);
  return body;
}

/** Body for POST /api/chat. */
export function chatBody(req: ChatRequest): OllamaBody {
  const body: OllamaBody = { model: req.model, messages: req.messages.map(chatMessage), stream: true };
  if (req.tools.length > 0) {
    body["tools"] = req.tools.map((t) => ({
      type: "function",
      function: {
        name: t.name,
        description: t.description,
        parameters: t.parameters ?? { type: "object", properties: {} },
      },
    }));
  }
  addCommon(body, req.format, req.options, req.keepAlive, req.think);
  return body;
}

/** Body for POST /api/embed. */
export function embedBody(req: EmbedRequest, inputs: readonly string[] = req.inputs): OllamaBody {
  const body: OllamaBody = { model: req.model, input: [...inputs] };
  if (req.truncate !== undefined) body["truncate"] = req.truncate;
  if (req.dimensions > 0) body["dimensions"] = req.dimensions;
  addCommon(body, undefined, req.options, req.keepAlive, ThinkMode.UNSPECIFIED);
  return body;
}

/** Ollama's `keep_alive` in seconds (negative = forever), from a Duration. */
export function keepAliveSeconds(d: Duration): number {
  return Number(d.seconds) + d.nanos / 1e9;
}

/** Ollama's `options` object, or undefined when nothing is set. */
export function optionsJson(o: Options | undefined): JsonObject | undefined {
  if (o === undefined) return undefined;
  const out: JsonObject = {};
  let any = false;
  for (const [field, name] of OPTION_FIELDS) {
    const value = o[field];
    if (value !== undefined) {
      out[name] = value;
      any = true;
    }
  }
  if (o.seed !== undefined) {
    out["seed"] = Number(o.seed);
    any = true;
  }
  if (o.stop.length > 0) {
    out["stop"] = [...o.stop];
    any = true;
  }
  for (const [key, value] of Object.entries(o.extra)) {
    out[key] = toJson(ValueSchema, value);
    any = true;
  }
  return any ? out : undefined;
}

function addCommon(
  body: OllamaBody,
  format: Format | undefined,
  options: Options | undefined,
  keepAlive: Duration | undefined,
  think: ThinkMode,
): void {
  if (format?.kind.case === "json" && format.kind.value) body["format"] = "json";
  else if (format?.kind.case === "jsonSchema") body["format"] = format.kind.value;
  const opts = optionsJson(options);
  if (opts !== undefined) body["options"] = opts;
  if (keepAlive !== undefined) body["keep_alive"] = keepAliveSeconds(keepAlive);
  const t = THINK_VALUES[think];
  if (t !== undefined) body["think"] = t;
}

function chatMessage(m: Message): JsonObject {
  const out: JsonObject = { role: ROLE_NAMES[m.role], content: m.content };
  if (m.thinking !== "") out["thinking"] = m.thinking;
  if (m.images.length > 0) out["images"] = m.images.map(base64);
  if (m.toolCalls.length > 0) {
    out["tool_calls"] = m.toolCalls.map((c) => {
      const call: JsonObject = { function: { index: c.index, name: c.name, arguments: c.arguments ?? {} } };
      if (c.id !== "") call["id"] = c.id;
      return call;
    });
  }
  if (m.toolName !== "") out["tool_name"] = m.toolName;
  if (m.toolCallId !== "") out["tool_call_id"] = m.toolCallId;
  return out;
}

function base64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64");
}
