/**
 * Ollama matches model names case-insensitively, with `:latest` as the
 * default tag and `registry.ollama.ai/library/` as the default registry and
 * namespace. This gives every spelling of one model the same key, so cache
 * entries and routing decisions do not split by spelling.
 */
export function canonicalModelName(name: string): string {
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
