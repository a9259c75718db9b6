import type { Readable } from "node:stream";
import { createNdjsonSplitter, NdjsonError } from "./ndjson.js";
import { UpstreamError } from "./upstream-error.js";

/**
 * An Ollama NDJSON response being read, in pull mode (`next`) or push mode (`pump`, what the
 * streaming relay uses): either way nothing more is read from the socket while the consumer is
 * busy, so a slow client slows the upstream read (and Ollama, through TCP) instead of filling memory.
 */
export interface NdjsonStream {
  /**
   * Everything that arrived since the last call (at least one object), parsed; undefined at the
   * end of the body. Throws UpstreamError: "stream" for an `{"error": ...}` line (after the
   * objects before it were returned), "protocol" for bytes that are not NDJSON within limits;
   * transport errors (abort, reset, timeouts) as undici raised them.
   */
  next(): Promise<Record<string, unknown>[] | undefined>;
  /**
   * Push mode, for the streaming relay: calls `onBatch` with the objects of each read, as the
   * data arrives, without a promise per read (those promises, one per token and stream, were
   * most of what a thousand slow streams pushed into the old generation). `onBatch` answers true
   * to go on, false to stop reading (resolves), or a promise: reading pauses until it settles,
   * and whatever arrived meanwhile comes as one batch. Resolves at the end of the body; rejects
   * as `next` throws, or with what `onBatch` threw or its promise rejected with.
   */
  pump(onBatch: (batch: Record<string, unknown>[]) => boolean | Promise<void>): Promise<void>;
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
  let pumping: (() => void) | undefined;
  const notify = (): void => {
    if (pumping) return pumping();
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
  /** The objects completed by `chunk`, or (undefined) the unterminated last line. */
  const parse = (chunk: Buffer | undefined): Record<string, unknown>[] => {
    try {
      return checked(chunk === undefined ? split.end() : split.push(chunk));
    } catch (e) {
      if (e instanceof NdjsonError) throw new UpstreamError("protocol", e.message, node, 0, { cause: e });
      throw e;
    }
  };

  /** The next batch if one can be had now, "wait" for more data, "end"; throws as `next` does. */
  const take = (): Record<string, unknown>[] | "wait" | "end" => {
    for (;;) {
      if (deferred) throw deferred;
      if (closed) return "end";
      const chunk = body.read() as Buffer | null;
      if (chunk !== null) {
        const batch = parse(chunk);
        if (batch.length > 0) return batch;
        continue;
      }
      if (failure !== undefined) throw failure;
      if (!ended) return "wait";
      closed = true;
      const last = parse(undefined);
      if (last.length > 0) return last;
    }
  };

  return {
    async next() {
      for (;;) {
        const got = take();
        if (got === "end") return undefined;
        if (got !== "wait") return got;
        await new Promise<void>((resolve) => (wake = resolve));
      }
    },
    pump(onBatch) {
      return new Promise<void>((resolve, reject) => {
        let paused = false;
        let settled = false;
        const finish = (error?: unknown): void => {
          if (settled) return;
          settled = true;
          pumping = undefined;
          if (error === undefined) resolve();
          else reject(error);
        };
        /** Hands one batch over; true = read on at once. */
        const deliver = (batch: Record<string, unknown>[]): boolean => {
          const answer = onBatch(batch);
          if (answer === true) return true;
          if (answer === false) {
            finish();
            return false;
          }
          paused = true;
          answer.then(
            () => {
              paused = false;
              step();
            },
            (e: unknown) => finish(e),
          );
          return false;
        };
        const step = (): void => {
          if (settled || paused) return;
          try {
            for (;;) {
              const got = take();
              if (got === "end") return finish();
              if (got === "wait") return; // the next "readable", "end" or "error" calls step again
              if (!deliver(got)) return;
            }
          } catch (e) {
            finish(e);
          }
        };
        pumping = step;
        step();
      });
    },
    close() {
      closed = true;
      body.off("readable", notify);
      if (!body.destroyed) body.destroy();
    },
  };
}
