import type { Duration } from "@bufbuild/protobuf/wkt";
import type { ChatRequest, EmbedRequest, GenerateRequest } from "../gen/ollama/gateway/v1/inference_pb.js";
import { Role, ThinkMode } from "../gen/ollama/gateway/v1/types_pb.js";
import type { Options } from "../gen/ollama/gateway/v1/types_pb.js";
import { invalidArgument } from "../errors/gateway-error.js";
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
