/**
 * Which call a derived AbortSignal belongs to. A call's work runs under signals made from its own
 * (the gateway's deadline bound, an Embed batch's signal), and observers of that work (tracing,
 * docs/architecture.md "The life of a call") need the call back from whatever signal they are
 * handed, without every layer passing the call along. One WeakMap entry per derived signal, gone
 * with it.
 */
const origins = new WeakMap<AbortSignal, AbortSignal>();
let recording = false;

/**
 * Turns the records on, for good: called when tracing is set up, the only reader. Until then
 * `deriveSignal` records nothing, since a WeakMap entry per call is not free (docs/architecture.md,
 * "Cost per call").
 */
export function recordSignalLineage(): void {
  recording = true;
}

/** Records that `derived` was made from `origin` (it aborts when `origin` does, and maybe sooner). */
export function deriveSignal(derived: AbortSignal, origin: AbortSignal): void {
  if (recording && derived !== origin) origins.set(derived, origins.get(origin) ?? origin);
}

/** The signal `signal` was derived from, first hand (itself when it was not derived). */
export function originOf(signal: AbortSignal): AbortSignal {
  return origins.get(signal) ?? signal;
}
