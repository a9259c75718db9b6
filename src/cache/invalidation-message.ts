/**
 * The pub/sub message by which one replica tells the others which memory entries to drop:
 * `{"v":1,"o":<origin>,"i":<id>,"k":[keys],"p":[prefixes]}` (keys without the namespace).
 */
export interface InvalidationMessage {
  /** Id of the cache instance that sent it, so it can recognise its own echo. */
  origin: string;
  /** Sequence number within the origin, to match an echo with the call waiting for it. */
  id: number;
  keys: string[];
  prefixes: string[];
}

/** Most keys + prefixes in one message; larger invalidations are split. */
export const MAX_MESSAGE_ITEMS = 256;
/** Most bytes of one message (a single longer key still travels, alone). */
export const MAX_MESSAGE_BYTES = 16 * 1024;
/** Received messages longer than this are ignored: no replica of ours sends them. */
const MAX_ACCEPTED_BYTES = 1024 * 1024;

/** Splits keys and prefixes into bounded groups, one per message. */
export function splitInvalidation(
  keys: readonly string[],
  prefixes: readonly string[],
  maxItems = MAX_MESSAGE_ITEMS,
  maxBytes = MAX_MESSAGE_BYTES,
): { keys: string[]; prefixes: string[] }[] {
  const groups: { keys: string[]; prefixes: string[] }[] = [];
  let current = { keys: [] as string[], prefixes: [] as string[] };
  let items = 0;
  let bytes = 0;
  const add = (item: string, into: "keys" | "prefixes"): void => {
    const size = JSON.stringify(item).length + 1;
    if (items > 0 && (items + 1 > maxItems || bytes + size > maxBytes)) {
      groups.push(current);
      current = { keys: [], prefixes: [] };
      items = 0;
      bytes = 0;
    }
    current[into].push(item);
    items++;
    bytes += size;
  };
  for (const k of keys) add(k, "keys");
  for (const p of prefixes) add(p, "prefixes");
  if (items > 0) groups.push(current);
  return groups;
}

/** The wire form of one message. */
export function encodeInvalidation(m: InvalidationMessage): string {
  return JSON.stringify({ v: 1, o: m.origin, i: m.id, k: m.keys, p: m.prefixes });
}

function stringArray(v: unknown): string[] | undefined {
  if (!Array.isArray(v)) return undefined;
  const out: string[] = [];
  for (const item of v) {
    if (typeof item !== "string") return undefined;
    out.push(item);
  }
  return out;
}

/** Parses a received message; undefined for anything malformed or oversized (ignored, never thrown). */
export function decodeInvalidation(text: string): InvalidationMessage | undefined {
  if (text.length > MAX_ACCEPTED_BYTES) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof parsed !== "object" || parsed === null) return undefined;
  const o: Record<string, unknown> = { ...parsed };
  if (o["v"] !== 1 || typeof o["o"] !== "string" || typeof o["i"] !== "number") return undefined;
  const keys = stringArray(o["k"]);
  const prefixes = stringArray(o["p"]);
  if (keys === undefined || prefixes === undefined) return undefined;
  return { origin: o["o"], id: o["i"], keys, prefixes };
}
