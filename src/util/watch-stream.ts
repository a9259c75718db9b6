/** How a watched response stream ended. */
export interface StreamEnd {
  /** What it failed with, if it failed (also when the consumer threw into it). */
  error?: unknown;
  /** True when the consumer stopped reading before the end (the client went away). */
  abandoned: boolean;
}

/** What `watchStream` calls. */
export interface StreamWatch {
  /** Runs exactly once, when the stream finishes, fails or is abandoned. */
  onEnd(end: StreamEnd): void;
  /** Replaces an error on its way to the consumer (e.g. to add trailers). @default identity */
  mapError?(error: unknown): unknown;
}

/**
 * Wraps a server-streaming response so interceptors learn when it ends, without an async
 * generator per interceptor: each `yield*` hop costs several promises and their garbage per
 * message, which the slow-streams benchmark profile showed as a visible share of the gateway's
 * CPU per token. Forwards `next`, `return` and `throw` to the source's iterator as is.
 */
export function watchStream<T>(source: AsyncIterable<T>, watch: StreamWatch): AsyncIterable<T> {
  return {
    [Symbol.asyncIterator](): AsyncIterator<T> {
      const it = source[Symbol.asyncIterator]();
      let ended = false;
      const end = (e: StreamEnd): void => {
        if (ended) return;
        ended = true;
        watch.onEnd(e);
      };
      const settle = (p: Promise<IteratorResult<T>>): Promise<IteratorResult<T>> =>
        p.then(
          (r) => {
            if (r.done === true) end({ abandoned: false });
            return r;
          },
          (error: unknown) => {
            end({ error, abandoned: false });
            throw watch.mapError ? watch.mapError(error) : error;
          },
        );
      return {
        next: () => settle(it.next()),
        return(value?: unknown): Promise<IteratorResult<T>> {
          end({ abandoned: true });
          return it.return ? it.return(value) : Promise.resolve({ done: true, value: value as T });
        },
        throw(error?: unknown): Promise<IteratorResult<T>> {
          return settle(it.throw ? it.throw(error) : Promise.reject(error as Error));
        },
      };
    },
  };
}
