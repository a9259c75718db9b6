/**
 * Per-principal limits (README, "Rate limits and quotas"): the `limits` section of the JSON
 * config file, and the quick setup `RATE_LIMIT_RPS` / `RATE_LIMIT_BURST`. Parsed by a pure
 * function so that config reload can parse a new file the same way and hand the result to the
 * limiter's `update`.
 */

/**
 * The limits of one principal. `undefined` = no limit of that kind. All counts are whole numbers
 * except `requestsPerSecond`, which may be fractional (0.5 = one request every 2 s).
 */
export interface LimitSet {
  /** Sustained requests per second (token bucket refill rate). */
  readonly requestsPerSecond?: number;
  /** Requests that may come at once on top of the rate (token bucket capacity). @default ceil(requestsPerSecond), at least 1 */
  readonly burst?: number;
  /** Streams (calls with a streamed response: Generate, Chat, PullModel) open at once. */
  readonly concurrentStreams?: number;
  /** Prompt + completion tokens per UTC minute (inference calls). */
  readonly tokensPerMinute?: number;
  /** Prompt + completion tokens per UTC day (inference calls). */
  readonly tokensPerDay?: number;
}

/** Every principal's limits: the default, and overrides by principal name (or client address while authentication is off). */
export interface LimitsConfig {
  /** Limits of every principal without an override. */
  readonly default: LimitSet;
  /**
   * Overrides per principal, merged field by field over `default`; a field set to `null` in the
   * file removes that limit for the principal (kept here as `null`).
   */
  readonly principals: Readonly<Record<string, LimitOverride>>;
}

/** One principal's override: a number replaces the default's, `null` lifts it, absent inherits it. */
export type LimitOverride = { readonly [K in keyof LimitSet]?: number | null };

/** No limits at all: the gateway's default. */
export const NO_LIMITS: LimitsConfig = Object.freeze({ default: Object.freeze({}), principals: Object.freeze({}) });

const FIELDS = ["requestsPerSecond", "burst", "concurrentStreams", "tokensPerMinute", "tokensPerDay"] as const;
type Field = (typeof FIELDS)[number];

/** Largest value accepted for any limit: far beyond any real limit, and safe in Redis' Lua numbers. */
const MAX_LIMIT = 1e12;
/** Longest principal name or client address accepted as a key of `principals`. */
const MAX_NAME = 256;

/** True when some principal has some limit: otherwise the limiter has nothing to do. */
export function limitsEnabled(limits: LimitsConfig): boolean {
  const any = (s: LimitOverride): boolean => FIELDS.some((f) => typeof s[f] === "number");
  return any(limits.default) || Object.values(limits.principals).some(any);
}

/**
 * The limits that apply to `name` (a principal's name, or the client address while
 * authentication is off): its override merged over the default. `burst` defaults to the rate
 * rounded up (at least 1) when a rate applies without one.
 */
export function limitsFor(limits: LimitsConfig, name: string): LimitSet {
  const override = Object.hasOwn(limits.principals, name) ? limits.principals[name] : undefined;
  const out: { -readonly [K in Field]?: number } = {};
  for (const f of FIELDS) {
    const o = override?.[f];
    const v = o === undefined ? limits.default[f] : o === null ? undefined : o;
    if (v !== undefined) out[f] = v;
  }
  if (out.requestsPerSecond === undefined) delete out.burst;
  else out.burst ??= Math.max(1, Math.ceil(out.requestsPerSecond));
  return out;
}

/**
 * Parses the `limits` section of the config file (`section`; undefined = none) and the quick
 * setup variables, appending one line per problem to `problems`. The variables set the default
 * request limit and win over the file's `default.requestsPerSecond` / `default.burst`.
 *
 * ```json
 * "limits": {
 *   "default": { "requestsPerSecond": 5, "burst": 10, "concurrentStreams": 4,
 *                "tokensPerMinute": 20000, "tokensPerDay": 1000000 },
 *   "principals": { "batch-jobs": { "requestsPerSecond": 50, "burst": 100, "tokensPerDay": null } }
 * }
 * ```
 */
export function parseLimits(
  section: unknown,
  env: { RATE_LIMIT_RPS?: string | undefined; RATE_LIMIT_BURST?: string | undefined },
  problems: string[],
): LimitsConfig {
  let fileDefault: LimitSet = {};
  const principals: Record<string, LimitOverride> = {};
  if (section !== undefined) {
    if (!isObject(section)) {
      problems.push("config file: limits must be an object with default and principals");
    } else {
      for (const k of Object.keys(section)) {
        if (k !== "default" && k !== "principals") problems.push(`config file: limits.${k} is not a known setting`);
      }
      if (section["default"] !== undefined) {
        fileDefault = toLimitSet(parseSet(section["default"], "limits.default", false, problems));
      }
      const p = section["principals"];
      if (p !== undefined && !isObject(p)) {
        problems.push("config file: limits.principals must be an object of principal name to limits");
      } else if (p !== undefined) {
        for (const [name, raw] of Object.entries(p)) {
          if (name.length === 0 || name.length > MAX_NAME) {
            problems.push(`config file: limits.principals names must be 1 to ${MAX_NAME} characters`);
            continue;
          }
          // defineProperty semantics: a principal named "__proto__" is an entry like any other.
          Object.defineProperty(principals, name, {
            value: parseSet(raw, `limits.principals.${JSON.stringify(name)}`, true, problems),
            enumerable: true,
          });
        }
      }
    }
  }
  const quick: { requestsPerSecond?: number; burst?: number } = {};
  const rps = numberVar("RATE_LIMIT_RPS", env.RATE_LIMIT_RPS, false, problems);
  const burst = numberVar("RATE_LIMIT_BURST", env.RATE_LIMIT_BURST, true, problems);
  if (rps !== undefined) quick.requestsPerSecond = rps;
  if (burst !== undefined) {
    if (rps === undefined && fileDefault.requestsPerSecond === undefined) {
      problems.push("RATE_LIMIT_BURST needs a request rate: set RATE_LIMIT_RPS (or limits.default.requestsPerSecond)");
    } else {
      quick.burst = burst;
    }
  }
  // A new RATE_LIMIT_RPS without RATE_LIMIT_BURST must not keep a burst meant for the file's rate.
  const base = rps !== undefined && burst === undefined ? withoutBurst(fileDefault) : fileDefault;
  const result: LimitsConfig = { default: { ...base, ...quick }, principals };
  if (result.default.burst !== undefined && result.default.requestsPerSecond === undefined) {
    problems.push("config file: limits.default.burst needs limits.default.requestsPerSecond");
  }
  return result;
}

function withoutBurst(s: LimitSet): LimitSet {
  const { burst: _burst, ...rest } = s;
  return rest;
}

function parseSet(raw: unknown, where: string, allowNull: boolean, problems: string[]): LimitOverride {
  if (!isObject(raw)) {
    problems.push(`config file: ${where} must be an object`);
    return {};
  }
  const out: { -readonly [K in Field]?: number | null } = {};
  for (const [k, v] of Object.entries(raw)) {
    if (!(FIELDS as readonly string[]).includes(k)) {
      problems.push(`config file: ${where}.${k} is not a known limit (${FIELDS.join(", ")})`);
      continue;
    }
    const field = k as Field;
    if (v === null && allowNull) {
      out[field] = null;
      continue;
    }
    const whole = field !== "requestsPerSecond";
    if (!validLimit(v, whole)) {
      problems.push(
        `config file: ${where}.${k} must be a ${whole ? "whole " : ""}number above 0${allowNull ? ", or null for no limit" : ""}`,
      );
      continue;
    }
    out[field] = v;
  }
  return out;
}

function toLimitSet(o: LimitOverride): LimitSet {
  const out: { -readonly [K in Field]?: number } = {};
  for (const f of FIELDS) {
    const v = o[f];
    if (typeof v === "number") out[f] = v;
  }
  return out;
}

function validLimit(v: unknown, whole: boolean): v is number {
  return typeof v === "number" && Number.isFinite(v) && v > 0 && v <= MAX_LIMIT && (!whole || Number.isInteger(v));
}

function numberVar(name: string, raw: string | undefined, whole: boolean, problems: string[]): number | undefined {
  const text = raw?.trim();
  if (text === undefined || text === "") return undefined;
  const n = Number(text);
  if (!validLimit(n, whole)) {
    problems.push(`${name}=${JSON.stringify(text)} must be a ${whole ? "whole " : ""}number above 0`);
    return undefined;
  }
  return n;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
