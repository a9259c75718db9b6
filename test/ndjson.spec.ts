import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { createNdjsonSplitter, NdjsonError } from "../src/upstream/ndjson.js";

/** The splitter over a byte stream, as the upstream reader drives it: one batch per chunk that completed a line. */
async function* parseNdjson(
  body: AsyncIterable<Buffer>,
  maxLineBytes: number,
): AsyncGenerator<Record<string, unknown>[]> {
  const split = createNdjsonSplitter(maxLineBytes);
  for await (const chunk of body) {
    const batch = split.push(chunk);
    if (batch.length > 0) yield batch;
  }
  const last = split.end();
  if (last.length > 0) yield last;
}

async function collect(chunks: string[] | Buffer[], max = 1024): Promise<unknown[]> {
  async function* body(): AsyncGenerator<Buffer> {
    for (const c of chunks) yield Buffer.isBuffer(c) ? c : Buffer.from(c);
  }
  const out: unknown[] = [];
  for await (const batch of parseNdjson(body(), max)) out.push(...batch);
  return out;
}

describe("NDJSON parsing", () => {
  it("yields one object per line, also when lines are split across chunks", async () => {
    const out = await collect(['{"a":1}\n{"b"', ':2}\n{"c":', "3}\n"]);
    assert.deepEqual(out, [{ a: 1 }, { b: 2 }, { c: 3 }]);
  });

  it("keeps multi-byte characters intact when a chunk boundary splits them", async () => {
    const bytes = Buffer.from('{"t":"héllo 🦙"}\n');
    const cut = bytes.indexOf(0xf0) + 2; // inside the 4-byte llama
    const out = await collect([bytes.subarray(0, 3), bytes.subarray(3, cut), bytes.subarray(cut)]);
    assert.deepEqual(out, [{ t: "héllo 🦙" }]);
  });

  it("parses a last line that has no newline (a single-object answer)", async () => {
    assert.deepEqual(await collect(['{"done":true}']), [{ done: true }]);
  });

  it("skips blank lines", async () => {
    assert.deepEqual(await collect(['\n{"a":1}\n\n\n{"b":2}\n']), [{ a: 1 }, { b: 2 }]);
  });

  it("hands over everything that arrived together as one batch, so a slow reader can coalesce", async () => {
    async function* body(): AsyncGenerator<Buffer> {
      yield Buffer.from('{"a":1}\n{"b":2}\n{"c"');
      yield Buffer.from(":3}\n");
    }
    const batches: unknown[] = [];
    for await (const batch of parseNdjson(body(), 1024)) batches.push(batch);
    assert.deepEqual(batches, [[{ a: 1 }, { b: 2 }], [{ c: 3 }]]);
  });

  it("rejects a line that is not JSON", async () => {
    await assert.rejects(collect(['{"a":1}\nnot json\n']), NdjsonError);
  });

  it("rejects a line that is JSON but not an object", async () => {
    await assert.rejects(collect(["[1,2]\n"]), /not a JSON object/);
  });

  it("rejects an endless line once it passes the limit, without waiting for its end", async () => {
    let produced = 0;
    async function* endless(): AsyncGenerator<Buffer> {
      for (;;) {
        produced++;
        yield Buffer.alloc(100, 0x61);
      }
    }
    await assert.rejects(async () => {
      for await (const _ of parseNdjson(endless(), 1000)) void _;
    }, /longer than 1000 bytes/);
    assert.ok(produced <= 11, `read ${produced} chunks before giving up`);
  });

  it("rejects a complete line longer than the limit", async () => {
    await assert.rejects(collect([`{"a":"${"x".repeat(2000)}"}\n`], 1000), /longer than/);
  });
});
