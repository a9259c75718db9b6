import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import type { LimitsConfig } from "../src/config/limits-config.js";
import { errorReason } from "../src/errors/gateway-error.js";
import { createLimiter } from "../src/limits/limiter.js";
import type { Admission, Limiter, LimiterOptions } from "../src/limits/limiter.js";
import { captureLogs } from "./helpers/log-capture.js";

const PLAIN = { streaming: false, metered: false };
const STREAM = { streaming: true, metered: false };
const INFERENCE = { streaming: true, metered: true };
const reasonOf = (a: Admission): string | undefined => (a.refusal === undefined ? undefined : errorReason(a.refusal));
const limitsOf = (d: LimitsConfig["default"], principals: LimitsConfig["principals"] = {}): LimitsConfig => ({
  default: d,
  principals,
});

/** A limiter without Redis on a clock the test moves. */
describe("a limiter without Redis", () => {
  let clock = 1_700_000_000_000;
  const opened: Limiter[] = [];
  const limiter = (o: Partial<LimiterOptions>): Limiter => {
    const l = createLimiter({ now: () => clock, log: captureLogs().log, ...o });
    opened.push(l);
    return l;
  };
  after(async () => {
    await Promise.all(opened.map((l) => l.close()));
  });

  it("is off, and admits everything, while no principal has a limit", () => {
    const l = limiter({});
    assert.equal(l.enabled(), false);
    assert.equal(l.shared(), false);
    const a = l.admit("anyone", false, INFERENCE);
    assert.deepEqual(
      [a.refusal, a.remainingRequests, a.remainingTokens, a.end],
      [undefined, undefined, undefined, undefined],
    );
  });

  it("gives each of WORKERS processes its share: rate and burst divided by them", () => {
    const l = limiter({ limits: limitsOf({ requestsPerSecond: 10, burst: 4 }), replicas: 2 });
    assert.equal(l.replicas(), 2);
    const first = l.admit("10.0.0.1", true, PLAIN);
    assert.equal(first.remainingRequests, 1);
    assert.equal(reasonOf(l.admit("10.0.0.1", true, PLAIN)), undefined);
    const refused = l.admit("10.0.0.1", true, PLAIN);
    assert.equal(reasonOf(refused), "RATE_LIMITED");
    assert.equal(refused.remainingRequests, 0);
    assert.equal(reasonOf(l.admit("10.0.0.2", true, PLAIN)), undefined, "another address has its own bucket");
    clock += 199;
    assert.equal(reasonOf(l.admit("10.0.0.1", true, PLAIN)), "RATE_LIMITED", "5/s here: not before 200 ms");
    clock += 1;
    assert.equal(reasonOf(l.admit("10.0.0.1", true, PLAIN)), undefined);
  });

  it("keeps a principal's name apart from a client address that reads the same", () => {
    const l = limiter({ limits: limitsOf({ requestsPerSecond: 1, burst: 1 }) });
    assert.equal(reasonOf(l.admit("10.0.0.9", true, PLAIN)), undefined);
    assert.equal(reasonOf(l.admit("10.0.0.9", false, PLAIN)), undefined, "a principal called 10.0.0.9 is someone else");
  });

  it("counts streams until they end, and unary calls not at all", () => {
    const l = limiter({ limits: limitsOf({ concurrentStreams: 1 }) });
    const s = l.admit("svc", false, STREAM);
    assert.equal(reasonOf(s), undefined);
    assert.equal(reasonOf(l.admit("svc", false, STREAM)), "TOO_MANY_STREAMS");
    assert.equal(reasonOf(l.admit("svc", false, PLAIN)), undefined);
    s.end?.(0);
    assert.equal(reasonOf(l.admit("svc", false, STREAM)), undefined);
  });

  it("applies new limits to the next call, and lets running calls end as they began", () => {
    const l = limiter({ limits: limitsOf({ concurrentStreams: 1 }) });
    const running = l.admit("svc", false, STREAM);
    l.update(limitsOf({}, { svc: { concurrentStreams: 3 } }));
    const more = [l.admit("svc", false, STREAM), l.admit("svc", false, STREAM)];
    assert.deepEqual(more.map(reasonOf), [undefined, undefined]);
    assert.equal(reasonOf(l.admit("svc", false, STREAM)), "TOO_MANY_STREAMS");
    for (const a of [running, ...more]) a.end?.(0);
    l.update(limitsOf({}));
    assert.equal(l.enabled(), false);
  });

  it("charges an inference call's tokens when it ends and refuses the next until the day ends", () => {
    clock = Date.UTC(2025, 0, 1, 22, 0, 0);
    const l = limiter({ limits: limitsOf({ tokensPerDay: 50 }) });
    const a = l.admit("svc", false, INFERENCE);
    assert.equal(a.remainingTokens, 50);
    a.end?.(80);
    const refused = l.admit("svc", false, INFERENCE);
    assert.equal(reasonOf(refused), "TOKEN_QUOTA_EXCEEDED");
    assert.equal(refused.remainingTokens, 0);
    assert.equal(reasonOf(l.admit("svc", false, STREAM)), undefined, "a call that is not inference is not judged");
    clock = Date.UTC(2025, 0, 2, 0, 0, 0);
    assert.equal(reasonOf(l.admit("svc", false, INFERENCE)), undefined, "a new UTC day");
  });

  it("forgets a principal idle for idleMs, but not one with a stream open", async () => {
    const l = limiter({ limits: limitsOf({ concurrentStreams: 2, requestsPerSecond: 5 }), tickMs: 10, idleMs: 1000 });
    l.admit("idle", false, PLAIN);
    const open = l.admit("streaming", false, STREAM);
    assert.equal(l.tracked(), 2);
    clock += 1000;
    const until = Date.now() + 5000;
    while (l.tracked() !== 1 && Date.now() < until) await sleep(10);
    assert.equal(l.tracked(), 1, "the idle one is forgotten");
    open.end?.(0);
    clock += 1000;
    while (l.tracked() !== 0 && Date.now() < until) await sleep(10);
    assert.equal(l.tracked(), 0);
  });
});
