import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { watchStream } from "../src/util/watch-stream.js";
import type { StreamEnd } from "../src/util/watch-stream.js";

async function* numbers(n: number, failAt?: number): AsyncGenerator<number> {
  for (let i = 0; i < n; i++) {
    if (i === failAt) throw new Error(`failed at ${i}`);
    yield i;
  }
}

function watched(source: AsyncIterable<number>): { stream: AsyncIterable<number>; ends: StreamEnd[] } {
  const ends: StreamEnd[] = [];
  const stream = watchStream(source, {
    onEnd: (e) => ends.push(e),
    mapError: (e) => new Error(`mapped: ${(e as Error).message}`),
  });
  return { stream, ends };
}

describe("watching a response stream", () => {
  it("passes every message through and reports one normal end", async () => {
    const { stream, ends } = watched(numbers(3));
    const seen: number[] = [];
    for await (const n of stream) seen.push(n);
    assert.deepEqual(seen, [0, 1, 2]);
    assert.deepEqual(ends, [{ abandoned: false }]);
  });

  it("reports the original error once and hands the consumer the mapped one", async () => {
    const { stream, ends } = watched(numbers(5, 2));
    const seen: number[] = [];
    await assert.rejects(
      (async () => {
        for await (const n of stream) seen.push(n);
      })(),
      /mapped: failed at 2/,
    );
    assert.deepEqual(seen, [0, 1]);
    assert.equal(ends.length, 1);
    assert.equal((ends[0]!.error as Error).message, "failed at 2");
    assert.equal(ends[0]!.abandoned, false);
  });

  it("reports an abandoned stream when the consumer stops early, and closes the source", async () => {
    let closed = false;
    const source = (async function* () {
      try {
        yield* numbers(100);
      } finally {
        closed = true;
      }
    })();
    const { stream, ends } = watched(source);
    for await (const n of stream) if (n === 1) break;
    assert.deepEqual(ends, [{ abandoned: true }]);
    assert.equal(closed, true, "the source's finally ran");
  });

  it("reports an error the consumer throws into the stream when the source does not handle it", async () => {
    const { stream, ends } = watched(numbers(10));
    const it = stream[Symbol.asyncIterator]();
    assert.equal((await it.next()).value, 0);
    await assert.rejects(it.throw!(new Error("client reset")), /mapped: client reset/);
    assert.equal(ends.length, 1);
    assert.equal((ends[0]!.error as Error).message, "client reset");
    // A later return() does not report a second end.
    await it.return!();
    assert.equal(ends.length, 1);
  });
});
