import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { createSingleFlight, singleFlight } from "../src/cache/cache.js";

describe("single flight", () => {
  it("runs fn once for 100 concurrent calls with one key, and all of them get its result", async () => {
    const flight = createSingleFlight<string>();
    let runs = 0;
    const fn = async (): Promise<string> => {
      runs++;
      await sleep(20);
      return "value";
    };
    const results = await Promise.all(Array.from({ length: 100 }, () => flight("tags:n1", fn)));
    assert.equal(runs, 1);
    assert.ok(results.every((r) => r === "value"));
  });

  it("shares an error with every waiter, then runs fn again on a later call", async () => {
    const flight = singleFlight<number>();
    let runs = 0;
    const failing = async (): Promise<number> => {
      runs++;
      await sleep(10);
      throw new Error("upstream down");
    };
    const settled = await Promise.allSettled(Array.from({ length: 10 }, () => flight("show:d", failing)));
    assert.equal(runs, 1);
    for (const s of settled) {
      assert.equal(s.status, "rejected");
      assert.equal(s.status === "rejected" && s.reason instanceof Error ? s.reason.message : "", "upstream down");
    }
    assert.equal(await flight("show:d", () => Promise.resolve(++runs)), 2, "the failed entry was removed");
  });

  it("runs again once the previous call has settled (results are not cached)", async () => {
    const flight = createSingleFlight<number>();
    let runs = 0;
    const fn = (): Promise<number> => Promise.resolve(++runs);
    assert.equal(await flight("k", fn), 1);
    assert.equal(await flight("k", fn), 2);
  });

  it("keeps different keys apart", async () => {
    const flight = createSingleFlight<string>();
    const [a, b] = await Promise.all([flight("a", async () => "A"), flight("b", async () => "B")]);
    assert.deepEqual([a, b], ["A", "B"]);
  });

  it("turns a synchronous throw into a rejection without leaving the key stuck", async () => {
    const flight = createSingleFlight<string>();
    await assert.rejects(
      flight("k", () => {
        throw new Error("sync");
      }),
      /sync/,
    );
    assert.equal(await flight("k", async () => "ok"), "ok");
  });
});
