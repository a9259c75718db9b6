import type { ConnectError } from "@connectrpc/connect";
import { errors as joseErrors, jwtVerify } from "jose";
import type { JWTPayload } from "jose";
import type { JwtConfig } from "../config/config.js";
import { authUnavailable, expiredCredentials, invalidCredentials } from "../errors/domain-errors.js";
import type { AuthIdentity, AuthPolicy } from "./auth-policy.js";
import { KeysUnavailableError } from "./jwt-keys.js";
import type { JwtKeySource } from "./jwt-keys.js";

/** Verifies bearer JWTs into identities. */
export interface JwtVerifier {
  /**
   * The identity of a token: from the cache (synchronously) while a verified token is within its
   * expiry, else verified (a promise). Throws or rejects with UNAUTHENTICATED (or UNAVAILABLE,
   * AUTH_UNAVAILABLE, when no keys could be had at all).
   */
  verify(token: string): AuthIdentity | Promise<AuthIdentity>;
  /** Forgets every verified token (on reload: permissions or keys may have changed). */
  clear(): void;
  /** Tokens remembered. */
  readonly cached: number;
}

/** What the verifier needs. */
export interface JwtVerifierOptions {
  config: JwtConfig;
  keys: JwtKeySource;
  /** The current principals and roles (they change on reload). */
  policy: () => AuthPolicy;
  /** The clock (ms). @default Date.now */
  now?: () => number;
}

/**
 * Longest a verified token is trusted without verifying it again, whatever its `exp`: a key
 * removed from the JWKS (compromised) stops being honoured within this time.
 */
const MAX_CACHE_MS = 5 * 60 * 1000;
/** Longest token looked at. */
const MAX_TOKEN_LENGTH = 16 * 1024;
/** Roles read from one token. */
const MAX_ROLES = 64;

interface Verified {
  readonly identity: AuthIdentity;
  /** Trusted until then (ms): the token's exp plus the clock skew, at most MAX_CACHE_MS after verification. */
  readonly untilMs: number;
}

/**
 * JWT verification with `jose`: signature against the key source, `iss` and `aud` among the
 * configured values, `exp` required, `exp`/`nbf` with the clock skew, `alg` among the allowed
 * (asymmetric only). The principal's name is the configured claim, its roles the roles claim
 * (mapped to the config file's `roles`). A verified token is remembered, bounded, until it
 * expires, so a client reusing its token pays one map lookup per call, not a signature check.
 */
export function createJwtVerifier(options: JwtVerifierOptions): JwtVerifier {
  const { config, keys } = options;
  const now = options.now ?? Date.now;
  const cache = new Map<string, Verified>();
  const verifyOptions = {
    issuer: [...config.issuers],
    audience: [...config.audiences],
    algorithms: [...config.algorithms],
    clockTolerance: config.clockSkewS,
    requiredClaims: ["exp"],
    currentDate: undefined as Date | undefined,
  };

  async function verifyFresh(token: string): Promise<AuthIdentity> {
    let payload: JWTPayload;
    try {
      const nowMs = now();
      ({ payload } = await jwtVerify(token, keys.getKey, { ...verifyOptions, currentDate: new Date(nowMs) }));
    } catch (e) {
      throw jwtFailure(e);
    }
    const name = claimAt(payload, config.principalClaim);
    if (typeof name !== "string" || !/^[\x21-\x7e]{1,256}$/.test(name)) throw invalidCredentials();
    const identity = options.policy().identityFor(name, "jwt", rolesIn(claimAt(payload, config.rolesClaim)));
    if (config.cacheEntries > 0) {
      const nowMs = now();
      const untilMs = Math.min((payload.exp ?? 0) * 1000 + config.clockSkewS * 1000, nowMs + MAX_CACHE_MS);
      if (cache.size >= config.cacheEntries) cache.delete(cache.keys().next().value!);
      cache.set(token, { identity, untilMs });
    }
    return identity;
  }

  return {
    get cached() {
      return cache.size;
    },
    verify(token) {
      if (token.length > MAX_TOKEN_LENGTH) throw invalidCredentials();
      const hit = cache.get(token);
      if (hit !== undefined) {
        if (now() < hit.untilMs) return hit.identity;
        cache.delete(token);
      }
      return verifyFresh(token);
    },
    clear() {
      cache.clear();
    },
  };
}

/** What a failed verification tells the client: expired/not yet valid, keys unavailable, or just invalid. */
export function jwtFailure(e: unknown): ConnectError {
  if (e instanceof joseErrors.JWTExpired) return expiredCredentials();
  if (e instanceof joseErrors.JWTClaimValidationFailed && e.claim === "nbf") return expiredCredentials();
  if (e instanceof KeysUnavailableError) return authUnavailable(e);
  return invalidCredentials();
}

/**
 * A claim by name, or by a dotted path into nested objects when no top-level claim has that
 * name (`realm_access.roles`; a claim literally named with dots, such as a URL, is found first).
 */
export function claimAt(payload: Record<string, unknown>, name: string): unknown {
  if (name in payload) return payload[name];
  let at: unknown = payload;
  for (const part of name.split(".")) {
    if (typeof at !== "object" || at === null || Array.isArray(at)) return undefined;
    at = (at as Record<string, unknown>)[part];
  }
  return at;
}

/** Roles from a claim: an array of strings, or one space-separated string (as OAuth's `scope`). */
export function rolesIn(claim: unknown): string[] {
  const list = typeof claim === "string" ? claim.split(" ") : Array.isArray(claim) ? claim : [];
  return list.filter((r): r is string => typeof r === "string" && r !== "").slice(0, MAX_ROLES);
}
