import { Code, ConnectError } from "@connectrpc/connect";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { InferenceService } from "../gen/ollama/gateway/v1/inference_pb.js";
import type {
  ChatRequest,
  ChatResponseSchema,
  EmbedRequest,
  GenerateRequest,
  GenerateResponseSchema,
} from "../gen/ollama/gateway/v1/inference_pb.js";
import { Role } from "../gen/ollama/gateway/v1/types_pb.js";
import type { UsageSchema } from "../gen/ollama/gateway/v1/types_pb.js";
import { untilAborted, within } from "../util/until-aborted.js";
import { authorizeModel, modelFilter } from "../auth/authorize.js";
import { streamEndedEarly, wrongEmbeddings } from "../errors/domain-errors.js";
import { errorReason } from "../errors/gateway-error.js";
import { toConnectError } from "../errors/to-connect-error.js";
import { rpcInfo } from "../observability/rpc-info.js";
import { affinityKey } from "../routing/affinity.js";
import type { FleetMetadata } from "../routing/fleet-metadata.js";
import { NO_ALIASES, resolveModel } from "../routing/model-aliases.js";
import type { AliasMap, ModelRoute } from "../routing/model-aliases.js";
import type { RetryPolicy } from "../routing/retry-policy.js";
import type { Scheduler } from "../routing/scheduler.js";
import { ollamaTimings } from "../routing/slot-learning.js";
import { sinkIterable } from "./message-sink.js";
import type { MessageSink } from "./message-sink.js";
import { rpcSignal } from "./rpc-signal.js";
import { canonicalModelName } from "../upstream/model-name.js";
import type { NodeHealth } from "../upstream/node-health.js";
import { coalesceChunks } from "./coalesce-chunks.js";
import { createEmbedBatcher } from "./embed-batcher.js";
import type { EmbedShare } from "./embed-batcher.js";
import type { EmbeddingCache, EmbeddingKey } from "./embedding-cache.js";
import { createFailover } from "./failover.js";
import type { FailoverObserver, Urgency } from "./failover.js";
import { chatBody, embedBody, generateBody, optionsJson } from "./ollama-request.js";
import type { OllamaBody } from "./ollama-request.js";
import { chatChunk, generateChunk, usage } from "./ollama-response.js";
import type { OllamaChunk, UsageContext } from "./ollama-response.js";
import {
  answerEncoding,
  checkEmbedAnswerFits,
  validateChat,
  validateEmbed,
  validateGenerate,
} from "./validate-request.js";

/** Longest an Embed waits for the fresh /api/tags behind its cache key before it goes without the cache. */
const DIGEST_WAIT_MS = 1_000;

/** What the inference handlers need from the rest of the gateway. */
export interface InferenceDeps {
  /** Admission and node choice. */
  scheduler: Scheduler;
  /** Told about failures and successes (passive health, circuit breakers). */
  health: NodeHealth;
  /** Upper bound of any RPC's deadline, in ms. */
  maxDeadlineMs: number;
  /** Model digests, needed to key the embedding cache. */
  metadata: FleetMetadata;
  /** Embedding cache; undefined = Embed always goes upstream. */
  embeddings?: EmbeddingCache;
  /** Embed micro-batching window in ms; 0 = off. */
  embedBatchWindowMs?: number;
  /** Retries before the first message. @default DEFAULT_RETRY_POLICY */
  retry?: RetryPolicy;
  /** Per-model num_ctx forced on every request (`*` = any model), so mixed clients cannot make Ollama reload. */
  numCtx?: ReadonlyMap<string, number>;
  /** The model aliases in force, read at the start of every call (a reload replaces them). @default none */
  aliases?: () => AliasMap;
  /** Picks alias targets for calls without a session key, in [0, 1). @default Math.random */
  random?: () => number;
  /** Told how each upstream call goes (metrics, traces). @default none */
  observer?: FailoverObserver;
  /** Largest response message (`MAX_MESSAGE_BYTES`): an Embed whose answer cannot fit is refused up front. @default no check */
  maxMessageBytes?: number;
}

/** Response header naming the model that served the call (README, "Model aliases"). */
export const SERVED_MODEL_HEADER = "x-served-model";
/** Response header saying why a fallback model served the call; absent when none did. */
export const FALLBACK_REASON_HEADER = "x-fallback-reason";

/** A GenerateResponse as the handlers build it. */
export type GenerateReply = MessageInitShape<typeof GenerateResponseSchema>;
/** A ChatResponse as the handlers build it. */
export type ChatReply = MessageInitShape<typeof ChatResponseSchema>;

/** The inference handlers, in the two shapes the transport serves them in. */
export interface InferenceHandlers {
  /** For connect-node: every protocol (gRPC, gRPC-Web, Connect), compressed requests. */
  readonly service: ServiceImpl<typeof InferenceService>;
  /** Generate writing straight into a sink: the gRPC fast path's streaming form. Throws (synchronously) on an invalid request. */
  generate(req: GenerateRequest, ctx: HandlerContext, sink: MessageSink<GenerateReply>): Promise<void>;
  /** Chat writing straight into a sink. */
  chat(req: ChatRequest, ctx: HandlerContext, sink: MessageSink<ChatReply>): Promise<void>;
}

/**
 * Generate, Chat and Embed: validate, wait for a slot on a node (the
 * scheduler, with the call's `x-priority` and deadline), call Ollama with the
 * RPC's signal, translate each chunk as it arrives. Nothing is buffered:
 * streams write into a sink and wait while the client's buffer is full, so a
 * slow client slows the upstream read. All three go through one failover
 * loop (`failover.ts`): a call that fails before its first message (node
 * down, busy) is retried on another node with backoff, within the deadline;
 * once tokens were sent it is never replayed. Embed calls go through the
 * micro-batcher, which admits a batch as urgently as its most urgent caller.
 */
export function createInferenceService(deps: InferenceDeps): InferenceHandlers {
  const failover = createFailover({
    scheduler: deps.scheduler,
    health: deps.health,
    policy: deps.retry,
    observer: deps.observer,
  });

  function normalise(body: OllamaBody, model: string): OllamaBody {
    const forced = deps.numCtx?.get(canonicalModelName(model)) ?? deps.numCtx?.get("*");
    if (forced === undefined) return body;
    const options =
      typeof body["options"] === "object" && body["options"] !== null && !Array.isArray(body["options"])
        ? body["options"]
        : {};
    return { ...body, options: { ...options, num_ctx: forced } };
  }

  /** The call's priority (`x-priority`) and time left: the client's deadline, within the gateway's own bound. */
  function urgencyOf(ctx: HandlerContext): Urgency {
    const priority = parsePriority(ctx.requestHeader.get("x-priority"));
    const bound = Date.now() + deps.maxDeadlineMs;
    return {
      priority: () => priority,
      remainingMs: () => Math.min(ctx.timeoutMs() ?? Number.POSITIVE_INFINITY, bound - Date.now()),
    };
  }

  /**
   * The models a call may be served by: its own, or an alias's pick and fallbacks among those the
   * caller may use (README, "Permissions": the alias is authorized like a model name, and so is
   * every model it sends the call to; a caller allowed none of them is refused for the first).
   */
  function routeOf(model: string, session: string | undefined, ctx: HandlerContext): ModelRoute {
    const route = resolveModel(
      model,
      deps.aliases?.() ?? NO_ALIASES,
      session,
      deps.random ?? Math.random,
      modelFilter(ctx.values),
    );
    if (route.models.length === 0) authorizeModel(ctx, route.alias?.targets[0]?.model ?? model);
    return route;
  }

  /** Says in the response headers and the log line which model serves the call, and why when a fallback. */
  function announce(ctx: HandlerContext, model: string, fallback: string | undefined): void {
    const info = rpcInfo(ctx);
    info.servedModel = model;
    info.fallbackReason = fallback ?? "";
    ctx.responseHeader.set(SERVED_MODEL_HEADER, model);
    if (fallback === undefined) ctx.responseHeader.delete(FALLBACK_REASON_HEADER);
    else ctx.responseHeader.set(FALLBACK_REASON_HEADER, fallback);
  }

  async function relay<T extends { done?: boolean }>(
    path: string,
    body: OllamaBody,
    route: ModelRoute,
    affinityOf: (model: string) => string | undefined,
    ctx: HandlerContext,
    translate: (chunk: OllamaChunk, usage: UsageContext) => T,
    sink: MessageSink<T>,
  ): Promise<void> {
    const info = rpcInfo(ctx);
    info.model = route.requested;
    const signal = rpcSignal(ctx, deps.maxDeadlineMs);
    const models = route.models;
    const model = models[0]!;
    const { priority, remainingMs } = urgencyOf(ctx);
    const fallbacks = models.length > 1 ? models.slice(1) : undefined;
    const request = { model, fallbacks, affinity: affinityOf(model), affinityOf, signal, priority, remainingMs };
    await failover.run(request, async (attempt) => {
      const node = attempt.node.name;
      const model = attempt.model;
      info.node = node;
      announce(ctx, model, attempt.fallback);
      const usageCtx: UsageContext = { node, queueMs: attempt.queueMs };
      let finished = false;
      let after = 0;
      const served = model === route.requested ? body : normalise({ ...body, model }, model);
      const upstream = await attempt.node.open(path, served, signal);
      try {
        await upstream.pump((batch) => {
          // After the final chunk, read on to the end of the response (it
          // comes at once) so the connection goes back to the pool instead of
          // being torn down; a node that keeps talking is cut off.
          if (finished) return ++after <= 4;
          let more = true;
          for (const chunk of coalesceChunks(batch)) {
            const message = translate(chunk, usageCtx);
            info.messages++;
            attempt.sent();
            more = sink.send(message) && more;
            if (message.done === true) {
              attempt.loaded(nanosToMs(chunk["load_duration"]), ollamaTimings(chunk));
              // Ollama's final counts, for the token quotas (README, "Rate limits and quotas").
              info.promptTokens = tokenCount(chunk["prompt_eval_count"]);
              info.completionTokens = tokenCount(chunk["eval_count"]);
              finished = true;
              return true;
            }
          }
          return more || sink.drained();
        });
      } finally {
        upstream.close();
      }
      // Ollama ends a stream without a final chunk when its repeat detector
      // fires; the client must still be able to tell the answer was cut.
      if (!finished) throw streamEndedEarly(model, node);
    });
  }

  const batcher = createEmbedBatcher({
    windowMs: deps.embedBatchWindowMs ?? 0,
    maxInputs: 256,
    // Ollama's 400 belongs to the inputs: the batcher retries each caller alone.
    isRejection: (e) =>
      e instanceof ConnectError && e.code === Code.InvalidArgument && errorReason(e) === "UPSTREAM_REJECTED",
    send(body, signal, urgency) {
      const model = String(body["model"]);
      return failover.run({ model, signal, ...urgency }, async (attempt) => {
        const raw = await attempt.node.call("POST", "/api/embed", body, signal);
        attempt.loaded(nanosToMs((raw as Record<string, unknown> | undefined)?.["load_duration"]));
        return { raw, node: attempt.node.name, queueMs: attempt.queueMs };
      });
    },
  });

  /** Generate into a sink (the request is valid). */
  function generateInto(req: GenerateRequest, ctx: HandlerContext, sink: MessageSink<GenerateReply>): Promise<void> {
    const session = req.sessionKey || ctx.requestHeader.get("x-session-id") || undefined;
    const prefix = `${req.system}\u0000${req.prompt}`;
    return relay(
      "/api/generate",
      normalise(generateBody(req), req.model),
      routeOf(req.model, session, ctx),
      (model) => affinityKey(canonicalModelName(model), session, prefix),
      ctx,
      generateChunk,
      sink,
    );
  }

  /** Chat into a sink (the request is valid). */
  function chatInto(req: ChatRequest, ctx: HandlerContext, sink: MessageSink<ChatReply>): Promise<void> {
    const session = req.sessionKey || ctx.requestHeader.get("x-session-id") || undefined;
    // The first messages identify a conversation as it grows.
    const prefix = req.messages
      .filter((m) => m.role !== Role.ASSISTANT)
      .slice(0, 2)
      .map((m) => m.content)
      .join("\u0000");
    return relay(
      "/api/chat",
      normalise(chatBody(req), req.model),
      routeOf(req.model, session, ctx),
      (model) => affinityKey(canonicalModelName(model), session, prefix),
      ctx,
      chatChunk,
      sink,
    );
  }

  const service: ServiceImpl<typeof InferenceService> = {
    generate(req, ctx) {
      validateGenerate(req);
      authorizeModel(ctx, req.model);
      return sinkIterable<GenerateReply>((sink) => generateInto(req, ctx, sink));
    },

    chat(req, ctx) {
      validateChat(req);
      authorizeModel(ctx, req.model);
      return sinkIterable<ChatReply>((sink) => chatInto(req, ctx, sink));
    },

    async embed(asked, ctx) {
      validateEmbed(asked);
      authorizeModel(ctx, asked.model);
      // An alias picks one target (sticky per x-session-id); Embed has no fallbacks (README, "Model aliases").
      const [served = asked.model] = routeOf(
        asked.model,
        ctx.requestHeader.get("x-session-id") || undefined,
        ctx,
      ).models;
      const req = served === asked.model ? asked : { ...asked, model: served };
      announce(ctx, served, undefined);
      const info = rpcInfo(ctx);
      info.model = asked.model;
      const signal = rpcSignal(ctx, deps.maxDeadlineMs);
      const urgency = urgencyOf(ctx);
      if (deps.maxMessageBytes !== undefined) {
        const encoding = answerEncoding(ctx.requestHeader.get("content-type"));
        await checkEmbedAnswerFits(req, encoding, deps.maxMessageBytes, deps.metadata, signal).catch((e: unknown) => {
          throw toConnectError(e, signal, { model: req.model });
        });
      }

      const key = deps.embeddings && req.inputs.length > 0 ? await embeddingKey(req, signal) : undefined;
      // The cache gives up on Redis after its command timeout, and on the RPC when its signal aborts.
      const cached = key
        ? await deps.embeddings!.lookup(key, req.inputs, signal).catch((e: unknown) => {
            throw toConnectError(e, signal, { model: req.model });
          })
        : [];
      // Only inputs not in the cache go upstream, each distinct text once.
      const missing = [...new Set(req.inputs.filter((_, i) => cached[i] === undefined))];
      let fresh: number[][] = [];
      let usageInit: MessageInitShape<typeof UsageSchema> = {};
      if (missing.length > 0 || req.inputs.length === 0) {
        let share: EmbedShare;
        try {
          share = await batcher.embed(normalise(embedBody(req, []), req.model), missing, signal, urgency);
        } catch (e) {
          throw toConnectError(e, signal, { model: req.model });
        }
        info.node = share.node;
        const usageCtx: UsageContext = { node: share.node, queueMs: share.queueMs };
        fresh = embedVectors(share.vectors, missing.length, usageCtx, req.model);
        usageInit = usage(share.raw, usageCtx);
        info.promptTokens = tokenCount(share.raw["prompt_eval_count"]);
        if (key) {
          await deps.embeddings!.store(key, missing, fresh, signal).catch((e: unknown) => {
            throw toConnectError(e, signal, { model: req.model });
          });
        }
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
  return {
    service,
    generate(req, ctx, sink) {
      validateGenerate(req);
      authorizeModel(ctx, req.model);
      return generateInto(req, ctx, sink);
    },
    chat(req, ctx, sink) {
      validateChat(req);
      authorizeModel(ctx, req.model);
      return chatInto(req, ctx, sink);
    },
  };

  /**
   * The cache key of this request's vectors, or undefined (no caching) when
   * the model's digest is unknown or differs between nodes.
   */
  async function embeddingKey(req: EmbedRequest, signal: AbortSignal): Promise<EmbeddingKey | undefined> {
    try {
      // Digests from a recent /api/tags answer, not the tags cache (see LocateOptions.recent);
      // a node slow to give one makes this call go without the cache rather than wait.
      const where = await within(
        untilAborted(deps.metadata.locate(req.model, signal, { recent: true }), signal),
        DIGEST_WAIT_MS,
      );
      if (where === undefined) return undefined;
      const digests = new Set(where.located.map((l) => l.tag.digest));
      const [digest] = digests;
      if (digests.size !== 1 || !digest) return undefined;
      const options = optionsJson(req.options);
      return {
        digest,
        dimensions: req.dimensions,
        truncate: req.truncate ?? true,
        options: options === undefined ? "" : JSON.stringify(options),
      };
    } catch (e) {
      if (signal.aborted) throw toConnectError(e, signal, { model: req.model });
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
    throw wrongEmbeddings(model, ctx.node, Array.isArray(vectors) ? vectors.length : undefined, expected);
  }
  return vectors as number[][];
}

/** The `x-priority` header as a queue priority: an integer in -100..100; absent or not a number = 0. */
export function parsePriority(header: string | null): number {
  const raw = Number(header ?? "0");
  return Number.isFinite(raw) ? Math.max(-100, Math.min(100, Math.trunc(raw))) : 0;
}

/** One of Ollama's token counts; 0 when absent or odd. */
function tokenCount(v: unknown): number {
  return typeof v === "number" && Number.isFinite(v) && v > 0 ? Math.round(v) : 0;
}

/** Ollama's nanosecond durations (e.g. `load_duration`) in ms; undefined when absent or odd. */
function nanosToMs(v: unknown): number | undefined {
  return typeof v === "number" && Number.isFinite(v) && v >= 0 ? v / 1e6 : undefined;
}
