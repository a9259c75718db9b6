/**
 * Which call a derived AbortSignal belongs to. A call's work runs under signals made from its own
 * (the gateway's deadline bound, an Embed batch's signal), and observers of that work (tracing,
 * docs/architecture.md "The life of a call") need the call back from whatever signal they are
 * handed, without every layer passing the call along. Only the calls an observer watches are
 * followed (tracing's sampled ones, and those that brought a trace context), each with what the
 * observer keeps for it: one WeakMap entry per signal of theirs, gone with it. A call nobody
 * watches costs one failed lookup when its signal is derived (docs/architecture.md, "Cost per call").
 */
const watchers = new WeakMap<AbortSignal, object>();

/** Follows `signal`, a call's own, for `watcher` (what the observer keeps for the call). */
export function watchSignal(signal: AbortSignal, watcher: object): void {
  watchers.set(signal, watcher);
}

/** Records that `derived` was made from `origin` (it aborts when `origin` does, and maybe sooner). */
export function deriveSignal(derived: AbortSignal, origin: AbortSignal): void {
  const watcher = watchers.get(origin);
  if (watcher !== undefined && derived !== origin) watchers.set(derived, watcher);
}

/** The watcher of the call `signal` is, or was derived from, the signal of; undefined when no watched call's. */
export function watcherOf(signal: AbortSignal): object | undefined {
  return watchers.get(signal);
}
