import { Code } from "@connectrpc/connect";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { InferenceService } from "../gen/ollama/gateway/v1/inference_pb.js";
import type { EmbedRequest } from "../gen/ollama/gateway/v1/inference_pb.js";
import type { UsageSchema } from "../gen/ollama/gateway/v1/types_pb.js";
import { gatewayError } from "../errors/gateway-error.js";
import { isUnreachable, toConnectError } from "../errors/to-connect-error.js";
import { rpcInfo } from "../observability/rpc-info.js";
import type { FleetMetadata } from "../routing/fleet-metadata.js";
import type { NodePicker } from "../routing/node-picker.js";
import { rpcSignal } from "../transport/rpc-signal.js";
import type { NodeHealth } from "../upstream/node-health.js";
import { canonicalModelName } from "../upstream/model-name.js";
import type { OllamaNode } from "../upstream/ollama-node.js";
import { coalesceChunks } from "./coalesce-chunks.js";
import type { EmbeddingCache, EmbeddingKey } from "./embedding-cache.js";
import { createEmbedBatcher } from "./embed-batcher.js";
import type { EmbedShare } from "./embed-batcher.js";
import { chatBody, embedBody, generateBody, optionsJson } from "./ollama-request.js";
import type { OllamaBody } from "./ollama-request.js";
import { chatChunk, generateChunk, usage } from "./ollama-response.js";
import type { OllamaChunk, UsageContext } from "./ollama-response.js";
import { validateChat, validateEmbed, validateGenerate } from "./validate-request.js";

/** What the inference handlers need from the rest of the gateway. */
export interface InferenceDeps {
  /** Chooses the node for each request. */
  picker: NodePicker;
  /** Told about connection failures and successes (passive health). */
  health: NodeHealth;
  /** Upper bound of any RPC's deadline, in ms. */
  maxDeadlineMs: number;
  /** Embedding cache; undefined = Embed always goes upstream. */
  embeddings?: EmbeddingCache;
  /** Model digests per node, needed to key the embedding cache. */
  metadata?: FleetMetadata;
  /** Embed micro-batching window in ms; 0 = off. */
  embedBatchWindowMs?: number;
}

/**
 * Generate, Chat and Embed: validate, choose a node, call Ollama with the
 * RPC's signal, translate each chunk as it arrives. Nothing is buffered: the
 * handlers are lazy generators, so a slow client slows the upstream read
 * (connect-node waits for each write to drain before pulling the next item).
 */
export function createInferenceService(deps: InferenceDeps): ServiceImpl<typeof InferenceService> {
  const batcher = createEmbedBatcher({ windowMs: deps.embedBatchWindowMs ?? 0, maxInputs: 256 });

  async function* relay<T extends { done?: boolean }>(
    path: string,
    body: OllamaBody,
    model: string,
    ctx: HandlerContext,
    translate: (chunk: OllamaChunk, usage: UsageContext) => T,
  ): AsyncGenerator<T> {
    const node = deps.picker.pick();
    const info = rpcInfo(ctx);
    info.model = model;
    info.node = node.name;
    const signal = rpcSignal(ctx, deps.maxDeadlineMs);
    const usageCtx: UsageContext = { node: node.name, queueMs: 0 };
    try {
      for await (const batch of node.stream(path, body, signal)) {
        for (const chunk of coalesceChunks(batch)) {
          const message = translate(chunk, usageCtx);
          info.messages++;
          yield message;
          if (message.done === true) {
            deps.health.reportSuccess(node.name);
            return;
          }
        }
      }
      // Ollama ends a stream without a final chunk when its repeat detector
      // fires; the client must still be able to tell the answer was cut.
      throw gatewayError(Code.Internal, "UPSTREAM_PROTOCOL_ERROR", "the Ollama stream ended before its final message", {
        metadata: { model, node: node.name },
      });
    } catch (e) {
      throw fail(e, node, model, signal);
    }
  }

  function fail(e: unknown, node: OllamaNode, model: string, signal: AbortSignal): Error {
    if (!signal.aborted && isUnreachable(e)) deps.health.reportFailure(node.name);
    return toConnectError(e, signal, { model, node: node.name });
  }

  return {
    generate(req, ctx) {
      validateGenerate(req);
      return relay("/api/generate", generateBody(req), req.model, ctx, generateChunk);
    },

    chat(req, ctx) {
      validateChat(req);
      return relay("/api/chat", chatBody(req), req.model, ctx, chatChunk);
    },

    async embed(req, ctx) {
      validateEmbed(req);
      const node = deps.picker.pick();
      const info = rpcInfo(ctx);
      info.model = req.model;
      info.node = node.name;
      const signal = rpcSignal(ctx, deps.maxDeadlineMs);
      const usageCtx: UsageContext = { node: node.name, queueMs: 0 };

      const key = deps.embeddings && req.inputs.length > 0 ? await embeddingKey(node, req, signal) : undefined;
      const cached = key ? await deps.embeddings!.lookup(key, req.inputs) : [];
      // Only inputs not in the cache go upstream, each distinct text once.
      const missing = [...new Set(req.inputs.filter((_, i) => cached[i] === undefined))];
      let fresh: number[][] = [];
      let usageInit: MessageInitShape<typeof UsageSchema> = { node: node.name };
      if (missing.length > 0 || req.inputs.length === 0) {
        let share: EmbedShare;
        try {
          share = await batcher.embed(node, embedBody(req, []), missing, signal);
        } catch (e) {
          throw fail(e, node, req.model, signal);
        }
        deps.health.reportSuccess(node.name);
        fresh = embedVectors(share.vectors, missing.length, usageCtx, req.model);
        usageInit = usage(share.raw, usageCtx);
        if (key) await deps.embeddings!.store(key, missing, fresh);
      }
      const position = new Map(missing.map((text, i) => [text, i]));
      return {
        embeddings: req.inputs.map((text, i) => {
          const hit = cached[i];
          return { values: hit ? Array.from(hit) : fresh[position.get(text)!]! };
        }),
        usage: usageInit,
        cachedInputs: req.inputs.length - req.inputs.filter((_, i) => cached[i] === undefined).length,
      };
    },
  };

  /** The cache key of this request's vectors, or undefined when the model's digest is unknown (no caching). */
  async function embeddingKey(node: OllamaNode, req: EmbedRequest, signal: AbortSignal): Promise<EmbeddingKey | undefined> {
    if (!deps.metadata) return undefined;
    try {
      const wanted = canonicalModelName(req.model);
      const tag = (await deps.metadata.tags(node, signal)).find((t) => canonicalModelName(t.name) === wanted);
      if (!tag || tag.digest === "") return undefined;
      const options = optionsJson(req.options);
      return {
        digest: tag.digest,
        dimensions: req.dimensions,
        truncate: req.truncate ?? true,
        options: options === undefined ? "" : JSON.stringify(options),
      };
    } catch {
      return undefined; // metadata unavailable: serve without the cache
    }
  }
}

/** Checks the vectors of Ollama's /api/embed answer; a wrong shape is an upstream protocol error. */
function embedVectors(vectors: unknown, expected: number, ctx: UsageContext, model: string): number[][] {
  const valid =
    Array.isArray(vectors) &&
    vectors.length === expected &&
    vectors.every((v) => Array.isArray(v) && v.every((x) => typeof x === "number"));
  if (!valid) {
    throw gatewayError(
      Code.Internal,
      "UPSTREAM_PROTOCOL_ERROR",
      `the Ollama node answered with ${Array.isArray(vectors) ? vectors.length : "no"} embeddings for ${expected} inputs`,
      { metadata: { model, node: ctx.node } },
    );
  }
  return vectors as number[][];
}
