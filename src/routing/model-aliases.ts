import { createHash } from "node:crypto";
import { ConnectError } from "@connectrpc/connect";
import { errorReason } from "../errors/gateway-error.js";
import { canonicalModelName } from "../upstream/model-name.js";
import type { AliasMap, AliasTarget, ModelAlias } from "../config/config.js";

export type { AliasMap, AliasTarget, ModelAlias } from "../config/config.js";

/** An empty alias map: every model name is served as written. */
export const NO_ALIASES: AliasMap = new Map();

/** Why a fallback model served the call: the `x-fallback-reason` header and the log line's `fallbackReason`. */
export type FallbackReason =
  | "queue-full"
  | "deadline-too-short"
  | "queue-wait-too-long"
  | "no-healthy-node"
  | "model-not-found";

/**
 * The admission errors (by their reason, README "Errors") after which the next model of an alias
 * may be tried: the model could not be admitted (its queue is full, its expected or actual wait is
 * longer than the deadline or the queue's budget), or no healthy node has it (none installed it,
 * or every node that has it failed the call before it sent anything). Everything else (the
 * caller's own errors, cancellation, limits) is final.
 */
const FALLBACK_REASONS: Readonly<Record<string, FallbackReason>> = {
  QUEUE_FULL: "queue-full",
  DEADLINE_TOO_SHORT: "deadline-too-short",
  QUEUE_WAIT_TOO_LONG: "queue-wait-too-long",
  UPSTREAM_UNAVAILABLE: "no-healthy-node",
  MODEL_NOT_FOUND: "model-not-found",
};

/** The fallback reason an admission error allows, or undefined when it does not allow one. */
export function fallbackReason(error: unknown): FallbackReason | undefined {
  const reason = error instanceof ConnectError ? errorReason(error) : undefined;
  return reason === undefined ? undefined : FALLBACK_REASONS[reason];
}

/** How one call is served: the models to try, in order, and whether the name was an alias. */
export interface ModelRoute {
  /** The name the client wrote. */
  readonly requested: string;
  /** The alias resolved, when the name is one. */
  readonly alias: ModelAlias | undefined;
  /** The models to try in order: the picked target, then the fallbacks (each once). At least one. */
  readonly models: readonly string[];
}

/**
 * Resolves the model a client named. A name that is no alias is served as written (no fallbacks).
 * An alias picks one target by weight: the same session key always picks the same target (a
 * stable hash of alias and key), so a conversation stays on one model; without a key the pick is
 * uniformly random (`random`, in [0, 1)). `allowed` (the caller's permissions) removes targets and
 * fallbacks the caller may not use before the pick; when none is left, `models` is empty.
 */
export function resolveModel(
  requested: string,
  aliases: AliasMap,
  sessionKey: string | undefined,
  random: () => number,
  allowed: (model: string) => boolean = () => true,
): ModelRoute {
  const alias = aliases.get(canonicalModelName(requested));
  if (alias === undefined) return { requested, alias, models: [requested] };
  const usable = usableAlias(alias, allowed);
  const picked = pickTarget(
    usable.targets,
    sessionKey === undefined ? random() : stableUnit(`${alias.name}\u0000${sessionKey}`),
  );
  const models: string[] = [];
  for (const m of [...(picked === undefined ? [] : [picked]), ...usable.fallbacks]) {
    if (!models.some((x) => canonicalModelName(x) === canonicalModelName(m))) models.push(m);
  }
  return { requested, alias, models };
}

/**
 * The part of an alias a caller may be served by: its targets and fallbacks without those
 * `allowed` (the caller's permissions) excludes. The one rule behind calls (`resolveModel`),
 * ListModels and GetModel (README, "Model aliases"), so an alias never shows a model it would
 * not serve. When nothing is left the caller may not use the alias at all.
 */
export function usableAlias(alias: ModelAlias, allowed: (model: string) => boolean): ModelAlias {
  return {
    name: alias.name,
    targets: alias.targets.filter((t) => allowed(t.model)),
    fallbacks: alias.fallbacks.filter((m) => allowed(m)),
  };
}

/** Whether a caller may use an alias at all: its name aside, some target or fallback is left to serve it. */
export function aliasUsable(usable: ModelAlias): boolean {
  return usable.targets.length > 0 || usable.fallbacks.length > 0;
}

/** The target whose cumulative weight interval holds `u` (in [0, 1)); undefined when there is none. */
export function pickTarget(targets: readonly AliasTarget[], u: number): string | undefined {
  const total = targets.reduce((s, t) => s + t.weight, 0);
  if (targets.length === 0 || total <= 0) return undefined;
  let point = Math.min(Math.max(u, 0), 1) * total;
  for (const t of targets) {
    if (point < t.weight) return t.model;
    point -= t.weight;
  }
  return targets[targets.length - 1]!.model;
}

/** A number in [0, 1) that depends only on `key` (the first 48 bits of its SHA-256). */
export function stableUnit(key: string): number {
  const digest = createHash("sha256").update(key).digest();
  return digest.readUIntBE(0, 6) / 2 ** 48;
}
