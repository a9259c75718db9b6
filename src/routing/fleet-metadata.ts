import type { Cache } from "../cache/cache.js";
import { createSingleFlight } from "../util/single-flight.js";
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
  /**
   * Ceiling of a shared upstream metadata call. Below it, the call stops as soon as every
   * request waiting for it has gone (each request stops waiting at its own deadline or cancel).
   * @default 10000
   */
  upstreamTimeoutMs: number;
  /**
   * Oldest /api/tags answer whose digests `locate(…, { recent: true })` may use (older ones are
   * fetched again, shared by concurrent callers): how long a model re-pulled outside the gateway
   * can keep its old digest on the Embed path, whose cache key is the digest. @default 1000
   */
  digestMaxAgeMs?: number;
}

/** How `locate` may answer. */
export interface LocateOptions {
  /**
   * Only from /api/tags answers that this process requested from the nodes at most
   * `digestMaxAgeMs` before the call (or during it), not from older cache entries. For callers
   * that key data by digest; costs at most one /api/tags per node per `digestMaxAgeMs`.
   */
  recent?: boolean;
}

/** Where a model is installed. Shared between the calls that asked: read it, never change it. */
export interface Located {
  /** Each node that has it, with its tag entry there. */
  readonly located: readonly { readonly node: OllamaNode; readonly tag: OllamaTag }[];
  /** The names of the nodes in `located`. */
  readonly names: ReadonlySet<string>;
  /** Nodes that could not be asked. */
  readonly unavailable: readonly string[];
}

/**
 * What the fleet has installed and loaded, read through the cache.
 *
 * Every method takes the request's signal and stops waiting as soon as it
 * aborts, rejecting with the signal's reason (a Redis read included).
 * Concurrent misses for one key share one upstream call (single-flight),
 * which runs under its own signal rather than the first caller's, so one
 * impatient caller cannot fail the others: it ends when every caller waiting
 * for it has gone, or at `upstreamTimeoutMs`, whichever comes first.
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
  locate(model: string, signal: AbortSignal, options?: LocateOptions): Promise<Located>;
  /**
   * Drops a node's cached tags and/or ps on every replica: here at once, elsewhere through
   * Redis — waited for until done or until `signal` aborts, after which the Redis part carries
   * on in the background (see `Cache.invalidate`). Never rejects.
   */
  invalidate(node: string, kinds: readonly ("tags" | "ps")[], signal?: AbortSignal): Promise<void>;
}

/** Most models whose located answer is remembered (`locatedInMemory`); past it, all are forgotten. */
const MAX_LOCATED = 1_024;

/** True when both lists hold the very same cache entries, in order. */
function sameEntries(a: readonly (Buffer | undefined)[], b: readonly (Buffer | undefined)[]): boolean {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Creates the metadata view over these nodes. */
export function createFleetMetadata(nodes: readonly OllamaNode[], cache: Cache, ttl: MetadataTtls): FleetMetadata {
  const flight = createSingleFlight();
  const digestMaxAgeMs = ttl.digestMaxAgeMs ?? 1000;
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
  /**
   * A cache entry's value. The memory tier hands out the same Buffer until the entry changes, so
   * the parse is done once per entry, not once per request.
   */
  const parsedEntry = (entry: Buffer): unknown => {
    let value = parsed.get(entry);
    if (value === undefined) {
      value = JSON.parse(entry.toString("utf8")) as unknown;
      parsed.set(entry, value);
    }
    return value;
  };
  // A node's tags by canonical name, built once per parsed answer (the same array is handed out
  // until the entry changes), not once per request.
  const indexes = new WeakMap<readonly OllamaTag[], Map<string, OllamaTag>>();
  const byCanonicalName = (tags: readonly OllamaTag[]): Map<string, OllamaTag> => {
    let index = indexes.get(tags);
    if (index === undefined) {
      index = new Map();
      for (const t of tags) {
        const name = canonicalModelName(t.name);
        if (!index.has(name)) index.set(name, t); // the first match, as a linear search found it
      }
      indexes.set(tags, index);
    }
    return index;
  };
  const generation = (key: string): string => `${everything}.${generations.get(key) ?? 0}`;
  /**
   * Per node: the tags this process last fetched from the node itself, when that request
   * started, and the key's generation then (an invalidation makes the record unusable).
   */
  const confirmed = new Map<string, { at: number; generation: string; tags: OllamaTag[] }>();

  async function cached<T>(
    key: string,
    ttlMs: number,
    signal: AbortSignal,
    fresh: boolean,
    load: (signal: AbortSignal) => Promise<T>,
  ): Promise<T> {
    if (!fresh) {
      const hit = await cache.get(key, signal);
      if (hit !== undefined) {
        return parsedEntry(hit) as T;
      }
    }
    const started = generation(key);
    const shared = flight(
      `${fresh ? "fresh:" : ""}${key}#${started}`,
      async (abandoned) => {
        // Its own ceiling, and stopped at once when every caller has gone.
        const value = await load(AbortSignal.any([abandoned, AbortSignal.timeout(ttl.upstreamTimeoutMs)]));
        if (generation(key) === started) await cache.set(key, Buffer.from(JSON.stringify(value)), ttlMs, abandoned);
        return value;
      },
      signal,
    );
    return shared as Promise<T>;
  }

  const fetchTags =
    (node: OllamaNode) =>
    async (s: AbortSignal): Promise<OllamaTag[]> => {
      const key = `tags:${node.name}`;
      const at = Date.now();
      const started = generation(key);
      const tags = parseTags(await node.call("GET", "/api/tags", undefined, s));
      if (generation(key) === started) confirmed.set(node.name, { at, generation: started, tags });
      return tags;
    };

  /** A node's tags from a request this process made at most `digestMaxAgeMs` ago (or now). */
  async function recentTags(node: OllamaNode, signal: AbortSignal): Promise<OllamaTag[]> {
    const since = Date.now() - digestMaxAgeMs;
    const usable = (): OllamaTag[] | undefined => {
      const c = confirmed.get(node.name);
      return c !== undefined && c.at >= since && c.generation === generation(`tags:${node.name}`) ? c.tags : undefined;
    };
    const ready = usable();
    if (ready !== undefined) return ready;
    await self.tags(node, signal, true);
    // The shared request joined may have started before `since` (a slow node), or been
    // overtaken by an invalidation: then once more, which starts a new request.
    return usable() ?? self.tags(node, signal, true);
  }

  /**
   * Per model: the last answer found in every node's cached tags, and those cache entries (the
   * memory tier hands out the same Buffer until an entry changes). Every call locates its model
   * (docs/architecture.md, "Cost per call"): while no node's entry changed, the answer is the same
   * object, found without a promise per node. Bounded: only models some node has, and at most
   * `MAX_LOCATED` of them.
   */
  const locatedByModel = new Map<string, { from: (Buffer | undefined)[]; answer: Located }>();
  const entries: (Buffer | undefined)[] = new Array<Buffer | undefined>(nodes.length);
  function locatedInMemory(wanted: string): Located | undefined {
    for (let i = 0; i < nodes.length; i++) {
      const entry = cache.peek(`tags:${nodes[i]!.name}`);
      if (entry === undefined) return undefined;
      entries[i] = entry;
    }
    const known = locatedByModel.get(wanted);
    if (known !== undefined && sameEntries(known.from, entries)) return known.answer;
    const located: Located["located"][number][] = [];
    for (let i = 0; i < nodes.length; i++) {
      const entry = entries[i]!;
      const tag = byCanonicalName(parsedEntry(entry) as OllamaTag[]).get(wanted);
      if (tag) located.push({ node: nodes[i]!, tag });
    }
    // Not there: the caller asks the nodes afresh (a model installed a moment ago).
    if (located.length === 0) return undefined;
    const answer: Located = { located, names: new Set(located.map((l) => l.node.name)), unavailable: [] };
    if (locatedByModel.size >= MAX_LOCATED) locatedByModel.clear();
    locatedByModel.set(wanted, { from: [...entries], answer });
    return answer;
  }

  const self: FleetMetadata = {
    tags: (node, signal, fresh = false) => cached(`tags:${node.name}`, ttl.tagsMs, signal, fresh, fetchTags(node)),
    ps: (node, signal, fresh = false) =>
      cached(`ps:${node.name}`, ttl.psMs, signal, fresh, async (s) =>
        parsePs(await node.call("GET", "/api/ps", undefined, s)),
      ),
    show: (node, name, digest, signal) =>
      cached(`show:${digest || `${node.name}:${canonicalModelName(name)}`}`, ttl.showMs, signal, false, async (s) =>
        parseShow(await node.call("POST", "/api/show", { model: name }, s)),
      ),
    async locate(model, signal, options = {}) {
      const wanted = canonicalModelName(model);
      if (options.recent !== true) {
        const known = locatedInMemory(wanted);
        if (known !== undefined) return known;
      }
      const look = async (fresh: boolean): Promise<Located> => {
        // Filled by node index, so the answer keeps the configuration order.
        const found: (Located["located"][number] | undefined)[] = new Array<undefined>(nodes.length);
        const unavailable: string[] = [];
        await Promise.all(
          nodes.map(async (node, i) => {
            try {
              const tags =
                options.recent === true && !fresh
                  ? await recentTags(node, signal)
                  : await self.tags(node, signal, fresh);
              const tag = byCanonicalName(tags).get(wanted);
              if (tag) found[i] = { node, tag };
            } catch (e) {
              if (signal.aborted) throw e;
              unavailable.push(node.name);
            }
          }),
        );
        const located = found.filter((l) => l !== undefined);
        return { located, names: new Set(located.map((l) => l.node.name)), unavailable };
      };
      const first = await look(false);
      return first.located.length > 0 ? first : look(true);
    },
    invalidate: (node, kinds, signal) => cache.invalidate({ keys: kinds.map((k) => `${k}:${node}`) }, signal),
  };
  return self;
}
