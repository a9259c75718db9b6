import type { Duration } from "@bufbuild/protobuf/wkt";
import type { ChatRequest, EmbedRequest, GenerateRequest } from "../gen/ollama/gateway/v1/inference_pb.js";
import { Role, ThinkMode } from "../gen/ollama/gateway/v1/types_pb.js";
import type { Options } from "../gen/ollama/gateway/v1/types_pb.js";
import { embedAnswerTooLarge } from "../errors/domain-errors.js";
import { invalidArgument } from "../errors/gateway-error.js";
import type { FleetMetadata } from "../routing/fleet-metadata.js";
import type { FieldViolation } from "../errors/gateway-error.js";
import { OPTION_NAMES } from "./ollama-request.js";

/** Bounds on request contents beyond the per-message byte limit. */
export const LIMITS = {
  /** Longest model name. */
  modelNameLength: 256,
  /** Most chat messages in one request. */
  messages: 10_000,
  /** Most images in one message or prompt. */
  images: 64,
  /** Most tools offered in one chat. */
  tools: 256,
  /** Most inputs in one Embed call. */
  embedInputs: 4096,
  /** Most entries in `options.extra`. */
  extraOptions: 64,
} as const;

// Ollama names: [host/][namespace/]model[:tag], letters, digits, . _ - and
// optionally @sha256:<hex>. Whitespace and control characters never appear.
const MODEL_NAME = /^[A-Za-z0-9][A-Za-z0-9._\-/:@+]*$/;
const TOOL_NAME = /^[A-Za-z0-9_.-]{1,128}$/;
const OPTION_KEY = /^[a-z][a-z0-9_]{0,63}$/;

/** Throws INVALID_ARGUMENT (with every violation) unless the request can be sent. */
export function validateGenerate(req: GenerateRequest): void {
  const v: FieldViolation[] = [];
  checkModel(req.model, v);
  if (req.raw && req.system !== "") v.push({ field: "system", description: "cannot be combined with raw" });
  if (req.images.length > LIMITS.images) v.push({ field: "images", description: `at most ${LIMITS.images} images` });
  checkThink(req.think, v);
  checkDuration(req.keepAlive, "keep_alive", v);
  checkOptions(req.options, v);
  if (v.length > 0) throw invalidArgument(v);
}

/** Throws INVALID_ARGUMENT (with every violation) unless the request can be sent. */
export function validateChat(req: ChatRequest): void {
  const v: FieldViolation[] = [];
  checkModel(req.model, v);
  if (req.messages.length > LIMITS.messages) {
    v.push({ field: "messages", description: `at most ${LIMITS.messages} messages` });
  }
  req.messages.forEach((m, i) => {
    if (m.role === Role.UNSPECIFIED || Role[m.role] === undefined) {
      v.push({ field: `messages[${i}].role`, description: "must be SYSTEM, USER, ASSISTANT or TOOL" });
    }
    if (m.images.length > LIMITS.images) {
      v.push({ field: `messages[${i}].images`, description: `at most ${LIMITS.images} images` });
    }
    m.toolCalls.forEach((c, j) => {
      if (!TOOL_NAME.test(c.name)) {
        v.push({
          field: `messages[${i}].tool_calls[${j}].name`,
          description: "must be 1-128 letters, digits, _ . or -",
        });
      }
    });
  });
  if (req.tools.length > LIMITS.tools) v.push({ field: "tools", description: `at most ${LIMITS.tools} tools` });
  req.tools.forEach((t, i) => {
    if (!TOOL_NAME.test(t.name)) {
      v.push({ field: `tools[${i}].name`, description: "must be 1-128 letters, digits, _ . or -" });
    }
  });
  checkThink(req.think, v);
  checkDuration(req.keepAlive, "keep_alive", v);
  checkOptions(req.options, v);
  if (v.length > 0) throw invalidArgument(v);
}

/** Throws INVALID_ARGUMENT (with every violation) unless the request can be sent. */
export function validateEmbed(req: EmbedRequest): void {
  const v: FieldViolation[] = [];
  checkModel(req.model, v);
  if (req.inputs.length > LIMITS.embedInputs) {
    v.push({ field: "inputs", description: `at most ${LIMITS.embedInputs} inputs` });
  }
  if (req.dimensions < 0) v.push({ field: "dimensions", description: "must not be negative" });
  checkDuration(req.keepAlive, "keep_alive", v);
  checkOptions(req.options, v);
  if (v.length > 0) throw invalidArgument(v);
}

/** Checks a model name as every RPC that takes one needs it. */
export function checkModel(model: string, v: FieldViolation[], field = "model"): void {
  if (model === "") v.push({ field, description: "is required" });
  else if (model.length > LIMITS.modelNameLength) {
    v.push({ field, description: `must be at most ${LIMITS.modelNameLength} characters` });
  } else if (!MODEL_NAME.test(model)) {
    v.push({ field, description: "is not a valid model name (letters, digits and . _ - / : only)" });
  }
}

function checkThink(think: ThinkMode, v: FieldViolation[]): void {
  if (ThinkMode[think] === undefined) v.push({ field: "think", description: "is not a known ThinkMode" });
}

function checkDuration(d: Duration | undefined, field: string, v: FieldViolation[]): void {
  if (d === undefined) return;
  const s = d.seconds;
  if (d.nanos < -999_999_999 || d.nanos > 999_999_999 || (s > 0n && d.nanos < 0) || (s < 0n && d.nanos > 0)) {
    v.push({ field, description: "is not a valid duration" });
  } else if (s > 315_576_000_000n || s < -315_576_000_000n) {
    v.push({ field, description: "is out of range" });
  }
}

function checkOptions(o: Options | undefined, v: FieldViolation[]): void {
  if (o === undefined) return;
  const keys = Object.keys(o.extra);
  if (keys.length > LIMITS.extraOptions) {
    v.push({ field: "options.extra", description: `at most ${LIMITS.extraOptions} entries` });
  }
  for (const key of keys) {
    if (!OPTION_KEY.test(key)) {
      v.push({
        field: `options.extra[${key.slice(0, 64)}]`,
        description: "keys are Ollama option names (a-z, 0-9, _)",
      });
    } else if (OPTION_NAMES.has(key)) {
      v.push({ field: `options.extra[${key}]`, description: `use the typed field options.${key} instead` });
    }
  }
  if (o.numCtx !== undefined && o.numCtx < 1) v.push({ field: "options.num_ctx", description: "must be positive" });
  if (o.stop.length > 16) v.push({ field: "options.stop", description: "at most 16 stop sequences" });
}

/** How a call's answer is encoded on the wire: binary protobuf, or protobuf's JSON mapping. */
export type AnswerEncoding = "binary" | "json";

/** The answer's encoding from the request's content type: JSON for Connect JSON, gRPC-Web+json and gRPC+json. */
export function answerEncoding(contentType: string | null): AnswerEncoding {
  return contentType?.includes("json") ? "json" : "binary";
}

/**
 * Bytes one embedding value takes in the answer: a float32 in binary; in JSON, about three
 * times that: a normalised float32 prints as 9 to 14 characters and a comma (`-0.012345678,`),
 * 12.5 bytes on average for Ollama's vectors; 12 are counted, so an answer estimated too large
 * is too large in practice, while one just under the estimate may still exceed the limit when
 * it is sent (RESOURCE_EXHAUSTED then, as before).
 */
const VALUE_BYTES: Record<AnswerEncoding, number> = { binary: 4, json: 12 };

/** No embedding model has more dimensions than this: an Embed whose answer fits at this size needs no lookup. */
const MAX_PLAUSIBLE_DIMENSIONS = 16_384;

/**
 * Estimated size of an EmbedResponse with `inputs` vectors of `dimensions` values: the vectors
 * only (the rest of the answer is a few dozen bytes), each with its field tag and length in binary.
 */
export function embedAnswerBytes(inputs: number, dimensions: number, encoding: AnswerEncoding): number {
  const values = dimensions * VALUE_BYTES[encoding];
  const perVector =
    encoding === "binary"
      ? values + 2 + varintBytes(values) + varintBytes(values + 1 + varintBytes(values))
      : values + '{"values":[]},'.length;
  return inputs * perVector;
}

/** How many inputs of `dimensions` fit in an answer of at most `maxBytes`. */
export function embedInputsThatFit(dimensions: number, maxBytes: number, encoding: AnswerEncoding): number {
  return Math.floor(maxBytes / embedAnswerBytes(1, dimensions, encoding));
}

function varintBytes(n: number): number {
  let bytes = 1;
  for (let v = n; v >= 128; v = Math.floor(v / 128)) bytes++;
  return bytes;
}

/**
 * The embedding length of a model from its /api/show `model_info`: `<architecture>.embedding_length`,
 * else the one `*.embedding_length` that is not a vision projector's; undefined when unknown.
 */
export function embeddingLength(modelInfo: Record<string, unknown>): number | undefined {
  const arch = modelInfo["general.architecture"];
  const own = typeof arch === "string" ? modelInfo[`${arch}.embedding_length`] : undefined;
  if (typeof own === "number" && Number.isInteger(own) && own > 0) return own;
  const found = Object.entries(modelInfo).filter(
    ([k, v]) => k.endsWith(".embedding_length") && !k.startsWith("clip.") && typeof v === "number" && v > 0,
  );
  return found.length === 1 ? (found[0]![1] as number) : undefined;
}

/**
 * Refuses, before any upstream work, an Embed whose answer cannot fit in one message of
 * `maxBytes` (INVALID_ARGUMENT, reason ANSWER_TOO_LARGE, with how many inputs fit). The
 * dimensions are the request's `dimensions` when set, else the model's embedding length from
 * its metadata (cached /api/tags and /api/show); when that is unknown (metadata unavailable, no
 * embedding length) the call goes ahead and the message limit still applies to the answer.
 * Requests small enough to fit at any plausible size need no lookup.
 */
export async function checkEmbedAnswerFits(
  req: EmbedRequest,
  encoding: AnswerEncoding,
  maxBytes: number,
  metadata: FleetMetadata,
  signal: AbortSignal,
): Promise<void> {
  if (embedAnswerBytes(req.inputs.length, MAX_PLAUSIBLE_DIMENSIONS, encoding) <= maxBytes) return;
  let dimensions: number | undefined;
  try {
    const where = await metadata.locate(req.model, signal);
    const first = where.located[0];
    if (first !== undefined) {
      const show = await metadata.show(first.node, first.tag.name, first.tag.digest, signal);
      dimensions = embeddingLength(show.modelInfo);
    }
  } catch (e) {
    if (signal.aborted) throw e;
    return; // metadata unavailable: the answer's size is checked when it is sent
  }
  if (dimensions === undefined) return;
  if (req.dimensions > 0) dimensions = Math.min(dimensions, req.dimensions);
  const answerBytes = embedAnswerBytes(req.inputs.length, dimensions, encoding);
  if (answerBytes <= maxBytes) return;
  throw embedAnswerTooLarge({
    model: req.model,
    inputs: req.inputs.length,
    fit: embedInputsThatFit(dimensions, maxBytes, encoding),
    dimensions,
    answerBytes,
    maxBytes,
  });
}
