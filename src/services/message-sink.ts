import { clientStoppedReading } from "../errors/domain-errors.js";

/**
 * Where a server-streaming handler writes its messages: push-based, with backpressure. The
 * gRPC fast path writes each message straight to the HTTP/2 stream; connect-node's protocols
 * pull them through `sinkIterable`. Either way a producer that respects `send`'s answer holds at
 * most a couple of messages the client has not taken (one in `sinkIterable`'s slot, two on the
 * fast path: one being written and one queued), so a slow client slows the upstream read.
 */
export interface MessageSink<T> {
  /** Sends one message; false when the client's buffer is full: await `drained()` before the next. */
  send(message: T): boolean;
  /** Resolves when more may be sent; rejects when the client went away. */
  drained(): Promise<void>;
}

const GONE = clientStoppedReading;

/**
 * Runs `produce` as an async iterable, for handlers served by connect-node: it starts on the
 * first `next()`, every message waits in a one-slot buffer until the consumer takes it (`send`
 * returns false while the slot is full), and `return()` (the consumer gave up) makes the
 * producer's pending or next `drained()` reject. The producer's error ends the iteration.
 */
export function sinkIterable<T>(produce: (sink: MessageSink<T>) => Promise<void>): AsyncIterable<T> {
  return {
    [Symbol.asyncIterator](): AsyncIterator<T> {
      const slot: T[] = [];
      let started = false;
      let finished = false; // the producer returned or threw
      let failure: { error: unknown } | undefined;
      let stopped = false; // the consumer called return(), or saw the end
      let consumer: { resolve(r: IteratorResult<T>): void; reject(e: unknown): void } | undefined;
      let producer: { resolve(): void; reject(e: unknown): void } | undefined;

      const sink: MessageSink<T> = {
        send(message) {
          if (stopped) throw GONE();
          const c = consumer;
          if (c === undefined) {
            slot.push(message);
            return false;
          }
          consumer = undefined;
          c.resolve({ done: false, value: message });
          return true;
        },
        drained() {
          if (stopped) return Promise.reject(GONE());
          if (slot.length === 0) return Promise.resolve();
          return new Promise<void>((resolve, reject) => (producer = { resolve, reject }));
        },
      };
      const end = (): Promise<IteratorResult<T>> => {
        stopped = true;
        if (failure === undefined) return Promise.resolve({ done: true, value: undefined });
        const { error } = failure;
        failure = undefined;
        return Promise.reject(error);
      };
      const settle = (): void => {
        finished = true;
        const c = consumer;
        consumer = undefined;
        if (c) end().then(c.resolve, c.reject);
      };
      return {
        next(): Promise<IteratorResult<T>> {
          if (slot.length > 0) {
            const value = slot.shift()!;
            const p = producer;
            producer = undefined;
            p?.resolve();
            return Promise.resolve({ done: false, value });
          }
          if (stopped || finished) return end();
          const wait = new Promise<IteratorResult<T>>((resolve, reject) => (consumer = { resolve, reject }));
          if (!started) {
            started = true;
            produce(sink).then(settle, (error: unknown) => {
              if (!stopped) failure = { error };
              settle();
            });
          }
          return wait;
        },
        return(): Promise<IteratorResult<T>> {
          stopped = true;
          slot.length = 0;
          failure = undefined;
          const p = producer;
          producer = undefined;
          p?.reject(GONE());
          return Promise.resolve({ done: true, value: undefined });
        },
      };
    },
  };
}
