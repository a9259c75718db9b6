/**
 * Model management and metadata routes: GET /, /api/version, /api/tags, /api/show, /api/ps,
 * DELETE /api/delete and POST /api/copy, with Ollama's shapes and error strings.
 */
import { sortCapabilities, type ResolvedModel } from "./catalog.js";
import { ApiError } from "./errors.js";
import { decodeBody, STRUCTS } from "./go-json.js";
import { displayName, parseModelName } from "./model-name.js";
import { stringField, type Handler } from "./sim-context.js";
import { formatLocal, msToNs } from "./timestamps.js";

/** Handles GET|HEAD / (the liveness probe everyone uses). */
export const handleRoot: Handler = async (ex) => {
  ex.sendRaw(200, "text/plain; charset=utf-8", "Ollama is running");
};

/** Handles GET|HEAD /api/version. */
export const handleVersion: Handler = async (ex, ctx) => {
  ex.sendJson(200, { version: ctx.config.version });
};

/** `details` object shared by tags, show and ps. */
export function modelDetails(spec: ResolvedModel): Record<string, unknown> {
  return {
    parent_model: "",
    format: spec.format,
    family: spec.family,
    families: spec.families,
    parameter_size: spec.parameterSize,
    quantization_level: spec.quantizationLevel,
  };
}

/** Handles GET|HEAD /api/tags: installed models, newest first. */
export const handleTags: Handler = async (ex, ctx) => {
  const models = ctx.store.list().map((m) => ({
    name: m.display,
    model: m.display,
    modified_at: formatLocal(msToNs(m.modifiedAt)),
    size: m.spec.size,
    digest: m.spec.digest,
    details: modelDetails(m.spec),
    capabilities: sortCapabilities(m.spec.capabilities),
  }));
  ex.sendJson(200, { models });
};

/** Handles POST /api/show. */
export const handleShow: Handler = async (ex, ctx) => {
  const body = decodeBody(ex.body, STRUCTS.show);
  const requested = stringField(body, "model") || stringField(body, "name");
  if (requested === "") throw new ApiError(400, "model is required");
  const name = parseModelName(requested);
  if (!name) throw new ApiError(400, "invalid model name");
  const installed = ctx.store.find(name);
  if (!installed) throw new ApiError(404, `model '${displayName(name)}' not found`);
  const spec = installed.spec;
  const verbose = body.verbose === true;
  const system = stringField(body, "system") || spec.system;
  const response: Record<string, unknown> = {};
  if (spec.license !== "") response.license = spec.license;
  response.modelfile = modelfile(installed.display, spec, system);
  const parameters = parameterLines(spec.parameters);
  if (parameters !== "") response.parameters = parameters;
  if (spec.template !== "") response.template = spec.template;
  if (system !== "") response.system = system;
  response.details = modelDetails(spec);
  response.model_info = modelInfo(spec, verbose);
  if (spec.capabilities.includes("vision")) response.projector_info = projectorInfo();
  response.tensors = tensors(spec);
  response.capabilities = sortCapabilities(spec.capabilities);
  response.modified_at = formatLocal(msToNs(installed.modifiedAt));
  ex.sendJson(200, response);
};

/** Handles GET /api/ps: loaded models, longest remaining keep-alive first. */
export const handlePs: Handler = async (ex, ctx) => {
  const models = ctx.scheduler
    .loaded()
    .sort((a, b) => b.expiresAt - a.expiresAt)
    .map((r) => ({
      name: r.name,
      model: r.name,
      size: r.size,
      digest: r.model.digest,
      details: modelDetails(r.model),
      expires_at: formatLocal(msToNs(r.expiresAt)),
      size_vram: r.sizeVram,
      context_length: r.numCtx,
    }));
  ex.sendJson(200, { models });
};

/** Handles DELETE /api/delete (JSON body; 200 with an empty body). */
export const handleDelete: Handler = async (ex, ctx) => {
  const body = decodeBody(ex.body, STRUCTS.delete);
  const requested = stringField(body, "model") || stringField(body, "name");
  if (requested === "") throw new ApiError(400, "model is required");
  const name = parseModelName(requested);
  if (!name) throw new ApiError(400, `name ${JSON.stringify(requested)} is invalid`);
  if (!ctx.store.remove(name)) throw new ApiError(404, `model '${requested}' not found`);
  ex.sendEmpty(200);
};

/** Handles POST /api/copy (200 with an empty body). */
export const handleCopy: Handler = async (ex, ctx) => {
  const body = decodeBody(ex.body, STRUCTS.copy);
  const source = stringField(body, "source");
  const destination = stringField(body, "destination");
  const from = parseModelName(source);
  if (!from) throw new ApiError(400, `source ${JSON.stringify(source)} is invalid`);
  const to = parseModelName(destination);
  if (!to) throw new ApiError(400, `destination ${JSON.stringify(destination)} is invalid`);
  const installed = ctx.store.find(from);
  if (!installed) throw new ApiError(404, `model ${JSON.stringify(source)} not found`);
  const existing = ctx.store.find(to);
  ctx.store.install(existing?.name ?? to, { ...installed.spec, name: displayName(to) });
  ex.sendEmpty(200);
};

function modelfile(display: string, spec: ResolvedModel, system: string): string {
  const lines = [
    '# Modelfile generated by "ollama show"',
    "# To build a new Modelfile based on this, replace FROM with:",
    `# FROM ${display}`,
    "",
    `FROM /root/.ollama/models/blobs/sha256-${spec.digest}`,
    `TEMPLATE """${spec.template}"""`,
  ];
  if (system !== "") lines.push(`SYSTEM """${system}"""`);
  for (const [key, value] of Object.entries(spec.parameters)) {
    for (const v of Array.isArray(value) ? value : [value]) lines.push(`PARAMETER ${key} ${String(v)}`);
  }
  if (spec.license !== "") lines.push(`LICENSE """${spec.license}"""`);
  return `${lines.join("\n")}\n`;
}

/** Go's `fmt.Sprintf("%-*s %#v", 30, k, v)` lines, one per value. */
function parameterLines(parameters: Readonly<Record<string, unknown>>): string {
  const lines: string[] = [];
  for (const [key, value] of Object.entries(parameters)) {
    for (const v of Array.isArray(value) ? value : [value]) {
      lines.push(`${key.padEnd(30)} ${typeof v === "string" ? JSON.stringify(v) : String(v)}`);
    }
  }
  return lines.join("\n");
}

function modelInfo(spec: ResolvedModel, verbose: boolean): Record<string, unknown> {
  const arch = spec.architecture;
  const embeddingOnly = spec.capabilities.includes("embedding") && !spec.capabilities.includes("completion");
  const vocab = ["<unk>", "<s>", "</s>", "!", '"', "#", "$", "%", "&", "'", "(", ")"];
  const info: Record<string, unknown> = {
    "general.architecture": arch,
    "general.basename": spec.name.split(":")[0],
    "general.file_type": spec.quantizationLevel === "F16" ? 1 : 15,
    "general.parameter_count": spec.parameterCount,
    "general.quantization_version": 2,
    [`${arch}.attention.head_count`]: Math.max(1, Math.round(spec.embeddingLength / 128)),
    [`${arch}.block_count`]: embeddingOnly ? 12 : 28,
    [`${arch}.context_length`]: spec.contextLength,
    [`${arch}.embedding_length`]: spec.embeddingLength,
    [`${arch}.feed_forward_length`]: spec.embeddingLength * 4,
    "tokenizer.ggml.model": embeddingOnly ? "bert" : "gpt2",
    "tokenizer.ggml.tokens": verbose ? vocab : [],
    "tokenizer.ggml.token_type": verbose ? vocab.map(() => 1) : [],
  };
  if (embeddingOnly) info[`${arch}.pooling_type`] = 1;
  return Object.fromEntries(Object.entries(info).sort(([a], [b]) => a.localeCompare(b)));
}

function projectorInfo(): Record<string, unknown> {
  return {
    "clip.has_vision_encoder": true,
    "clip.vision.embedding_length": 1024,
    "clip.vision.image_size": 336,
    "clip.vision.patch_size": 14,
    "general.architecture": "clip",
  };
}

function tensors(spec: ResolvedModel): Array<{ name: string; type: string; shape: number[] }> {
  const type = spec.quantizationLevel.startsWith("Q")
    ? spec.quantizationLevel.replace(/_[KMS]+$/, "_K")
    : spec.quantizationLevel;
  return [
    { name: "token_embd.weight", type, shape: [spec.embeddingLength, 32000] },
    { name: "blk.0.attn_q.weight", type, shape: [spec.embeddingLength, spec.embeddingLength] },
    { name: "output_norm.weight", type: "F32", shape: [spec.embeddingLength] },
  ];
}
