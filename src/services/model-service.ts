import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { create } from "@bufbuild/protobuf";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { JsonObject } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import type { ModelService } from "../gen/ollama/gateway/v1/model_pb.js";
import { ModelAliasSchema } from "../gen/ollama/gateway/v1/model_pb.js";
import type {
  GetModelResponseSchema,
  ModelAlias as ModelAliasMessage,
  ModelDetailsSchema,
  ModelSchema,
  PullModelResponseSchema,
} from "../gen/ollama/gateway/v1/model_pb.js";
import { invalidArgument } from "../errors/gateway-error.js";
import { modelNotFound, modelNotInRegistry, noNodeAnswered, pullWithoutSuccess } from "../errors/domain-errors.js";
import type { FieldViolation } from "../errors/gateway-error.js";
import { toConnectError } from "../errors/to-connect-error.js";
import { isNodeDown } from "../upstream/network-errors.js";
import { rpcInfo } from "../observability/rpc-info.js";
import { authorizeModel, modelFilter } from "../auth/authorize.js";
import type { FleetMetadata, Located } from "../routing/fleet-metadata.js";
import { aliasUsable, usableAlias } from "../routing/model-aliases.js";
import type { AliasMap, ModelAlias } from "../routing/model-aliases.js";
import { rpcSignal } from "./rpc-signal.js";
import { canonicalModelName } from "../upstream/model-name.js";
import type { OllamaDetails } from "../upstream/ollama-metadata.js";
import type { NodeHealth } from "../upstream/node-health.js";
import type { OllamaNode } from "../upstream/ollama-node.js";
import { isUpstreamError } from "../upstream/upstream-error.js";
import { keepAliveSeconds, optionsJson } from "./ollama-request.js";
import { checkModel } from "./validate-request.js";

/** What the model lifecycle handlers need. */
export interface ModelServiceDeps {
  /** Every configured node, in configuration order. */
  nodes: readonly OllamaNode[];
  /** Cached view of what nodes have installed and loaded. */
  metadata: FleetMetadata;
  /** Which nodes answer. */
  health: NodeHealth;
  /** Upper bound of any RPC's deadline, in ms. */
  maxDeadlineMs: number;
  /** Model aliases in force, listed by ListModels beside the installed models and described by GetModel. @default none */
  aliases?: () => AliasMap;
}

/**
 * The model lifecycle RPCs. Reads go through the metadata cache; every
 * change (load, unload, pull, delete, copy) invalidates the affected cache
 * entries on all gateway replicas before the RPC returns, so a model deleted
 * through one replica is gone from ListModels on another at once — waiting
 * for Redis at most until shortly before the deadline (`invalidationWait`).
 */
export function createModelService(deps: ModelServiceDeps): ServiceImpl<typeof ModelService> {
  const byName = new Map(deps.nodes.map((n) => [n.name, n]));

  /** The nodes a request names, or all; unknown names are INVALID_ARGUMENT. */
  function targetNodes(names: readonly string[], field: string): OllamaNode[] {
    if (names.length === 0) return [...deps.nodes];
    const v: FieldViolation[] = [];
    const out: OllamaNode[] = [];
    names.forEach((name, i) => {
      const node = byName.get(name);
      if (node === undefined) v.push({ field: `${field}[${i}]`, description: "is not a configured node" });
      else if (!out.includes(node)) out.push(node);
    });
    if (v.length > 0) throw invalidArgument(v);
    return out;
  }

  function requireModel(model: string, field = "model"): void {
    const v: FieldViolation[] = [];
    checkModel(model, v, field);
    if (v.length > 0) throw invalidArgument(v);
  }

  function fail(e: unknown, node: OllamaNode | undefined, signal: AbortSignal, facts: Record<string, string>): Error {
    if (node && !signal.aborted && isNodeDown(e)) deps.health.reportFailure(node.name, "unreachable");
    return toConnectError(e, signal, node ? { ...facts, node: node.name } : facts);
  }

  function begin(ctx: HandlerContext, model: string): AbortSignal {
    rpcInfo(ctx).model = model;
    return rpcSignal(ctx, deps.maxDeadlineMs);
  }

  /** Runs `op` on each node concurrently; all must succeed. */
  async function onEach<T>(
    nodes: OllamaNode[],
    signal: AbortSignal,
    facts: Record<string, string>,
    op: (n: OllamaNode) => Promise<T>,
  ): Promise<T[]> {
    const results = await Promise.allSettled(nodes.map(op));
    const failed = results.findIndex((r) => r.status === "rejected");
    if (failed !== -1) throw fail((results[failed] as PromiseRejectedResult).reason, nodes[failed], signal, facts);
    return results.map((r) => (r as PromiseFulfilledResult<T>).value);
  }

  return {
    async listModels(req, ctx) {
      const signal = begin(ctx, "");
      const nodes = targetNodes(req.node === "" ? [] : [req.node], "node");
      const unavailable: string[] = [];
      const merged = new Map<string, MessageInitShape<typeof ModelSchema> & { modifiedMs: number }>();
      await Promise.all(
        nodes.map(async (node) => {
          let tags;
          try {
            tags = await deps.metadata.tags(node, signal);
          } catch (e) {
            if (signal.aborted) throw fail(e, node, signal, {});
            if (isNodeDown(e)) deps.health.reportFailure(node.name, "unreachable");
            unavailable.push(node.name);
            return;
          }
          for (const t of tags) {
            const key = `${canonicalModelName(t.name)}|${t.digest}`;
            const modifiedMs = Date.parse(t.modifiedAt) || 0;
            const entry = merged.get(key);
            if (entry) {
              (entry.nodes as string[]).push(node.name);
              if (modifiedMs > entry.modifiedMs) {
                entry.modifiedMs = modifiedMs;
                entry.modifiedAt = timestampFromMs(modifiedMs);
              }
            } else {
              merged.set(key, {
                name: t.name,
                digest: t.digest,
                size: BigInt(Math.round(t.size)),
                details: details(t.details),
                capabilities: t.capabilities,
                modifiedAt: timestamp(t.modifiedAt),
                nodes: [node.name],
                modifiedMs,
              });
            }
          }
        }),
      );
      if (unavailable.length === nodes.length) {
        throw noNodeAnswered({ nodes: unavailable });
      }
      const order = new Map(deps.nodes.map((n, i) => [n.name, i]));
      // Only the models the caller may use (README "Permissions"); an alias shows only the
      // targets and fallbacks that could serve the caller, as a call would use them.
      const visible = modelFilter(ctx.values);
      const installed = [...merged.values()];
      const aliases = deps.aliases?.();
      if (aliases !== undefined && aliases.size > 0) {
        // An alias takes precedence over an installed model of its name (README, "Model aliases"):
        // that model cannot be called by the name, so only the alias is listed under it.
        for (const [key, m] of merged) if (aliases.has(canonicalModelName(m.name!))) merged.delete(key);
      }
      for (const alias of aliases?.values() ?? []) {
        const usable = usableAlias(alias, visible ?? (() => true));
        const entry = aliasUsable(usable) ? aliasEntry(usable, installed) : undefined;
        if (entry !== undefined) merged.set(`alias|${canonicalModelName(alias.name)}`, entry);
      }
      const models = [...merged.values()]
        .filter((m) => visible === undefined || visible(m.name!))
        .map(({ modifiedMs: _, ...m }) => {
          (m.nodes as string[]).sort((a, b) => order.get(a)! - order.get(b)!);
          return m;
        })
        .sort((a, b) => (a.name! < b.name! ? -1 : a.name! > b.name! ? 1 : a.digest! < b.digest! ? -1 : 1));
      return { models, unavailableNodes: unavailable.sort() };
    },

    async getModel(req, ctx) {
      requireModel(req.model);
      authorizeModel(ctx, req.model);
      const alias = deps.aliases?.().get(canonicalModelName(req.model));
      if (alias !== undefined) return describeAlias(alias, ctx);
      const signal = begin(ctx, req.model);
      const where = await deps.metadata.locate(req.model, signal).catch((e: unknown) => {
        throw fail(e, undefined, signal, { model: req.model });
      });
      if (where.located.length === 0) {
        if (where.unavailable.length === deps.nodes.length) {
          throw noNodeAnswered();
        }
        throw modelNotFound(req.model);
      }
      return describe(where, req.model, ctx, signal);
    },

    async listRunningModels(req, ctx) {
      const signal = begin(ctx, "");
      const nodes = targetNodes(req.node === "" ? [] : [req.node], "node");
      const unavailable: string[] = [];
      const perNode = await Promise.all(
        nodes.map(async (node) => {
          try {
            return { node, running: await deps.metadata.ps(node, signal) };
          } catch (e) {
            if (signal.aborted) throw fail(e, node, signal, {});
            unavailable.push(node.name);
            return { node, running: [] };
          }
        }),
      );
      if (unavailable.length === nodes.length) {
        throw noNodeAnswered();
      }
      const visible = modelFilter(ctx.values);
      return {
        models: perNode.flatMap(({ node, running }) =>
          running
            .filter((r) => visible === undefined || visible(r.name))
            .map((r) => ({
              name: r.name,
              digest: r.digest,
              size: BigInt(Math.round(r.size)),
              sizeVram: BigInt(Math.round(r.sizeVram)),
              expiresAt: timestamp(r.expiresAt),
              contextLength: BigInt(Math.round(r.contextLength)),
              node: node.name,
              details: details(r.details),
            }))
            .sort((a, b) => (a.name < b.name ? -1 : 1)),
        ),
        unavailableNodes: unavailable.sort(),
      };
    },

    async loadModel(req, ctx) {
      requireModel(req.model);
      authorizeModel(ctx, req.model);
      const signal = begin(ctx, req.model);
      let node: OllamaNode | undefined;
      if (req.node !== "") {
        node = targetNodes([req.node], "node")[0];
      } else {
        const where = await deps.metadata.locate(req.model, signal).catch((e: unknown) => {
          throw fail(e, undefined, signal, { model: req.model });
        });
        node = (where.located.find((l) => deps.health.isHealthy(l.node.name)) ?? where.located[0])?.node;
        if (node === undefined) throw modelNotFound(req.model);
      }
      rpcInfo(ctx).node = node!.name;
      const body: Record<string, unknown> = { model: req.model, prompt: "", stream: false };
      if (req.keepAlive !== undefined) body["keep_alive"] = keepAliveSeconds(req.keepAlive);
      const options = optionsJson(req.options);
      if (options !== undefined) body["options"] = options;
      const t0 = performance.now();
      try {
        await node!.call("POST", "/api/generate", body, signal);
      } catch (e) {
        throw fail(e, node, signal, { model: req.model });
      }
      const ms = performance.now() - t0;
      await deps.metadata.invalidate(node!.name, ["ps"], invalidationWait(ctx, signal));
      return {
        node: node!.name,
        loadDuration: { seconds: BigInt(Math.floor(ms / 1000)), nanos: Math.round((ms % 1000) * 1e6) },
      };
    },

    async unloadModel(req, ctx) {
      requireModel(req.model);
      authorizeModel(ctx, req.model);
      const signal = begin(ctx, req.model);
      let nodes: OllamaNode[];
      if (req.node !== "") {
        nodes = targetNodes([req.node], "node");
      } else {
        const wanted = canonicalModelName(req.model);
        const loaded = await Promise.all(
          deps.nodes.map(async (n) => {
            const running = await deps.metadata.ps(n, signal, true).catch((e: unknown) => {
              if (signal.aborted) throw fail(e, n, signal, { model: req.model });
              return [];
            });
            return running.some((r) => canonicalModelName(r.name) === wanted) ? n : undefined;
          }),
        );
        nodes = loaded.filter((n): n is OllamaNode => n !== undefined);
      }
      await onEach(nodes, signal, { model: req.model }, (n) =>
        n.call("POST", "/api/generate", { model: req.model, prompt: "", keep_alive: 0, stream: false }, signal),
      );
      await Promise.all(nodes.map((n) => deps.metadata.invalidate(n.name, ["ps"], invalidationWait(ctx, signal))));
      return { nodes: nodes.map((n) => n.name) };
    },

    async *pullModel(req, ctx) {
      requireModel(req.model);
      authorizeModel(ctx, req.model);
      const signal = begin(ctx, req.model);
      const nodes = targetNodes(req.nodes, "nodes");
      try {
        yield* mergeStreams(nodes.map((node) => pullFrom(node, req.model, req.insecure, signal)));
      } catch (e) {
        const failedNode = e instanceof PullError ? e.node : undefined;
        const cause = e instanceof PullError ? e.cause : e;
        if (isUpstreamError(cause) && /file does not exist|not found/i.test(cause.message) && !signal.aborted) {
          // The status message is sanitised; the verbatim text stays in upstream_message.
          throw modelNotInRegistry(req.model, cause.node, cause.message, cause);
        }
        throw fail(cause, failedNode, signal, { model: req.model });
      } finally {
        await Promise.all(nodes.map((n) => deps.metadata.invalidate(n.name, ["tags"], invalidationWait(ctx, signal))));
      }
    },

    async deleteModel(req, ctx) {
      requireModel(req.model);
      authorizeModel(ctx, req.model);
      const signal = begin(ctx, req.model);
      const nodes = await nodesWith(req.model, req.nodes, "nodes", signal);
      await onEach(nodes, signal, { model: req.model }, (n) =>
        n.call("DELETE", "/api/delete", { model: req.model }, signal),
      );
      await Promise.all(
        nodes.map((n) => deps.metadata.invalidate(n.name, ["tags", "ps"], invalidationWait(ctx, signal))),
      );
      return { nodes: nodes.map((n) => n.name) };
    },

    async copyModel(req, ctx) {
      const v: FieldViolation[] = [];
      checkModel(req.source, v, "source");
      checkModel(req.destination, v, "destination");
      if (v.length > 0) throw invalidArgument(v);
      authorizeModel(ctx, req.source);
      authorizeModel(ctx, req.destination);
      const signal = begin(ctx, req.source);
      const nodes = await nodesWith(req.source, req.nodes, "nodes", signal);
      await onEach(nodes, signal, { model: req.source }, (n) =>
        n.call("POST", "/api/copy", { source: req.source, destination: req.destination }, signal),
      );
      await Promise.all(nodes.map((n) => deps.metadata.invalidate(n.name, ["tags"], invalidationWait(ctx, signal))));
      return { nodes: nodes.map((n) => n.name) };
    },
  };

  /**
   * GetModel's answer for a model installed on `where.located` (at least one node): Ollama's
   * description from the first healthy node that has it.
   */
  async function describe(
    where: Located,
    asked: string,
    ctx: HandlerContext,
    signal: AbortSignal,
  ): Promise<MessageInitShape<typeof GetModelResponseSchema>> {
    const first = where.located.find((l) => deps.health.isHealthy(l.node.name)) ?? where.located[0]!;
    rpcInfo(ctx).node = first.node.name;
    let show;
    try {
      show = await deps.metadata.show(first.node, first.tag.name, first.tag.digest, signal);
    } catch (e) {
      throw fail(e, first.node, signal, { model: asked });
    }
    return {
      name: first.tag.name,
      digest: first.tag.digest,
      details: details(show.details.family ? show.details : first.tag.details),
      capabilities: show.capabilities.length > 0 ? show.capabilities : first.tag.capabilities,
      parameters: show.parameters,
      template: show.template,
      license: show.license,
      system: show.system,
      modelfile: show.modelfile,
      modelInfo: show.modelInfo as JsonObject,
      modifiedAt: timestamp(show.modifiedAt || first.tag.modifiedAt),
      nodes: where.located.map((l) => l.node.name),
    };
  }

  /**
   * GetModel on an alias (README, "Model aliases"): the description of its first target (config
   * order) installed on some node, under the alias's name, with no digest, the nodes holding any
   * of its targets, and what it resolves to. The permission rule is that of a call: the alias's
   * name was granted (checked by the caller), and a caller granted none of its models is refused
   * for the first target; targets it may not use are neither described nor shown.
   */
  async function describeAlias(
    alias: ModelAlias,
    ctx: HandlerContext,
  ): Promise<MessageInitShape<typeof GetModelResponseSchema>> {
    const usable = usableAlias(alias, modelFilter(ctx.values) ?? (() => true));
    if (!aliasUsable(usable)) authorizeModel(ctx, alias.targets[0]?.model ?? alias.name);
    const signal = begin(ctx, alias.name);
    const wheres = await Promise.all(usable.targets.map((t) => deps.metadata.locate(t.model, signal))).catch(
      (e: unknown) => {
        throw fail(e, undefined, signal, { model: alias.name });
      },
    );
    const described = wheres.findIndex((w) => w.located.length > 0);
    if (described === -1) {
      if (wheres.length > 0 && wheres.every((w) => w.unavailable.length === deps.nodes.length)) {
        throw noNodeAnswered();
      }
      throw modelNotFound(alias.name);
    }
    const answer = await describe(wheres[described]!, alias.name, ctx, signal);
    const holding = new Set(wheres.flatMap((w) => w.located.map((l) => l.node.name)));
    return {
      ...answer,
      name: alias.name,
      digest: "",
      nodes: deps.nodes.filter((n) => holding.has(n.name)).map((n) => n.name),
      alias: aliasMessage(usable, usable.targets[described]!.model),
    };
  }

  /** Nodes (among those named, or all) that have `model`; NOT_FOUND when none does. */
  async function nodesWith(
    model: string,
    names: readonly string[],
    field: string,
    signal: AbortSignal,
  ): Promise<OllamaNode[]> {
    const allowed = new Set(targetNodes(names, field));
    const where = await deps.metadata.locate(model, signal).catch((e: unknown) => {
      throw fail(e, undefined, signal, { model });
    });
    const nodes = where.located.map((l) => l.node).filter((n) => allowed.has(n));
    if (nodes.length === 0) throw modelNotFound(model);
    return nodes;
  }
}

/** A pull failure, with the node it happened on. */
class PullError extends Error {
  constructor(
    readonly node: OllamaNode,
    override readonly cause: unknown,
  ) {
    super("pull failed");
  }
}

async function* pullFrom(
  node: OllamaNode,
  model: string,
  insecure: boolean,
  signal: AbortSignal,
): AsyncGenerator<MessageInitShape<typeof PullModelResponseSchema>> {
  let success = false;
  try {
    for await (const batch of node.stream("/api/pull", { model, insecure, stream: true }, signal))
      for (const p of batch) {
        const status = typeof p["status"] === "string" ? p["status"] : "";
        if (status === "success") success = true;
        yield {
          status,
          digest: typeof p["digest"] === "string" ? p["digest"] : "",
          total: BigInt(Math.round(typeof p["total"] === "number" ? p["total"] : 0)),
          completed: BigInt(Math.round(typeof p["completed"] === "number" ? p["completed"] : 0)),
          node: node.name,
        };
      }
  } catch (e) {
    throw new PullError(node, e);
  }
  if (!success) {
    throw new PullError(node, pullWithoutSuccess(model, node.name));
  }
}

/**
 * Interleaves several async streams as items arrive. Pulls lazily (one
 * pending `next()` per source), so backpressure from the client reaches
 * every node; the first error ends the merge and closes the other sources.
 */
export async function* mergeStreams<T>(sources: AsyncGenerator<T>[]): AsyncGenerator<T> {
  const pending = new Map<number, Promise<{ i: number; r: IteratorResult<T> }>>();
  const pull = (i: number): void => {
    pending.set(
      i,
      sources[i]!.next().then((r) => ({ i, r })),
    );
  };
  for (let i = 0; i < sources.length; i++) pull(i);
  try {
    while (pending.size > 0) {
      const { i, r } = await Promise.race(pending.values());
      if (r.done) {
        pending.delete(i);
        continue;
      }
      yield r.value;
      pull(i);
    }
  } finally {
    for (const [i, p] of pending) {
      p.catch(() => undefined);
      await sources[i]!.return(undefined).catch(() => undefined);
    }
  }
}

function details(d: OllamaDetails): MessageInitShape<typeof ModelDetailsSchema> {
  return {
    format: d.format,
    family: d.family,
    families: d.families,
    parameterSize: d.parameterSize,
    quantizationLevel: d.quantizationLevel,
    parentModel: d.parentModel,
    contextLength: BigInt(Math.round(d.contextLength)),
    embeddingLength: BigInt(Math.round(d.embeddingLength)),
  };
}

/** Time left for a change RPC's answer to reach its client after the cache invalidation stops being waited for. */
const ANSWER_MARGIN_MS = 50;

/**
 * How long a change RPC (load, unload, pull, delete, copy) waits for its cache invalidation.
 *
 * The invalidation drops this replica's entries at once. Its Redis part (delete the shared
 * entries, then publish to the other replicas and see the message come back) is waited for, so
 * that when the RPC returns every replica has dropped them: a model deleted through A is gone
 * from ListModels on B immediately. Answering right after the local part would be quicker, but
 * would give up that guarantee even with a healthy Redis, so the RPC waits — yet only until
 * shortly before its deadline (or its cancel): a slow or hung Redis must not turn a change that
 * succeeded into DEADLINE_EXCEEDED. Past that point the RPC answers and the Redis part carries
 * on in the background within its own bounds (`REDIS_COMMAND_TIMEOUT_MS` per command), and is
 * replayed once Redis is back if it failed; meanwhile other replicas may serve the old entries,
 * at most until their TTL.
 */
function invalidationWait(ctx: HandlerContext, signal: AbortSignal): AbortSignal {
  const remaining = ctx.timeoutMs();
  if (remaining === undefined || signal.aborted) return signal;
  const margin = Math.min(ANSWER_MARGIN_MS, remaining / 4);
  return AbortSignal.any([signal, AbortSignal.timeout(Math.max(0, remaining - margin))]);
}

function timestamp(text: string): Timestamp | undefined {
  const ms = Date.parse(text);
  return Number.isFinite(ms) ? timestampFromMs(ms) : undefined;
}

/**
 * How ListModels shows an alias (README, "Model aliases"), given the part of it the caller may
 * use: its own name, no digest (it is no single set of weights), the details and capabilities of
 * its first target (config order) installed on the nodes asked, every node holding one of its
 * targets, and what it resolves to. Undefined when none of its targets is installed on the nodes
 * asked (it could not serve a call there).
 */
function aliasEntry(
  alias: ModelAlias,
  installed: readonly (MessageInitShape<typeof ModelSchema> & { modifiedMs: number })[],
): (MessageInitShape<typeof ModelSchema> & { modifiedMs: number }) | undefined {
  const holding = (model: string) =>
    installed.filter((m) => canonicalModelName(m.name ?? "") === canonicalModelName(model));
  const found = alias.targets.map((t) => holding(t.model));
  const described = found.findIndex((f) => f.length > 0);
  if (described === -1) return undefined;
  return {
    ...found[described]![0]!,
    name: alias.name,
    digest: "",
    nodes: [...new Set(found.flat().flatMap((m) => m.nodes ?? []))],
    alias: aliasMessage(alias, alias.targets[described]!.model),
  };
}

/** The `alias` field of ListModels and GetModel: an alias's targets and fallbacks, and the target described. */
function aliasMessage(alias: ModelAlias, describedModel: string): ModelAliasMessage {
  return create(ModelAliasSchema, {
    targets: alias.targets.map((t) => ({ model: t.model, weight: t.weight })),
    fallbacks: [...alias.fallbacks],
    describedModel,
  });
}
