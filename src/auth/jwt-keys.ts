import { createPublicKey } from "node:crypto";
import type { KeyObject } from "node:crypto";
import { readFileSync } from "node:fs";
import { createLocalJWKSet, errors as joseErrors } from "jose";
import type { JSONWebKeySet, JWSHeaderParameters, FlattenedJWSInput, JWTVerifyGetKey } from "jose";

/** Where JWT verification keys come from: a JWKS URL (cached, refreshed) or a key file (re-read on reload). */
export interface JwtKeySource {
  /** The key resolver `jwtVerify` calls. Rejects with jose's `JWKSNoMatchingKey` for an unknown `kid`. */
  readonly getKey: JWTVerifyGetKey;
  /** Starts the first fetch (JWKS) so the first call does not wait for it. */
  start(): void;
  /** Re-reads the key file; a JWKS source refetches. Rejects (keeping the old keys) when the new ones are unusable. */
  reload(): Promise<void>;
  /** Stops background work. */
  close(): void;
}

/** The key source could not produce keys at all (JWKS unreachable, never fetched): not the caller's fault. */
export class KeysUnavailableError extends Error {
  override readonly name = "KeysUnavailableError";
}

/** What a remote JWKS source needs. */
export interface RemoteJwksOptions {
  /** The JWKS URL. */
  url: string;
  /** Least time between two fetches triggered by unknown `kid`s (the first one is always allowed). */
  cooldownMs: number;
  /** After this age the set is refetched in the background; the old keys serve meanwhile. */
  maxAgeMs: number;
  /** One fetch's time limit. @default 5000 */
  timeoutMs?: number;
  /** Largest JWKS accepted. @default 1 MiB */
  maxBytes?: number;
  /** Told about every fetch that succeeds, and about the first failure of a streak. */
  onFetch?: (outcome: { ok: true; keys: number } | { ok: false; error: string }) => void;
  /** The clock (ms). @default Date.now */
  now?: () => number;
}

/** When an unknown `kid` may trigger a fetch: never more than one per cooldown (pure policy). */
export function mayRefetchForUnknownKid(
  lastFetchStartMs: number | undefined,
  nowMs: number,
  cooldownMs: number,
): boolean {
  return lastFetchStartMs === undefined || nowMs - lastFetchStartMs >= cooldownMs;
}

/**
 * A JWKS fetched from the issuer and kept: one fetch at a time (concurrent callers share it);
 * refetched in the background once older than `maxAgeMs`, the old keys serving meanwhile and
 * after a failed fetch (an issuer outage does not lock every caller out); refetched at once for
 * a token whose `kid` is unknown (key rotation), but at most once per `cooldownMs`, so a flood
 * of tokens with random `kid`s costs the issuer one request per cooldown.
 */
export function remoteJwks(options: RemoteJwksOptions): JwtKeySource {
  const now = options.now ?? Date.now;
  const timeoutMs = options.timeoutMs ?? 5_000;
  const maxBytes = options.maxBytes ?? 1024 * 1024;
  let local: ReturnType<typeof createLocalJWKSet> | undefined;
  let fetchedAtMs = 0;
  let lastStartMs: number | undefined;
  let inflight: Promise<void> | undefined;
  let failing = false;
  let closed = false;

  const fetchOnce = (): Promise<void> => {
    inflight ??= (async () => {
      lastStartMs = now();
      try {
        const jwks = await fetchJwks(options.url, timeoutMs, maxBytes);
        local = createLocalJWKSet(jwks);
        fetchedAtMs = now();
        failing = false;
        options.onFetch?.({ ok: true, keys: jwks.keys.length });
      } catch (e) {
        if (!failing) options.onFetch?.({ ok: false, error: e instanceof Error ? e.message : String(e) });
        failing = true;
        throw e;
      } finally {
        inflight = undefined;
      }
    })();
    return inflight;
  };
  const background = (): void => {
    if (closed || inflight !== undefined) return;
    fetchOnce().catch(() => {
      // Reported through onFetch; the old keys keep serving.
    });
  };

  const getKey: JWTVerifyGetKey = async (header: JWSHeaderParameters, token: FlattenedJWSInput) => {
    if (local === undefined) {
      try {
        await fetchOnce();
      } catch (e) {
        throw new KeysUnavailableError(`JWKS unavailable: ${e instanceof Error ? e.message : String(e)}`);
      }
    } else if (now() - fetchedAtMs >= options.maxAgeMs) {
      background();
    }
    try {
      return await local!(header, token);
    } catch (e) {
      if (!(e instanceof joseErrors.JWKSNoMatchingKey)) throw e;
      if (!mayRefetchForUnknownKid(lastStartMs, now(), options.cooldownMs)) throw e;
      try {
        await (inflight ?? fetchOnce());
      } catch {
        throw e; // the issuer is unreachable: the key stays unknown
      }
      return local!(header, token);
    }
  };
  return {
    getKey,
    start: background,
    async reload() {
      await fetchOnce();
    },
    close() {
      closed = true;
    },
  };
}

async function fetchJwks(url: string, timeoutMs: number, maxBytes: number): Promise<JSONWebKeySet> {
  const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs), headers: { accept: "application/json" } });
  if (res.status !== 200) {
    await res.body?.cancel();
    throw new Error(`JWKS answered HTTP ${res.status}`);
  }
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of res.body ?? []) {
    size += chunk.length;
    if (size > maxBytes) throw new Error(`JWKS larger than ${maxBytes} bytes`);
    chunks.push(chunk);
  }
  return parseJwks(Buffer.concat(chunks).toString("utf8"));
}

function parseJwks(text: string): JSONWebKeySet {
  const parsed: unknown = JSON.parse(text);
  if (
    typeof parsed !== "object" ||
    parsed === null ||
    !Array.isArray((parsed as { keys?: unknown }).keys) ||
    !(parsed as { keys: unknown[] }).keys.every((k) => typeof k === "object" && k !== null)
  ) {
    throw new Error("not a JWKS (an object with a keys array)");
  }
  return parsed as JSONWebKeySet;
}

/**
 * Keys from a file: a PEM public key (SPKI, or an X.509 certificate), or a JWKS as JSON. Read at
 * start (a file that cannot be used fails the start) and again on reload (kept when unusable).
 */
export function fileJwtKeys(path: string): JwtKeySource {
  let resolve = loadKeyFile(path);
  return {
    getKey: (header, token) => resolve(header, token),
    start() {},
    async reload() {
      resolve = loadKeyFile(path);
    },
    close() {},
  };
}

function loadKeyFile(path: string): JWTVerifyGetKey {
  const text = readFileSync(path, "utf8");
  if (text.trimStart().startsWith("{")) {
    const set = createLocalJWKSet(parseJwks(text));
    return (header, token) => set(header, token);
  }
  const key: KeyObject = createPublicKey(text);
  return () => key;
}
