/**
 * Deterministic hashing and pseudo-random numbers: the simulator's outputs (tokens, vectors,
 * digests, tool-call ids) must be identical for identical inputs so tests can assert on them.
 */
import { createHash } from "node:crypto";

/** A seeded random source; every method is deterministic for a given seed. */
export interface Rng {
  /** Uniform float in [0, 1). */
  next(): number;
  /** Uniform integer in [min, max] (inclusive). */
  int(min: number, max: number): number;
  /** One element of a non-empty array. */
  pick<T>(items: readonly T[]): T;
  /** Standard normal sample (Box-Muller). */
  gaussian(): number;
}

/** Lower-case hex SHA-256 of a string: used for model digests ("sha256 of the name"). */
export function sha256Hex(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

/** 32-bit FNV-1a: a cheap stable hash for token ids and small choices. */
export function fnv1a(text: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  return hash >>> 0;
}

/** Creates an xoshiro128** generator seeded from the SHA-256 of the given parts. */
export function createRng(...parts: readonly unknown[]): Rng {
  const digest = createHash("sha256").update(JSON.stringify(parts)).digest();
  let a = digest.readUInt32LE(0);
  let b = digest.readUInt32LE(4);
  let c = digest.readUInt32LE(8);
  let d = digest.readUInt32LE(12);
  if ((a | b | c | d) === 0) a = 1;
  const nextU32 = (): number => {
    const result = Math.imul(rotl(Math.imul(b, 5), 7), 9) >>> 0;
    const t = b << 9;
    c ^= a;
    d ^= b;
    b ^= c;
    a ^= d;
    c ^= t;
    d = rotl(d, 11);
    return result;
  };
  let spare: number | undefined;
  const rng: Rng = {
    next: () => nextU32() / 0x100000000,
    int: (min, max) => min + Math.floor(rng.next() * (max - min + 1)),
    pick: <T>(items: readonly T[]): T => {
      const item = items[Math.floor(rng.next() * items.length)];
      if (item === undefined) throw new RangeError("pick() needs a non-empty array");
      return item;
    },
    gaussian: () => {
      if (spare !== undefined) {
        const value = spare;
        spare = undefined;
        return value;
      }
      const u = Math.max(rng.next(), 1e-12);
      const v = rng.next();
      const r = Math.sqrt(-2 * Math.log(u));
      spare = r * Math.sin(2 * Math.PI * v);
      return r * Math.cos(2 * Math.PI * v);
    },
  };
  return rng;
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}
