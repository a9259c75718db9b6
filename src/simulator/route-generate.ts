/**
 * POST /api/generate, following Ollama's GenerateHandler order of checks: decode → top_logprobs →
 * model name → installed? → unload shortcut → raw checks → thinking/capabilities → options →
 * schedule → load shortcut → format → stream.
 */
import { runCompletion } from "./completion-run.js";
import { ApiError } from "./errors.js";
import { decodeBody, STRUCTS } from "./go-json.js";
import { parseKeepAlive } from "./go-duration.js";
import { GENERATE_KEYS, orderKeys } from "./json-order.js";
import { fullName, parseModelName } from "./model-name.js";
import { checkPromptFits, checkTopLogprobs, parseFormat, parseThink, wantsThinking } from "./request-fields.js";
import { resolveRequestOptions } from "./request-options.js";
import { since, stringField, type Handler } from "./sim-context.js";
import { countWords, planCompletion, tokenIds } from "./text-model.js";
import { formatUtc } from "./timestamps.js";

/** A generate response object (chunk or final). */
type GenerateChunk = Record<string, unknown> & { response: string; thinking?: string };

/** Handles POST /api/generate. */
export const handleGenerate: Handler = async (ex, ctx) => {
  const body = decodeBody(ex.body, STRUCTS.generate);
  const keepAliveMs = parseKeepAlive(body.keep_alive);
  let think = parseThink(body.think);
  checkTopLogprobs(body.top_logprobs);

  const requested = stringField(body, "model");
  const name = parseModelName(requested);
  if (!name) throw requested === "" ? new ApiError(404, "model '' not found") : new ApiError(400, "invalid model name");
  const installed = ctx.store.find(name);
  if (!installed) throw new ApiError(404, `model '${requested}' not found`);
  const spec = installed.spec;

  const prompt = stringField(body, "prompt");
  if (prompt === "" && keepAliveMs === 0) {
    ctx.scheduler.expire(spec);
    ex.sendJson(200, { model: requested, created_at: formatUtc(), response: "", done: true, done_reason: "unload" });
    return;
  }

  const system = stringField(body, "system");
  const suffix = stringField(body, "suffix");
  const template = stringField(body, "template");
  const context = Array.isArray(body.context) ? (body.context as number[]) : [];
  const raw = body.raw === true;
  if (raw && (template !== "" || system !== "" || context.length > 0)) {
    throw new ApiError(400, "raw mode does not support template, system, or context");
  }

  const caps = spec.capabilities;
  if (caps.includes("thinking")) think ??= true;
  else if (wantsThinking(think)) throw new ApiError(400, `${JSON.stringify(requested)} does not support thinking`);
  if (!caps.includes("completion")) throw new ApiError(400, `${JSON.stringify(requested)} does not support generate`);
  if (suffix !== "" && !caps.includes("insert"))
    throw new ApiError(400, `${fullName(installed.name)} does not support insert`);

  const options = resolveRequestOptions(body.options, spec, ctx.config.defaultNumCtx);
  const lease = await ctx.scheduler.acquire({
    model: spec,
    name: installed.display,
    options: options.runner,
    keepAliveMs,
    signal: ex.signal,
  });
  const loadNs = since(ex.startedAt);

  if (prompt === "") {
    lease.release();
    ex.sendJson(200, { model: requested, created_at: formatUtc(), response: "", done: true, done_reason: "load" });
    return;
  }

  let format: unknown;
  try {
    format = parseFormat(body.format);
  } catch (error) {
    lease.release();
    throw error;
  }

  const images = Array.isArray(body.images) ? body.images.length : 0;
  const plan = planCompletion({
    model: spec.digest,
    prompt: JSON.stringify([system, template, prompt, suffix, context, images]),
    lastMessage: prompt,
    lastRole: "user",
    tools: [],
    think: think ?? false,
    numPredict: options.numPredict,
    stop: options.stop,
    seed: options.seed,
    format,
  });
  const promptTokens = Math.max(
    1,
    countWords(system) +
      countWords(prompt) +
      countWords(suffix) +
      context.length +
      (caps.includes("vision") ? images * 576 : 0),
  );
  try {
    checkPromptFits(body.shift, promptTokens, options.runner.numCtx);
  } catch (error) {
    lease.release();
    throw error;
  }
  const finalContext = raw
    ? undefined
    : [...context, ...tokenIds(`${system} ${prompt}`), ...tokenIds(plan.content.join(""))];

  await runCompletion<GenerateChunk>({
    ex,
    ctx,
    lease,
    plan,
    loadNs,
    promptTokens,
    stream: body.stream !== false,
    chunk: (part) => ({
      model: requested,
      created_at: formatUtc(),
      response: part.content,
      ...(part.thinking !== "" ? { thinking: part.thinking } : {}),
      done: false,
    }),
    final: (doneReason, metrics) => ({
      model: requested,
      created_at: formatUtc(),
      response: "",
      done: true,
      done_reason: doneReason,
      ...(finalContext ? { context: finalContext } : {}),
      ...metrics,
    }),
    merge: (acc, chunk) => {
      const response = (acc?.response ?? "") + chunk.response;
      const thinking = (acc?.thinking ?? "") + (chunk.thinking ?? "");
      return orderKeys({ ...chunk, response, thinking: thinking === "" ? undefined : thinking }, GENERATE_KEYS);
    },
  });
};
