import { expandMethodGrant, SERVICE_PACKAGE } from "../config/auth-file.js";
import type { Grants, PartialGrants } from "../config/auth-file.js";
import { canonicalModelName } from "../upstream/model-name.js";

/**
 * A principal's permissions, compiled for per-call checks: a set lookup per method, a cached
 * answer per model name. Built once per principal (and per role combination), not per call.
 */
export interface CompiledGrants {
  /** May call `path` (`package.Service/Method`, as `${method.parent.typeName}/${method.name}`). */
  methodAllowed(path: string): boolean;
  /** May use `model`, in any spelling (`llama3.2`, `llama3.2:latest`, `library/llama3.2`...). */
  modelAllowed(model: string): boolean;
  /** Highest `x-priority` allowed. */
  readonly maxPriority: number;
}

/** Model answers remembered per principal; past this the memo starts again (a bound, not an LRU). */
const MODEL_MEMO_ENTRIES = 1024;

/**
 * The grants that apply to a principal: its own fields (each missing one from `defaults`), then
 * the union with each of `roles`' grants (models and methods added, the highest maxPriority).
 */
export function effectiveGrants(own: PartialGrants, defaults: Grants, roles: readonly PartialGrants[]): Grants {
  let models = [...(own.models ?? defaults.models)];
  let methods = [...(own.methods ?? defaults.methods)];
  let maxPriority = own.maxPriority ?? defaults.maxPriority;
  for (const r of roles) {
    models = [...models, ...(r.models ?? [])];
    methods = [...methods, ...(r.methods ?? [])];
    if (r.maxPriority !== undefined) maxPriority = Math.max(maxPriority, r.maxPriority);
  }
  return { models: [...new Set(models)], methods: [...new Set(methods)], maxPriority };
}

/** Compiles grants (already validated by the config parser; unknown method names grant nothing). */
export function compileGrants(grants: Grants): CompiledGrants {
  const methods = new Set<string>();
  for (const entry of grants.methods) {
    for (const m of expandMethodGrant(entry) ?? []) methods.add(`${SERVICE_PACKAGE}.${m}`);
  }
  const exact = new Set<string>();
  const globs: RegExp[] = [];
  let any = false;
  for (const pattern of grants.models) {
    if (pattern === "*") any = true;
    else if (pattern.includes("*")) globs.push(globRegExp(pattern));
    else exact.add(canonicalModelName(pattern));
  }
  const memo = new Map<string, boolean>();
  const decide = (model: string): boolean => {
    const canonical = canonicalModelName(model);
    if (exact.has(canonical)) return true;
    // A glob sees the canonical name and the name as written without its default tag, so
    // `llama3*` and `llama3.2:*` both match `llama3.2` (= `llama3.2:latest`).
    const untagged = canonical.endsWith(":latest") ? canonical.slice(0, -":latest".length) : canonical;
    return globs.some((g) => g.test(canonical) || g.test(untagged));
  };
  return {
    maxPriority: grants.maxPriority,
    methodAllowed: (path) => methods.has(path),
    modelAllowed(model) {
      if (any) return true;
      let allowed = memo.get(model);
      if (allowed === undefined) {
        allowed = decide(model);
        if (memo.size >= MODEL_MEMO_ENTRIES) memo.clear();
        memo.set(model, allowed);
      }
      return allowed;
    },
  };
}

/**
 * A model glob as a RegExp over canonical names: `*` is any run of characters, everything else
 * literal; the registry prefixes Ollama drops (`registry.ollama.ai/library/`...) are dropped from
 * the pattern too, and case is ignored as Ollama ignores it.
 */
export function globRegExp(pattern: string): RegExp {
  let p = pattern.trim().toLowerCase();
  for (const prefix of ["registry.ollama.ai/library/", "registry.ollama.ai/", "library/"]) {
    if (p.startsWith(prefix)) {
      p = p.slice(prefix.length);
      break;
    }
  }
  const body = p
    .split("*")
    .map((part) => part.replace(/[.+?^${}()|[\]\\/]/g, "\\$&"))
    .join(".*");
  return new RegExp(`^${body}$`);
}
