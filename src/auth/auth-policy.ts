import type { AuthFileConfig, PartialGrants, PrincipalEntry } from "../config/auth-file.js";
import { createKeyIndex } from "./api-keys.js";
import type { KeyMatch } from "./api-keys.js";
import { compileGrants, effectiveGrants } from "./grants.js";
import type { CompiledGrants } from "./grants.js";

/** How an identity was established. */
export type AuthVia = "api-key" | "jwt" | "mtls";

/**
 * An authenticated caller: its name and how it was established (the shape of the pipeline's
 * `Principal`, so the same object serves as one), with its compiled permissions. Made once per
 * key, token or certificate identity, never per call.
 */
export interface AuthIdentity {
  /** Stable name: the principal's, the token's principal claim, the certificate's SPIFFE ID or CN. */
  readonly name: string;
  readonly via: AuthVia;
  /** What it may call and use. */
  readonly grants: CompiledGrants;
}

/** The principals of one version of the config, compiled; replaced whole on reload. */
export interface AuthPolicy {
  /** The identity an API key belongs to (see `KeyIndex.match`). */
  matchKey(key: string, nowMs: number): KeyMatch<AuthIdentity>;
  /**
   * The identity of a certificate or token principal: the config file's principal of that name
   * (its grants), plus `roles` (a token's roles claim; names not in `roles` are ignored), or the
   * default permissions when the file does not name it.
   */
  identityFor(name: string, via: "jwt" | "mtls", roles: readonly string[]): AuthIdentity;
  /** API keys held (for the start and reload log lines). */
  readonly keys: number;
  /** Principals named. */
  readonly principals: number;
}

/** Identities remembered for certificate and token principals; past this the memo starts again. */
const IDENTITY_MEMO_ENTRIES = 10_000;

/** Compiles the principals, keys and roles of a config (pure: no clock, no I/O). */
export function compileAuthPolicy(file: AuthFileConfig): AuthPolicy {
  const byName = new Map<string, PrincipalEntry>(file.principals.map((p) => [p.name, p]));
  const rolesOf = (names: readonly string[]): PartialGrants[] =>
    names.map((r) => file.roles.get(r)).filter((g): g is PartialGrants => g !== undefined);
  const keyIdentities = new Map<string, AuthIdentity>();
  const keys = file.principals.flatMap((p) => {
    let identity = keyIdentities.get(p.name);
    if (identity === undefined && p.keys.length > 0) {
      identity = {
        name: p.name,
        via: "api-key",
        grants: compileGrants(effectiveGrants(p.grants, file.defaultGrants, rolesOf(p.roles))),
      };
      keyIdentities.set(p.name, identity);
    }
    return p.keys.map((k) => ({ ...k, owner: identity! }));
  });
  const index = createKeyIndex(keys);
  const memo = new Map<string, AuthIdentity>();
  return {
    keys: index.size,
    principals: byName.size,
    matchKey: (key, nowMs) => index.match(key, nowMs),
    identityFor(name, via, roles) {
      const memoKey = roles.length === 0 ? `${via}\u0000${name}` : `${via}\u0000${name}\u0000${roles.join("\u0000")}`;
      let identity = memo.get(memoKey);
      if (identity === undefined) {
        const entry = byName.get(name);
        const grants = effectiveGrants(entry?.grants ?? {}, file.defaultGrants, [
          ...rolesOf(entry?.roles ?? []),
          ...rolesOf(roles),
        ]);
        identity = { name, via, grants: compileGrants(grants) };
        if (memo.size >= IDENTITY_MEMO_ENTRIES) memo.clear();
        memo.set(memoKey, identity);
      }
      return identity;
    },
  };
}
