/**
 * Which call a derived AbortSignal belongs to. A call's work runs under signals made from its own
 * (the gateway's deadline bound, an Embed batch's signal), and observers of that work (tracing,
 * docs/architecture.md "The life of a call") need the call back from whatever signal they are
 * handed, without every layer passing the call along. Only the calls an observer watches are
 * followed (tracing's sampled ones, and those that brought a trace context): one WeakMap entry per
 * signal of theirs, gone with it; a call nobody watches costs one failed lookup when its signal
 * is derived (docs/architecture.md, "Cost per call").
 */
const origins = new WeakMap<AbortSignal, AbortSignal>();

/** Follows `signal`, a call's own: the signals derived from it from now on lead back to it. */
export function watchSignal(signal: AbortSignal): void {
  origins.set(signal, signal);
}

/** Records that `derived` was made from `origin` (it aborts when `origin` does, and maybe sooner). */
export function deriveSignal(derived: AbortSignal, origin: AbortSignal): void {
  const root = origins.get(origin);
  if (root !== undefined && derived !== origin) origins.set(derived, root);
}

/** The watched call's signal `signal` is, or was derived from; undefined when no watched call's. */
export function watchedOrigin(signal: AbortSignal): AbortSignal | undefined {
  return origins.get(signal);
}
