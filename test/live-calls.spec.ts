import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { createLiveCalls } from "../src/transport/live-calls.js";

describe("the fast path's register of live calls", () => {
  it("aborts every registered call, once, with the shutdown's reason", () => {
    const shutdown = new AbortController();
    const live = createLiveCalls(shutdown.signal);
    const seen: [string, unknown][] = [];
    for (const name of ["a", "b", "c"]) live.add((reason) => seen.push([name, reason]));
    assert.equal(live.size, 3);
    const reason = new Error("shutting down");
    shutdown.abort(reason);
    assert.deepEqual(seen.map(([n]) => n).sort(), ["a", "b", "c"]);
    assert.ok(seen.every(([, r]) => r === reason));
    assert.equal(live.size, 0);
  });

  it("does not abort a call that was removed, from the head, the middle or the tail", () => {
    const shutdown = new AbortController();
    const live = createLiveCalls(shutdown.signal);
    const aborted: number[] = [];
    const entries = [0, 1, 2, 3, 4].map((i) => live.add(() => aborted.push(i)));
    live.remove(entries[4]!); // newest: the head
    live.remove(entries[2]!);
    live.remove(entries[0]!); // oldest: the tail
    live.remove(entries[2]!); // twice is harmless
    assert.equal(live.size, 2);
    shutdown.abort(new Error("stop"));
    assert.deepEqual(aborted.sort(), [1, 3]);
  });

  it("aborts a call at once when shutdown has already begun, and keeps nothing of it", () => {
    const shutdown = new AbortController();
    const live = createLiveCalls(shutdown.signal);
    shutdown.abort("gone");
    let got: unknown;
    const entry = live.add((reason) => (got = reason));
    assert.equal(got, "gone");
    assert.equal(live.size, 0);
    live.remove(entry);
    assert.equal(live.size, 0);
  });

  it("lets a call removed by another call's abort stay unaborted", () => {
    const shutdown = new AbortController();
    const live = createLiveCalls(shutdown.signal);
    const aborted: string[] = [];
    const first = live.add(() => aborted.push("first"));
    live.add(() => {
      aborted.push("second");
      live.remove(first); // the call ended on its own meanwhile
    });
    shutdown.abort(new Error("stop"));
    assert.deepEqual(aborted, ["second"]);
  });
});
