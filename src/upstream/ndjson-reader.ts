import type { Readable } from "node:stream";
import { createNdjsonSplitter, NdjsonError } from "./ndjson.js";
import { UpstreamError } from "./upstream-error.js";

/**
 * An Ollama NDJSON response being read, pull-based: nothing is read from the socket until the
 * caller asks, so a slow client slows the upstream read (and Ollama, through TCP) instead of
 * filling memory.
 */
export interface NdjsonStream {
  /**
   * Everything that arrived since the last call (at least one object), parsed; undefined at the
   * end of the body. Throws UpstreamError: "stream" for an `{"error": ...}` line (after the
   * objects before it were returned), "protocol" for bytes that are not NDJSON within limits;
   * transport errors (abort, reset, timeouts) as undici raised them.
   */
  next(): Promise<Record<string, unknown>[] | undefined>;
  /** Stops reading and destroys the body: frees the connection and tells Ollama to stop. Idempotent. */
  close(): void;
}

/**
 * Reads `body` (a paused Readable, e.g. undici's response body) with `read()`, which returns
 * everything buffered at once: one promise per upstream read instead of the several per line
 * that stacked async iterators (the body's, a parser's, a relay's) cost.
 */
export function readNdjson(body: Readable, maxLineBytes: number, node: string): NdjsonStream {
  const split = createNdjsonSplitter(maxLineBytes);
  let ended = false;
  let closed = false;
  let failure: unknown;
  let deferred: UpstreamError | undefined;
  let wake: (() => void) | undefined;
  const notify = (): void => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  body.on("readable", notify);
  body.once("end", () => {
    ended = true;
    notify();
  });
  body.on("error", (e: unknown) => {
    failure ??= e;
    notify();
  });
  body.once("close", () => {
    if (!ended) failure ??= new UpstreamError("protocol", "the response ended early", node);
    notify();
  });

  /** Splits off an error line: the objects before it are returned now, the error thrown next. */
  const checked = (batch: Record<string, unknown>[]): Record<string, unknown>[] => {
    const failed = batch.findIndex((obj) => obj["error"] !== undefined);
    if (failed === -1) return batch;
    const error = batch[failed]!["error"];
    deferred = new UpstreamError("stream", typeof error === "string" ? error : JSON.stringify(error), node);
    return batch.slice(0, failed);
  };
  const parse = (f: () => Record<string, unknown>[]): Record<string, unknown>[] => {
    try {
      return checked(f());
    } catch (e) {
      if (e instanceof NdjsonError) throw new UpstreamError("protocol", e.message, node, 0, { cause: e });
      throw e;
    }
  };

  return {
    async next() {
      for (;;) {
        if (deferred) throw deferred;
        if (closed) return undefined;
        const chunk = body.read() as Buffer | null;
        if (chunk !== null) {
          const batch = parse(() => split.push(chunk));
          if (batch.length > 0) return batch;
          continue;
        }
        if (failure !== undefined) throw failure;
        if (ended) {
          closed = true;
          const last = parse(() => split.end());
          if (last.length > 0) return last;
          if (deferred) throw deferred;
          return undefined;
        }
        await new Promise<void>((resolve) => (wake = resolve));
      }
    },
    close() {
      closed = true;
      body.off("readable", notify);
      if (!body.destroyed) body.destroy();
    },
  };
}
