import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { Code, ConnectError } from "@connectrpc/connect";
import { sinkIterable } from "../src/services/message-sink.js";
import type { MessageSink } from "../src/services/message-sink.js";

/** A producer that sends `n` numbers, honouring backpressure, and records how far it got. */
function counter(n: number, progress: { sent: number; error?: unknown }) {
  return async (sink: MessageSink<number>): Promise<void> => {
    try {
      for (let i = 0; i < n; i++) {
        progress.sent++;
        if (!sink.send(i)) await sink.drained();
      }
    } catch (e) {
      progress.error = e;
      throw e;
    }
  };
}

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

describe("a sink served as an async iterable (connect-node's side of the streaming handlers)", () => {
  it("yields every message in order and then ends", async () => {
    const got: number[] = [];
    for await (const m of sinkIterable(counter(5, { sent: 0 }))) got.push(m);
    assert.deepEqual(got, [0, 1, 2, 3, 4]);
  });

  it("does not start the producer before the first next()", async () => {
    const progress = { sent: 0 };
    const it = sinkIterable(counter(5, progress))[Symbol.asyncIterator]();
    await tick();
    assert.equal(progress.sent, 0);
    assert.deepEqual(await it.next(), { done: false, value: 0 });
  });

  it("holds the producer while the consumer does not pull: at most one message waits", async () => {
    const progress = { sent: 0 };
    const it = sinkIterable(counter(1000, progress))[Symbol.asyncIterator]();
    await it.next();
    for (let i = 0; i < 10; i++) await tick();
    assert.ok(progress.sent <= 2, `the producer ran ahead to ${progress.sent} messages`);
    await it.next();
    for (let i = 0; i < 10; i++) await tick();
    assert.ok(progress.sent <= 3, `the producer ran ahead to ${progress.sent} messages`);
  });

  it("makes the waiting producer fail when the consumer gives up, so its resources are freed", async () => {
    const progress: { sent: number; error?: unknown } = { sent: 0 };
    const it = sinkIterable(counter(1000, progress))[Symbol.asyncIterator]();
    await it.next();
    await tick();
    await it.return!();
    await tick();
    assert.ok(progress.error instanceof ConnectError);
    assert.equal(progress.error.code, Code.Canceled);
    assert.deepEqual(await it.next(), { done: true, value: undefined });
  });

  it("ends the iteration with the producer's error, after the messages sent before it", async () => {
    const boom = new ConnectError("upstream broke", Code.Unavailable);
    const it = sinkIterable<number>(async (sink) => {
      sink.send(1);
      await sink.drained();
      throw boom;
    })[Symbol.asyncIterator]();
    assert.deepEqual(await it.next(), { done: false, value: 1 });
    await assert.rejects(it.next(), (e) => e === boom);
    assert.deepEqual(await it.next(), { done: true, value: undefined });
  });
});
