import { createHash } from "node:crypto";
import type { Cache } from "../cache/cache.js";

/** What identifies a vector besides its input text. */
export interface EmbeddingKey {
  /**
   * Digest of the model's weights, from an /api/tags answer at most `MetadataTtls.digestMaxAgeMs`
   * old (`FleetMetadata.locate` with `recent`): a model re-pulled under the same name gets a new
   * digest, so its old vectors are not served (see README "Caching" for the exact bound).
   */
  digest: string;
  /** Requested dimensions (0 = full). */
  dimensions: number;
  /** Whether long inputs are truncated. */
  truncate: boolean;
  /** Canonical JSON of the options sent (num_ctx changes truncation), or "". */
  options: string;
}

/**
 * Embedding vectors cached per (model digest, dimensions, truncate, options,
 * input), stored as packed float32 (what the API returns anyway, 4 bytes per
 * value instead of ~20 as JSON). Inputs are hashed, so keys stay short and
 * no text is stored in key names.
 */
export interface EmbeddingCache {
  /** The cached vector of each input, or undefined. Rejects with the signal's reason once it aborts. */
  lookup(key: EmbeddingKey, inputs: readonly string[], signal?: AbortSignal): Promise<(Float32Array | undefined)[]>;
  /** Stores vectors for inputs (same order). Rejects with the signal's reason once it aborts (memory is written by then). */
  store(
    key: EmbeddingKey,
    inputs: readonly string[],
    vectors: readonly (readonly number[])[],
    signal?: AbortSignal,
  ): Promise<void>;
}

/** Creates the embedding cache on top of the shared cache. */
export function createEmbeddingCache(cache: Cache, ttlMs: number): EmbeddingCache {
  const prefix = (k: EmbeddingKey): string =>
    `emb:${k.digest}:${k.dimensions}:${k.truncate ? 1 : 0}:${k.options === "" ? "-" : hash(k.options).slice(0, 16)}:`;
  return {
    async lookup(key, inputs, signal) {
      const p = prefix(key);
      const values = await cache.getMany(
        inputs.map((i) => p + hash(i)),
        signal,
      );
      return values.map((b) =>
        b === undefined || b.length % 4 !== 0
          ? undefined
          : new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length)),
      );
    },
    async store(key, inputs, vectors, signal) {
      const p = prefix(key);
      await cache.setMany(
        inputs.map((input, i) => ({
          key: p + hash(input),
          value: Buffer.from(Float32Array.from(vectors[i]!).buffer),
          ttlMs,
        })),
        signal,
      );
    },
  };
}

function hash(text: string): string {
  return createHash("sha256").update(text).digest("base64url");
}
