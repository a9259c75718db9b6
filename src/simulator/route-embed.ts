/**
 * POST /api/embed and the legacy POST /api/embeddings. Embeddings go through the scheduler like
 * generation (embedding-only models always get one parallel slot), each input takes a slot and
 * `firstTokenMs` of simulated compute, and vectors are deterministic (see embedding.ts).
 */
import { sleep } from "./abortable.js";
import { applyDimensions, embed, rawEmbedding } from "./embedding.js";
import { ApiError, isAbortError } from "./errors.js";
import { decodeBody, STRUCTS } from "./go-json.js";
import { parseKeepAlive } from "./go-duration.js";
import { createSink, type Exchange } from "./http-exchange.js";
import type { InstalledModel } from "./model-store.js";
import { parseModelName } from "./model-name.js";
import { resolveRequestOptions } from "./request-options.js";
import type { RunnerLease, RunnerOptions } from "./scheduler.js";
import { metrics, since, stringField, type Handler, type SimContext } from "./sim-context.js";
import { bump } from "./stats.js";

/** Handles POST /api/embed. */
export const handleEmbed: Handler = async (ex, ctx) => {
  const body = decodeBody(ex.body, STRUCTS.embed);
  const keepAliveMs = parseKeepAlive(body.keep_alive);
  const requested = stringField(body, "model");
  const name = parseModelName(requested);
  if (!name) throw requested === "" ? new ApiError(404, "model '' not found") : new ApiError(400, "invalid model name");

  const inputs: string[] = [];
  const input = body.input;
  if (typeof input === "string") {
    if (input !== "") inputs.push(input);
  } else if (Array.isArray(input)) {
    for (const item of input) {
      if (typeof item !== "string") throw new ApiError(400, "invalid input type");
      inputs.push(item);
    }
  } else if (input !== undefined && input !== null) {
    throw new ApiError(400, "invalid input type");
  }

  const installed = ctx.store.find(name);
  if (!installed) throw new ApiError(404, `model ${JSON.stringify(requested)} not found, try pulling it first`);
  const spec = installed.spec;
  const options = resolveRequestOptions(body.options, spec, ctx.config.defaultNumCtx);
  const lease = await acquire(ex, ctx, installed, options.runner, keepAliveMs);
  const loadNs = since(ex.startedAt);

  if (inputs.length === 0) {
    lease.release();
    ex.sendJson(200, { model: requested, embeddings: [] });
    return;
  }

  const contextLength = Math.min(options.runner.numCtx, spec.contextLength);
  const truncate = body.truncate !== false;
  const prepared = inputs.map((text) => {
    const words = text.trim() === "" ? [] : text.trim().split(/\s+/);
    if (words.length > contextLength && !truncate) {
      lease.release();
      throw new ApiError(400, "the input length exceeds the context length");
    }
    const kept = words.length > contextLength ? words.slice(0, contextLength) : words;
    return { text: kept.length === words.length ? text : kept.join(" "), tokens: Math.max(1, kept.length) };
  });
  const dimensions = typeof body.dimensions === "number" ? body.dimensions : undefined;

  type EmbedChunk = Record<string, unknown>;
  const sink = createSink<EmbedChunk>(ex, false, (_acc, chunk) => chunk);
  const embeddings: number[][] = [];
  let promptEvalCount = 0;
  const ok = await withSlots(ex, ctx, lease, async () => {
    for (const item of prepared) {
      await sleep(ctx.config.firstTokenMs, ex.signal);
      embeddings.push(applyDimensions(embed(spec.digest, item.text, spec.embeddingLength), dimensions));
      promptEvalCount += item.tokens;
      if (!(await sink.push({}, false))) return false;
    }
    return true;
  });
  if (!ok) return;
  const m = metrics({
    total: since(ex.startedAt),
    load: loadNs,
    promptEvalCount,
    promptEval: 0n,
    evalCount: 0,
    evalDuration: 0n,
  });
  if (await sink.push({ model: requested, embeddings, ...m }, true)) ctx.stats.completed++;
};

/** Handles the legacy POST /api/embeddings (single, unnormalised vector; errors are 500). */
export const handleEmbeddings: Handler = async (ex, ctx) => {
  const body = decodeBody(ex.body, STRUCTS.embeddings);
  const keepAliveMs = parseKeepAlive(body.keep_alive);
  const requested = stringField(body, "model");
  const name = parseModelName(requested);
  if (!name) throw new ApiError(400, requested === "" ? "model is required" : "invalid model name");
  const installed = ctx.store.find(name);
  if (!installed) throw new ApiError(404, `model ${JSON.stringify(requested)} not found, try pulling it first`);
  const options = resolveRequestOptions(body.options, installed.spec, ctx.config.defaultNumCtx);
  const lease = await acquire(ex, ctx, installed, options.runner, keepAliveMs);
  const prompt = stringField(body, "prompt");
  if (prompt === "") {
    lease.release();
    ex.sendJson(200, { embedding: [] });
    return;
  }
  const sink = createSink<Record<string, unknown>>(ex, false, (_acc, chunk) => chunk);
  let vector: number[] = [];
  const ok = await withSlots(ex, ctx, lease, async () => {
    await sleep(ctx.config.firstTokenMs, ex.signal);
    vector = rawEmbedding(installed.spec.digest, prompt, installed.spec.embeddingLength);
    return true;
  });
  if (!ok) return;
  if (await sink.push({ embedding: vector }, true)) ctx.stats.completed++;
};

function acquire(
  ex: Exchange,
  ctx: SimContext,
  installed: InstalledModel,
  runner: RunnerOptions,
  keepAliveMs: number | undefined,
): Promise<RunnerLease> {
  return ctx.scheduler.acquire({
    model: installed.spec,
    name: installed.display,
    options: runner,
    keepAliveMs,
    signal: ex.signal,
  });
}

/**
 * Runs `work` holding one parallel slot (Ollama embeds inputs concurrently, but embedding runners
 * have one slot, so it is effectively serial). Releases slot and lease however it ends;
 * resolves false when the client went away or a fault ended the answer.
 */
async function withSlots(
  ex: Exchange,
  ctx: SimContext,
  lease: RunnerLease,
  work: () => Promise<boolean>,
): Promise<boolean> {
  const model = lease.runner.name;
  let release: (() => void) | undefined;
  try {
    release = await lease.acquireSlot(ex.signal);
    bump(ctx.stats.inFlight, model);
    ctx.stats.maxInFlight[model] = Math.max(ctx.stats.maxInFlight[model] ?? 0, ctx.stats.inFlight[model] ?? 0);
    return await work();
  } catch (error) {
    if (isAbortError(error)) return false;
    throw error;
  } finally {
    if (release) {
      release();
      bump(ctx.stats.inFlight, model, -1);
    }
    lease.release();
  }
}
