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
/** Signals that serve several watched calls at once (an Embed batch): every watcher, in order. */
const batches = new WeakMap<AbortSignal, readonly object[]>();

/** Follows `signal`, a call's own, for `watcher` (what the observer keeps for the call). */
export function watchSignal(signal: AbortSignal, watcher: object): void {
  watchers.set(signal, watcher);
}

/** Records that `derived` was made from `origin` (it aborts when `origin` does, and maybe sooner). */
export function deriveSignal(derived: AbortSignal, origin: AbortSignal): void {
  const watcher = watchers.get(origin);
  if (watcher === undefined || derived === origin) return;
  watchers.set(derived, watcher);
  const batch = batches.get(origin);
  if (batch !== undefined) batches.set(derived, batch);
}

/**
 * Records that `derived` serves the calls of all `members` at once (an Embed batch's request):
 * the first watched call's watcher is its watcher (`watcherOf`), and `watchersOf` gives them all.
 * A lone member is `deriveSignal`.
 */
export function deriveSignalFromAll(derived: AbortSignal, members: readonly { readonly signal: AbortSignal }[]): void {
  if (members.length === 1) return deriveSignal(derived, members[0]!.signal);
  let all: object[] | undefined;
  for (const { signal } of members) {
    const watcher = watchers.get(signal);
    if (watcher !== undefined && !all?.includes(watcher)) (all ??= []).push(watcher);
  }
  if (all === undefined) return;
  watchers.set(derived, all[0]!);
  if (all.length > 1) batches.set(derived, all);
}

/** Every watcher of the calls `signal` serves at once, when it serves several (see `deriveSignalFromAll`). */
export function watchersOf(signal: AbortSignal): readonly object[] | undefined {
  return batches.get(signal);
}

/** The watcher of the call `signal` is, or was derived from, the signal of; undefined when no watched call's. */
export function watcherOf(signal: AbortSignal): object | undefined {
  return watchers.get(signal);
}
