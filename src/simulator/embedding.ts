/**
 * Deterministic embeddings: a bag-of-words sum of per-word pseudo-random vectors (plus a small
 * whole-text component), so identical inputs give identical vectors and texts sharing words are
 * measurably similar. /api/embed vectors are L2-normalised float32 values like Ollama's.
 */
import { createRng } from "./prng.js";

/** Unnormalised float64 vector for `text` (the legacy /api/embeddings answer). */
export function rawEmbedding(modelId: string, text: string, dims: number): number[] {
  const vec = new Float64Array(dims);
  const words = text.toLowerCase().match(/[\p{L}\p{N}]+/gu) ?? [];
  for (const word of words) addRandom(vec, createRng("embed-word", modelId, word), 1);
  addRandom(vec, createRng("embed-text", modelId, text), words.length === 0 ? 1 : 0.25);
  const scale = createRng("embed-scale", modelId, text).int(4, 12) / Math.sqrt(Math.max(1, words.length));
  return Array.from(vec, (v) => Math.fround(v * scale * 0.1));
}

/** L2-normalised float32 vector, as /api/embed returns. */
export function embed(modelId: string, text: string, dims: number): number[] {
  return normalize(rawEmbedding(modelId, text, dims));
}

/** L2-normalises (Ollama's `normalize`, with the same 1e-12 floor) and rounds to float32. */
export function normalize(vec: readonly number[]): number[] {
  let sum = 0;
  for (const v of vec) sum += v * v;
  const norm = 1 / Math.max(Math.sqrt(sum), 1e-12);
  return vec.map((v) => float32(v * norm));
}

/** Cuts to `dimensions` and re-normalises when 0 < dimensions < length (Ollama's `dimensions`). */
export function applyDimensions(vec: readonly number[], dimensions: number | undefined): number[] {
  if (dimensions === undefined || dimensions <= 0 || dimensions >= vec.length) return [...vec];
  return normalize(vec.slice(0, dimensions));
}

/** Cosine similarity; handy for demos and tests. */
export function cosine(a: readonly number[], b: readonly number[]): number {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    const x = a[i] ?? 0;
    const y = b[i] ?? 0;
    dot += x * y;
    na += x * x;
    nb += y * y;
  }
  return dot / Math.max(Math.sqrt(na) * Math.sqrt(nb), 1e-12);
}

/** Rounds to float32 and picks the shortest decimal that round-trips, like Go's float32 JSON. */
function float32(value: number): number {
  const f = Math.fround(value);
  for (let precision = 1; precision < 9; precision++) {
    const candidate = Number(f.toPrecision(precision));
    if (Math.fround(candidate) === f) return candidate;
  }
  return Number(f.toPrecision(9));
}

function addRandom(vec: Float64Array, rng: { next(): number }, weight: number): void {
  for (let i = 0; i < vec.length; i++) vec[i] = (vec[i] ?? 0) + (rng.next() * 2 - 1) * weight;
}
