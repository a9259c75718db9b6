/**
 * Ollama model names (`[host/][namespace/]model[:tag]`), parsed and validated like Go's
 * `types/model.ParseName`, so matching is case-insensitive and `:latest` is the default tag.
 */

/** A fully-qualified model name with defaults applied. */
export interface ModelName {
  readonly host: string;
  readonly namespace: string;
  readonly model: string;
  readonly tag: string;
}

/** Ollama's default registry host, used in capability error messages. */
export const DEFAULT_HOST = "registry.ollama.ai";
/** Ollama's default namespace. */
export const DEFAULT_NAMESPACE = "library";
/** Ollama's default tag. */
export const DEFAULT_TAG = "latest";

type PartKind = "host" | "namespace" | "model" | "tag";

/** Parses and validates a name; returns undefined when Ollama would call it invalid. */
export function parseModelName(raw: string): ModelName | undefined {
  let s = raw;
  let tag: string | undefined;
  let model: string | undefined;
  let namespace: string | undefined;
  let host: string | undefined;
  if (s.lastIndexOf(":") > s.lastIndexOf("/")) {
    const i = s.lastIndexOf(":");
    tag = s.slice(i + 1);
    s = s.slice(0, i);
  }
  const slash1 = s.lastIndexOf("/");
  if (slash1 < 0) {
    model = s;
  } else {
    model = s.slice(slash1 + 1);
    s = s.slice(0, slash1);
    const slash2 = s.lastIndexOf("/");
    if (slash2 < 0) {
      namespace = s;
    } else {
      namespace = s.slice(slash2 + 1);
      s = s.slice(0, slash2);
      const scheme = s.indexOf("://");
      host = scheme >= 0 ? s.slice(scheme + 3) : s;
    }
  }
  const name: ModelName = {
    host: host ?? DEFAULT_HOST,
    namespace: namespace ?? DEFAULT_NAMESPACE,
    model,
    tag: tag ?? DEFAULT_TAG,
  };
  const valid =
    isValidPart("host", name.host) &&
    isValidPart("namespace", name.namespace) &&
    isValidPart("model", name.model) &&
    isValidPart("tag", name.tag);
  return valid ? name : undefined;
}

/** `registry.ollama.ai/library/llama3.2:latest`: the form Ollama uses in capability errors. */
export function fullName(name: ModelName): string {
  return `${name.host}/${name.namespace}/${name.model}:${name.tag}`;
}

/** Shortest unambiguous display form (`llama3.2:latest`, `me/mine:v1`), as /api/tags prints it. */
export function displayName(name: ModelName): string {
  if (name.host === DEFAULT_HOST) {
    if (name.namespace === DEFAULT_NAMESPACE) return `${name.model}:${name.tag}`;
    return `${name.namespace}/${name.model}:${name.tag}`;
  }
  return fullName(name);
}

/** Case-insensitive identity key of a name. */
export function nameKey(name: ModelName): string {
  return fullName(name).toLowerCase();
}

/** Key for a raw name string, or undefined when the name is invalid. */
export function keyOf(raw: string): string | undefined {
  const name = parseModelName(raw);
  return name ? nameKey(name) : undefined;
}

function isValidPart(kind: PartKind, part: string): boolean {
  const max = kind === "host" ? 350 : 80;
  if (part.length < 1 || part.length > max) return false;
  for (let i = 0; i < part.length; i++) {
    const ch = part.charAt(i);
    const alnum = /[A-Za-z0-9_]/.test(ch);
    if (i === 0) {
      if (!alnum) return false;
      continue;
    }
    if (alnum || ch === "-") continue;
    if (ch === "." && kind !== "namespace") continue;
    if (ch === ":" && kind === "host") continue;
    return false;
  }
  return true;
}
