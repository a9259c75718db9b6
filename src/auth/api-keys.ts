import { createHash, randomBytes, timingSafeEqual } from "node:crypto";

/**
 * Every key the gateway makes starts with this, so secret scanners and people can tell one from
 * other tokens, and a JWT (which starts `eyJ`) is never mistaken for one.
 */
export const API_KEY_PREFIX = "ogw_";

/** A new API key: the prefix and 32 random bytes (256 bits), base64url. Shown once, never stored. */
export function newApiKey(): string {
  return `${API_KEY_PREFIX}${randomBytes(32).toString("base64url")}`;
}

/** The lowercase hex SHA-256 of a key: what the config file and API_KEYS hold instead of the key. */
export function hashApiKey(key: string): string {
  return createHash("sha256").update(key, "utf8").digest("hex");
}

/** An API key as the index holds it: its hash, its owner, expiry and state. */
export interface IndexedKey<Owner> {
  /** SHA-256 of the key, raw bytes (compared in constant time). */
  readonly digest: Buffer;
  readonly owner: Owner;
  readonly expiresAtMs: number | undefined;
  readonly disabled: boolean;
}

/** The answer for one presented key. */
export type KeyMatch<Owner> =
  | { readonly ok: true; readonly owner: Owner }
  | { readonly ok: false; readonly why: "unknown" | "disabled" | "expired" };

/** Finds the owner of a presented key. */
export interface KeyIndex<Owner> {
  /** One SHA-256 of `key`, one map lookup, one constant-time comparison of the two digests. */
  match(key: string, nowMs: number): KeyMatch<Owner>;
  /** Keys held. */
  readonly size: number;
}

/** The longest key looked at; longer ones are refused unhashed (a client cannot make the gateway hash megabytes). */
const MAX_KEY_LENGTH = 512;

/**
 * Indexes keys by their hash. The map is keyed by the hex digest of the presented key, so the
 * lookup's timing depends only on a hash the caller cannot steer towards a stored one; the
 * found entry is still compared with `timingSafeEqual`, so the decision never rests on an
 * early-exit string comparison.
 */
export function createKeyIndex<Owner>(
  keys: readonly { sha256: string; owner: Owner; expiresAtMs: number | undefined; disabled: boolean }[],
): KeyIndex<Owner> {
  const byHash = new Map<string, IndexedKey<Owner>>();
  for (const k of keys) {
    byHash.set(k.sha256, {
      digest: Buffer.from(k.sha256, "hex"),
      owner: k.owner,
      expiresAtMs: k.expiresAtMs,
      disabled: k.disabled,
    });
  }
  return {
    size: byHash.size,
    match(key, nowMs) {
      if (key.length === 0 || key.length > MAX_KEY_LENGTH) return { ok: false, why: "unknown" };
      const digest = createHash("sha256").update(key, "utf8").digest();
      const entry = byHash.get(digest.toString("hex"));
      if (entry === undefined || !timingSafeEqual(entry.digest, digest)) return { ok: false, why: "unknown" };
      if (entry.disabled) return { ok: false, why: "disabled" };
      if (entry.expiresAtMs !== undefined && nowMs >= entry.expiresAtMs) return { ok: false, why: "expired" };
      return { ok: true, owner: entry.owner };
    },
  };
}
