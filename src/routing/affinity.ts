import * as crypto from "node:crypto";

/**
 * Remembers which node served a session (or a conversation prefix) so the
 * next request of that session goes back there while the node is healthy:
 * Ollama can then reuse its prompt cache instead of evaluating the whole
 * conversation again. Bounded (LRU by insertion refresh) and expiring.
 */
export interface AffinityTable {
  /** The node last used for `key`, if still fresh. */
  get(key: string): string | undefined;
  /** Records that `key` was served by `node`. */
  set(key: string, node: string): void;
}

/** Creates a table of at most `max` keys that forget after `ttlMs`. */
export function createAffinityTable(max = 10_000, ttlMs = 10 * 60 * 1000): AffinityTable {
  const entries = new Map<string, { node: string; at: number }>();
  return {
    get(key) {
      const e = entries.get(key);
      if (e === undefined) return undefined;
      if (Date.now() - e.at > ttlMs) {
        entries.delete(key);
        return undefined;
      }
      return e.node;
    },
    set(key, node) {
      entries.delete(key);
      entries.set(key, { node, at: Date.now() });
      if (entries.size > max) entries.delete(entries.keys().next().value!);
    },
  };
}

// How much of a conversation identifies it: enough to tell conversations
// apart, little enough that a growing conversation keeps its key.
const PREFIX_BYTES = 512;

/**
 * The affinity key of a request: an explicit session key when the client
 * sent one, else a hash of the model and the start of the conversation.
 */
export function affinityKey(model: string, sessionKey: string | undefined, prefix: string): string | undefined {
  if (sessionKey) return `s:${model}:${sessionKey.slice(0, 256)}`;
  if (prefix === "") return undefined;
  return `p:${model}:${sha1(prefix.slice(0, PREFIX_BYTES))}`;
}

/**
 * SHA-1, base64url. Node's one-shot `crypto.hash` (20.12+) where it exists: no Hash object per
 * call, and this runs for every Generate and Chat; `createHash` on older Node 20 (same digest).
 */
const sha1: (text: string) => string =
  typeof crypto.hash === "function"
    ? (text) => crypto.hash("sha1", text, "base64url")
    : (text) => crypto.createHash("sha1").update(text).digest("base64url");
