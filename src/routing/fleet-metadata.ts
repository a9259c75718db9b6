import type { Cache } from "../cache/cache.js";
import { createSingleFlight } from "../cache/single-flight.js";
import { canonicalModelName } from "../upstream/model-name.js";
import { parsePs, parseShow, parseTags } from "../upstream/ollama-metadata.js";
import type { OllamaRunning, OllamaShow, OllamaTag } from "../upstream/ollama-metadata.js";
import type { OllamaNode } from "../upstream/ollama-node.js";

/** How long each kind of metadata stays cached. */
export interface MetadataTtls {
  /** Installed models per node (/api/tags). @default 30000 */
  tagsMs: number;
  /** Loaded models per node (/api/ps). @default 2000 */
  psMs: number;
  /** Model descriptions by digest (/api/show); a digest never changes. @default 86400000 */
  showMs: number;
  /** Longest a shared upstream metadata call may take. @default 10000 */
  upstreamTimeoutMs: number;
}

/** Where a model is installed. */
export interface Located {
  /** Each node that has it, with its tag entry there. */
  located: { node: OllamaNode; tag: OllamaTag }[];
  /** Nodes that could not be asked. */
  unavailable: string[];
}

/**
 * What the fleet has installed and loaded, read through the cache.
 *
 * Concurrent misses for one key share one upstream call (single-flight),
 * which runs under its own timeout rather than the first caller's signal, so
 * one impatient caller cannot fail the others; each caller still stops
 * waiting when its own signal fires.
 */
export interface FleetMetadata {
  /** Installed models on a node. `fresh` skips the cache (and refills it). */
  tags(node: OllamaNode, signal: AbortSignal, fresh?: boolean): Promise<OllamaTag[]>;
  /** Loaded models on a node. */
  ps(node: OllamaNode, signal: AbortSignal, fresh?: boolean): Promise<OllamaRunning[]>;
  /** The description of a model, cached by digest. */
  show(node: OllamaNode, name: string, digest: string, signal: AbortSignal): Promise<OllamaShow>;
  /**
   * Every node that has `model`. When no node lists it, asks the nodes once
   * more bypassing the cache, so a model installed a moment ago is found.
   */
  locate(model: string, signal: AbortSignal): Promise<Located>;
  /** Drops a node's cached tags and/or ps on every replica. */
  invalidate(node: string, kinds: readonly ("tags" | "ps")[]): Promise<void>;
}

/** Creates the metadata view over these nodes. */
export function createFleetMetadata(nodes: readonly OllamaNode[], cache: Cache, ttl: MetadataTtls): FleetMetadata {
  const flight = createSingleFlight();
  // Generations of invalidated keys: a load that was already running when its
  // key was invalidated must neither write its (stale) answer back nor be
  // joined by callers that arrive after the invalidation.
  const generations = new Map<string, number>();
  let everything = 0;
  cache.onInvalidate(({ keys, prefixes }) => {
    if (prefixes.length > 0 || generations.size > 10_000) {
      everything++;
      generations.clear();
    }
    for (const k of keys) generations.set(k, (generations.get(k) ?? 0) + 1);
  });
  const parsed = new WeakMap<Buffer, unknown>();
  const generation = (key: string): string => `${everything}.${generations.get(key) ?? 0}`;

  async function cached<T>(
    key: string,
    ttlMs: number,
    signal: AbortSignal,
    fresh: boolean,
    load: (signal: AbortSignal) => Promise<T>,
  ): Promise<T> {
    if (!fresh) {
      const hit = await cache.get(key);
      if (hit !== undefined) {
        // The memory tier hands out the same Buffer until the entry changes,
        // so the parse is done once per entry, not once per request.
        let value = parsed.get(hit);
        if (value === undefined) {
          value = JSON.parse(hit.toString("utf8")) as unknown;
          parsed.set(hit, value);
        }
        return value as T;
      }
    }
    const started = generation(key);
    const shared = flight(`${fresh ? "fresh:" : ""}${key}#${started}`, async () => {
      const value = await load(AbortSignal.timeout(ttl.upstreamTimeoutMs));
      if (generation(key) === started) await cache.set(key, Buffer.from(JSON.stringify(value)), ttlMs);
      return value;
    }) as Promise<T>;
    return untilAborted(shared, signal);
  }

  const self: FleetMetadata = {
    tags: (node, signal, fresh = false) =>
      cached(`tags:${node.name}`, ttl.tagsMs, signal, fresh, async (s) => parseTags(await node.call("GET", "/api/tags", undefined, s))),
    ps: (node, signal, fresh = false) =>
      cached(`ps:${node.name}`, ttl.psMs, signal, fresh, async (s) => parsePs(await node.call("GET", "/api/ps", undefined, s))),
    show: (node, name, digest, signal) =>
      cached(`show:${digest || `${node.name}:${canonicalModelName(name)}`}`, ttl.showMs, signal, false, async (s) =>
        parseShow(await node.call("POST", "/api/show", { model: name }, s)),
      ),
    async locate(model, signal) {
      const wanted = canonicalModelName(model);
      const look = async (fresh: boolean): Promise<Located> => {
        const located: Located["located"] = [];
        const unavailable: string[] = [];
        await Promise.all(
          nodes.map(async (node) => {
            try {
              const tag = (await self.tags(node, signal, fresh)).find((t) => canonicalModelName(t.name) === wanted);
              if (tag) located.push({ node, tag });
            } catch (e) {
              if (signal.aborted) throw e;
              unavailable.push(node.name);
            }
          }),
        );
        const order = new Map(nodes.map((n, i) => [n.name, i]));
        located.sort((a, b) => order.get(a.node.name)! - order.get(b.node.name)!);
        return { located, unavailable };
      };
      const first = await look(false);
      return first.located.length > 0 ? first : look(true);
    },
    invalidate: (node, kinds) => cache.invalidate({ keys: kinds.map((k) => `${k}:${node}`) }),
  };
  return self;
}

/** Waits for `p`, but rejects with the signal's reason as soon as it aborts. */
function untilAborted<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason as Error);
  return new Promise((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason as Error);
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener("abort", onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(e as Error);
      },
    );
  });
}
