/**
 * Ollama matches model names case-insensitively, with `:latest` as the
 * default tag and `registry.ollama.ai/library/` as the default registry and
 * namespace. This gives every spelling of one model the same key, so cache
 * entries and routing decisions do not split by spelling.
 */
export function canonicalModelName(name: string): string {
  // Asked several times per call (routing, metrics, cache keys) for the same few names: the
  // answer is remembered, so a call gets the one string, already hashed for every Map it keys,
  // instead of building new ones (docs/architecture.md, "Cost per call"). Client-chosen, so bounded.
  let known = canonical.get(name);
  if (known === undefined) {
    known = canonicalize(name);
    if (name.length <= MAX_REMEMBERED_LENGTH) {
      if (canonical.size >= MAX_REMEMBERED) canonical.clear();
      canonical.set(name, known);
    }
  }
  return known;
}

/** Spellings remembered by `canonicalModelName`; past this many, all are forgotten at once. */
const MAX_REMEMBERED = 1_024;
/** Longer spellings are canonicalised each time, not remembered. */
const MAX_REMEMBERED_LENGTH = 256;
const canonical = new Map<string, string>();

function canonicalize(name: string): string {
  let n = name.trim().toLowerCase();
  for (const prefix of ["registry.ollama.ai/library/", "registry.ollama.ai/", "library/"]) {
    if (n.startsWith(prefix)) {
      n = n.slice(prefix.length);
      break;
    }
  }
  const slash = n.lastIndexOf("/");
  if (!n.slice(slash + 1).includes(":")) n += ":latest";
  return n;
}
