import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { readNdjson } from "../src/upstream/ndjson-reader.js";
import { isUpstreamError } from "../src/upstream/upstream-error.js";

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

/** A body the test writes into, like undici's response body. */
function body(): PassThrough {
  return new PassThrough();
}

describe("reading an Ollama NDJSON response", () => {
  it("in pull mode, returns what arrived since the last call, then undefined at the end", async () => {
    const b = body();
    const r = readNdjson(b, 1024, "n1");
    b.write('{"a":1}\n{"b":2}\n');
    assert.deepEqual(await r.next(), [{ a: 1 }, { b: 2 }]);
    const later = r.next();
    b.write('{"c":');
    await tick();
    b.end("3}");
    assert.deepEqual(await later, [{ c: 3 }], "a last line without a newline is parsed at the end");
    assert.equal(await r.next(), undefined);
  });

  it("in push mode, hands over every batch as it arrives and resolves at the end", async () => {
    const b = body();
    const r = readNdjson(b, 1024, "n1");
    const got: unknown[][] = [];
    const done = r.pump((batch) => {
      got.push(batch);
      return true;
    });
    b.write('{"t":"a"}\n');
    await tick();
    b.write('{"t":"b"}\n');
    await tick();
    b.end('{"done":true}\n');
    await done;
    assert.deepEqual(got, [[{ t: "a" }], [{ t: "b" }], [{ done: true }]]);
  });

  it("in push mode, pauses while the consumer's promise is pending and then delivers what arrived meanwhile as one batch", async () => {
    const b = body();
    const r = readNdjson(b, 1024, "n1");
    const got: unknown[][] = [];
    let release: () => void = () => undefined;
    const done = r.pump((batch) => {
      got.push(batch);
      if (got.length === 1) return new Promise<void>((resolve) => (release = resolve));
      return true;
    });
    b.write('{"i":1}\n');
    await tick();
    for (let i = 2; i <= 5; i++) {
      b.write(`{"i":${i}}\n`);
      await tick();
    }
    assert.equal(got.length, 1, "nothing delivered while paused");
    release();
    await tick();
    b.end();
    await done;
    assert.deepEqual(got, [[{ i: 1 }], [{ i: 2 }, { i: 3 }, { i: 4 }, { i: 5 }]]);
  });

  it("stops when the consumer answers false", async () => {
    const b = body();
    const r = readNdjson(b, 1024, "n1");
    let calls = 0;
    const done = r.pump(() => ++calls < 2);
    b.write('{"i":1}\n');
    await tick();
    b.write('{"i":2}\n');
    await done;
    assert.equal(calls, 2);
    r.close();
    assert.equal(b.destroyed, true, "close frees the body");
  });

  it("gives the objects before an error line, then fails with Ollama's message", async () => {
    for (const mode of ["pull", "push"] as const) {
      const b = body();
      const r = readNdjson(b, 1024, "n1");
      b.end('{"t":"ok"}\n{"error":"model runner has unexpectedly stopped"}\n{"t":"never"}\n');
      const got: unknown[] = [];
      const run =
        mode === "pull"
          ? (async () => {
              for (let batch; (batch = await r.next()) !== undefined; ) got.push(...batch);
            })()
          : r.pump((batch) => {
              got.push(...batch);
              return true;
            });
      await assert.rejects(
        run,
        (e: unknown) => isUpstreamError(e) && e.kind === "stream" && /unexpectedly stopped/.test(e.message),
      );
      assert.deepEqual(got, [{ t: "ok" }], mode);
    }
  });

  it("fails with a protocol error on a line that is not JSON or too long, and on a body cut short", async () => {
    const cases: [string, (b: PassThrough) => void, RegExp][] = [
      ["not JSON", (b) => b.end("not json\n"), /not valid JSON/],
      ["too long", (b) => b.write("x".repeat(2048)), /longer than 1024 bytes/],
      ["cut short", (b) => b.destroy(), /ended early|aborted|premature/i],
    ];
    for (const [name, feed, message] of cases) {
      const b = body();
      const r = readNdjson(b, 1024, "n1");
      const run = r.pump(() => true);
      feed(b);
      await assert.rejects(run, (e: unknown) => e instanceof Error && message.test(e.message), name);
    }
  });
});
