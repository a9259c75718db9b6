import type { TLSSocket } from "node:tls";
import type { AuthFileConfig } from "../config/auth-file.js";
import type { AuthConfig, AuthMode } from "../config/config.js";
import { expiredCredentials, invalidCredentials, missingCredentials } from "../errors/domain-errors.js";
import { compileAuthPolicy } from "./auth-policy.js";
import type { AuthIdentity, AuthPolicy } from "./auth-policy.js";
import { certificateIdentity } from "./client-certificate.js";
import { presentedCredential } from "./credentials.js";
import { fileJwtKeys, remoteJwks } from "./jwt-keys.js";
import type { JwtKeySource } from "./jwt-keys.js";
import { createJwtVerifier } from "./jwt-verifier.js";
import type { JwtVerifier } from "./jwt-verifier.js";

/** Turns a call's credentials into an identity, with the current principals. */
export interface Authenticator {
  /** The accepted credentials (never empty: an authenticator exists only when authentication is on). */
  readonly modes: readonly AuthMode[];
  /** Reflection needs credentials too. */
  readonly restrictReflection: boolean;
  /**
   * The caller's identity: synchronous for API keys, certificates and cached tokens; a promise
   * for a token seen for the first time. Throws (or rejects with) UNAUTHENTICATED:
   * MISSING_CREDENTIALS, INVALID_CREDENTIALS or EXPIRED_CREDENTIALS.
   */
  authenticate(headers: Headers, tls: TLSSocket | undefined): AuthIdentity | Promise<AuthIdentity>;
  /** Applies a new version of the principals (reload); verified tokens are forgotten. */
  apply(file: AuthFileConfig): void;
  /** Re-reads the JWT key file, or refetches the JWKS (reload). Rejects, keeping the old keys, when unusable. */
  reloadKeys(): Promise<void>;
  /** The principals and keys in force (for log lines). */
  readonly policy: AuthPolicy;
  /** Stops background work (the JWKS refresh). */
  close(): void;
}

/** What the authenticator needs besides the configuration. */
export interface AuthenticatorOptions {
  /** Told about JWKS fetches (see `RemoteJwksOptions.onFetch`). */
  onJwksFetch?: (outcome: { ok: true; keys: number } | { ok: false; error: string }) => void;
  /** The clock (ms). @default Date.now */
  now?: () => number;
}

/**
 * The authentication mechanism for the configured modes. Which credential is read:
 * `authorization: Bearer` or `x-api-key` when present — a JWT (by its shape) when jwt is on,
 * else an API key when api-key is on; without header credentials, the client certificate when
 * mtls is on. Per call, an API key costs one SHA-256 and a map lookup; a token seen before, one
 * map lookup; a certificate, one WeakMap lookup per call (decided once per connection).
 */
export function createAuthenticator(config: AuthConfig, options: AuthenticatorOptions = {}): Authenticator {
  const now = options.now ?? Date.now;
  const modes = config.modes;
  const apiKeys = modes.includes("api-key");
  const mtls = modes.includes("mtls");
  let policy = compileAuthPolicy(config.file);
  let keys: JwtKeySource | undefined;
  let jwt: JwtVerifier | undefined;
  if (config.jwt !== undefined) {
    keys =
      config.jwt.jwksUrl !== undefined
        ? remoteJwks({
            url: config.jwt.jwksUrl,
            cooldownMs: config.jwt.jwksCooldownMs,
            maxAgeMs: config.jwt.jwksMaxAgeMs,
            onFetch: options.onJwksFetch,
            now,
          })
        : fileJwtKeys(config.jwt.keyFile!);
    keys.start();
    jwt = createJwtVerifier({ config: config.jwt, keys, policy: () => policy, now });
  }

  function byKey(key: string): AuthIdentity {
    const match = policy.matchKey(key, now());
    if (match.ok) return match.owner;
    // A disabled key reads like an unknown one; only the holder of an expired key learns it expired.
    throw match.why === "expired" ? expiredCredentials() : invalidCredentials();
  }

  return {
    modes,
    restrictReflection: config.restrictReflection,
    get policy() {
      return policy;
    },
    authenticate(headers, tls) {
      const presented = presentedCredential(headers);
      if (presented.kind === "bearer") {
        if (presented.looksLikeJwt && jwt !== undefined) return jwt.verify(presented.value);
        if (apiKeys) return byKey(presented.value);
        throw invalidCredentials();
      }
      if (presented.kind === "malformed") throw invalidCredentials();
      if (mtls && tls !== undefined) {
        const cert = certificateIdentity(tls);
        if (cert.ok) return policy.identityFor(cert.name, "mtls", []);
        if (cert.why !== "none") throw invalidCredentials();
      }
      throw missingCredentials();
    },
    apply(file) {
      policy = compileAuthPolicy(file);
      jwt?.clear();
    },
    async reloadKeys() {
      await keys?.reload();
      jwt?.clear();
    },
    close() {
      keys?.close();
    },
  };
}
