import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { after, before, describe, it } from "node:test";
import { Code, type ConnectError } from "@connectrpc/connect";
import { errorReason } from "../src/errors/gateway-error.js";
import { createRequestBodyWaits, shedVictim } from "../src/transport/request-body-waits.js";

/** A call registered with `waits`: its expiry (if any) and when it came. */
function waiter() {
  let resolve!: (e: ConnectError) => void;
  const expired = new Promise<ConnectError>((r) => (resolve = r));
  let error: ConnectError | undefined;
  const at = Date.now();
  return {
    at,
    expired,
    onExpire: (e: ConnectError) => {
      error = e;
      resolve(e);
    },
    get error() {
      return error;
    },
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("the request body register", { timeout: 20_000 }, () => {
  // The register's timer does not hold a process open (a waiting call's connection does, in the
  // gateway); here nothing else would, so the tests hold the event loop themselves.
  let hold: ReturnType<typeof setInterval> | undefined;
  before(() => {
    hold = setInterval(() => {}, 1_000);
  });
  after(() => clearInterval(hold));

  it("does not hold a stopping process open once its calls are done", () => {
    const script = `
      import { createRequestBodyWaits } from "./src/transport/request-body-waits.ts";
      const waits = createRequestBodyWaits({ timeoutMs: 60_000, maxWaiting: 10 });
      waits.wait(() => {}).done();
      waits.wait(() => {}, 30_000).done();
    `;
    const started = Date.now();
    const r = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
      encoding: "utf8",
      timeout: 30_000,
    });
    assert.equal(r.status, 0, r.stderr);
    assert.ok(Date.now() - started < 20_000, "the process exited without waiting for the 60 s timer");
  });

  it("ends a call whose body does not come within the timeout with DEADLINE_EXCEEDED, REQUEST_BODY_TIMEOUT", async () => {
    const waits = createRequestBodyWaits({ timeoutMs: 60, maxWaiting: 10 });
    const w = waiter();
    waits.wait(w.onExpire);
    const e = await w.expired;
    assert.equal(e.code, Code.DeadlineExceeded);
    assert.equal(errorReason(e), "REQUEST_BODY_TIMEOUT");
    assert.ok(Date.now() - w.at >= 55, "not before its timeout");
    assert.equal(waits.waiting, 0);
    assert.equal(waits.ended.timedOut, 1);
  });

  it("expires several calls with one timer, oldest first, none before its own timeout", async () => {
    const waits = createRequestBodyWaits({ timeoutMs: 80, maxWaiting: 10 });
    const order: { n: number; afterMs: number }[] = [];
    const first = waiter();
    waits.wait((e) => {
      order.push({ n: 1, afterMs: Date.now() - first.at });
      first.onExpire(e);
    });
    await sleep(40);
    const second = waiter();
    waits.wait((e) => {
      order.push({ n: 2, afterMs: Date.now() - second.at });
      second.onExpire(e);
    });
    await Promise.all([first.expired, second.expired]);
    assert.deepEqual(
      order.map((o) => o.n),
      [1, 2],
    );
    // On a loaded machine the timer may fire late (then both may go at once), never early.
    for (const o of order) assert.ok(o.afterMs >= 80, `call ${o.n} expired after ${o.afterMs} ms, before its 80 ms`);
    assert.equal(waits.ended.timedOut, 2);
  });

  it("never expires a call whose body arrived, and keeps timing the others", async () => {
    const waits = createRequestBodyWaits({ timeoutMs: 60, maxWaiting: 10 });
    const done = waiter();
    const entry = waits.wait(done.onExpire);
    const late = waiter();
    waits.wait(late.onExpire);
    entry.done();
    entry.done();
    assert.equal(waits.waiting, 1);
    await late.expired;
    await sleep(30);
    assert.equal(done.error, undefined);
    assert.equal(waits.ended.timedOut, 1);
  });

  it("ends a call whose deadline is shorter than the body timeout at its deadline, as DEADLINE_EXCEEDED", async () => {
    const waits = createRequestBodyWaits({ timeoutMs: 10_000, maxWaiting: 10 });
    const w = waiter();
    waits.wait(w.onExpire, 40);
    const e = await w.expired;
    assert.equal(e.code, Code.DeadlineExceeded);
    assert.notEqual(errorReason(e), "REQUEST_BODY_TIMEOUT");
    assert.equal(waits.ended.timedOut, 0, "a deadline is the caller's, not a body timeout");
    assert.equal(waits.waiting, 0);
  });

  it("sheds the call silent longest when full, where a chunk of body counts as a sign of life", () => {
    const waits = createRequestBodyWaits({ timeoutMs: 10_000, maxWaiting: 3 });
    const calls = [waiter(), waiter(), waiter()];
    const entries = calls.map((c) => waits.wait(c.onExpire));
    entries[0]!.progress(); // the first call sent some of its body: now the second is silent longest
    const fourth = waiter();
    const last = waits.wait(fourth.onExpire);
    assert.equal(calls[1]!.error?.code, Code.ResourceExhausted);
    assert.equal(errorReason(calls[1]!.error!), "GATEWAY_OVERLOADED");
    assert.equal(calls[0]!.error, undefined);
    assert.equal(calls[2]!.error, undefined);
    assert.equal(waits.waiting, 3);
    assert.equal(waits.ended.shed, 1);
    for (const e of [...entries, last]) e.done();
    assert.equal(waits.waiting, 0);
  });

  it("chooses no victim while there is room, and the first in order when full", () => {
    const cases: { order: string[]; waiting: number; max: number; victim: string | undefined }[] = [
      { order: ["a", "b"], waiting: 2, max: 3, victim: undefined },
      { order: ["a", "b", "c"], waiting: 3, max: 3, victim: "a" },
      { order: [], waiting: 0, max: 0, victim: undefined },
    ];
    for (const c of cases) assert.equal(shedVictim(c.order, c.waiting, c.max), c.victim, JSON.stringify(c));
  });
});
