import { NOT_READY } from "../redis/redis-link.js";
import type { LinkUser, RedisCommands } from "../redis/redis-link.js";

/** How a Redis-side deletion went. */
export interface RedisDeleteResult {
  /** Every command succeeded (when false, the deletion should be replayed later). */
  ok: boolean;
  /** Commands that failed or timed out (not counting ones skipped while disconnected). */
  errors: number;
  /** The time budget ran out before every prefix was scanned; the rest expires by TTL. */
  truncated: boolean;
}

/** Keys per UNLINK and per SCAN page: bounded work per command. */
const BATCH = 500;

/** `prefix` as a SCAN MATCH pattern that matches it literally, then anything. */
export function prefixPattern(prefix: string): string {
  return `${prefix.replace(/[*?[\]\\]/g, "\\$&")}*`;
}

/**
 * Deletes namespaced keys and every key under namespaced prefixes in Redis: UNLINK in batches
 * (one key per command in a cluster, where keys of a batch may live in different slots —
 * auto-pipelining still sends them together), SCAN MATCH … COUNT page by page on every master.
 * Each command is bounded by the link's timeout and the whole run by `budgetMs`.
 */
export async function deleteInRedis(
  link: LinkUser,
  namespace: string,
  keys: readonly string[],
  prefixes: readonly string[],
  budgetMs: number,
): Promise<RedisDeleteResult> {
  const deadline = Date.now() + budgetMs;
  const result: RedisDeleteResult = { ok: true, errors: 0, truncated: false };
  const unlink = async (fullKeys: readonly string[]): Promise<boolean> => {
    for (let i = 0; i < fullKeys.length; i += BATCH) {
      const batch = fullKeys.slice(i, i + BATCH);
      const op = (r: RedisCommands): Promise<unknown> =>
        link.cluster ? Promise.all(batch.map((k) => r.unlink(k))) : r.unlink(...batch);
      const out = await link.run(op);
      if (!out.ok) {
        if (out.error !== NOT_READY) result.errors++;
        return false;
      }
    }
    return true;
  };

  if (!(await unlink(keys.map((k) => namespace + k)))) return { ...result, ok: false };
  for (const prefix of prefixes) {
    const match = prefixPattern(namespace + prefix);
    for (const node of link.scanNodes()) {
      let cursor = "0";
      do {
        if (Date.now() > deadline) return { ...result, truncated: true };
        const page = await link.run(() => node.scan(cursor, "MATCH", match, "COUNT", BATCH));
        if (!page.ok) {
          if (page.error !== NOT_READY) result.errors++;
          return { ...result, ok: false };
        }
        [cursor] = page.value;
        if (!(await unlink(page.value[1]))) return { ...result, ok: false };
      } while (cursor !== "0");
    }
  }
  return result;
}
