import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { limitsEnabled, limitsFor, parseLimits } from "../src/config/limits-config.js";
import type { LimitsConfig } from "../src/config/limits-config.js";
import { ConfigError, loadConfig } from "../src/config/load-config.js";
import { quotaRetryAfterMs, windowEnd, windowIndex } from "../src/limits/quota-window.js";
import type { WindowUse } from "../src/limits/quota-window.js";
import {
  ANSWER_WAIT_MS,
  applyRequestAnswer,
  newRequestHolding,
  remainingRequests,
  reportUrgent,
  requestReport,
  requestVerdict,
  sendRequestReport,
  takeRequest,
} from "../src/limits/request-allowance.js";
import type { RequestHolding, RequestLimit } from "../src/limits/request-allowance.js";
import {
  STREAM_FULL_BACKOFF_MS,
  applyStreamAnswer,
  closeStream,
  newStreamHolding,
  openStream,
  refuseStream,
  streamReport,
  streamReportMatters,
  streamVerdict,
} from "../src/limits/stream-allowance.js";
import type { StreamHolding } from "../src/limits/stream-allowance.js";
import {
  applyTokenAnswer,
  chargeTokens,
  newTokenHolding,
  remainingTokens,
  sendTokenReport,
  tokenReportFailed,
  tokenVerdict,
} from "../src/limits/token-allowance.js";
import { msUntilTokens, refilled, shareOf } from "../src/limits/token-bucket.js";
import { tokensOf } from "../src/pipeline/rate-limit-hook.js";
import { newRpcInfo } from "../src/observability/rpc-info.js";

const T0 = 1_700_000_000_000; // a fixed "now" (ms)

describe("token bucket arithmetic", () => {
  const cases: { name: string; level: number; at: number; now: number; rate: number; cap: number; want: number }[] = [
    { name: "refills at the rate", level: 0, at: 0, now: 500, rate: 4, cap: 10, want: 2 },
    { name: "never above the capacity", level: 9, at: 0, now: 10_000, rate: 4, cap: 10, want: 10 },
    { name: "a debt refills too", level: -3, at: 0, now: 1_000, rate: 2, cap: 10, want: -1 },
    { name: "a clock going back adds nothing", level: 1, at: 1_000, now: 500, rate: 2, cap: 10, want: 1 },
    { name: "a level above a lowered capacity is cut to it", level: 8, at: 0, now: 0, rate: 1, cap: 5, want: 5 },
  ];
  for (const c of cases) {
    it(c.name, () => assert.equal(refilled(c.level, c.at, c.now, c.rate, c.cap), c.want));
  }

  it("says how long until a token, rounded up, 0 when there is one", () => {
    assert.equal(msUntilTokens(1, 1, 5), 0);
    assert.equal(msUntilTokens(0, 1, 5), 200);
    assert.equal(msUntilTokens(0.5, 1, 3), 167);
    assert.equal(msUntilTokens(-2, 1, 1), 3000);
    assert.equal(msUntilTokens(0, 1, 0), Number.POSITIVE_INFINITY);
  });

  it("splits a limit between the replicas it knows of, never below the floor", () => {
    assert.equal(shareOf(10, 2, 1), 5);
    assert.equal(shareOf(10, 0, 1), 10, "no replica known counts as one");
    assert.equal(shareOf(1, 4, 1), 1);
  });
});

describe("quota windows", () => {
  it("are UTC minutes and days", () => {
    const t = Date.UTC(2024, 4, 6, 23, 59, 30);
    assert.equal(windowEnd(t, "minute"), Date.UTC(2024, 4, 6, 24, 0, 0));
    assert.equal(windowEnd(t, "day"), Date.UTC(2024, 4, 7));
    assert.equal(windowIndex(t + 30_000, "minute"), windowIndex(t, "minute") + 1);
  });

  const w = (limit: number | undefined, used: number, endsAt: number): WindowUse => ({ limit, used, endsAt });
  const cases: { name: string; windows: WindowUse[]; want: number | undefined }[] = [
    {
      name: "tokens left in every window: the call may start",
      windows: [w(100, 99, 60), w(1000, 0, 900)],
      want: undefined,
    },
    { name: "no limit: the call may start", windows: [w(undefined, 5000, 60)], want: undefined },
    { name: "minute used up: until the minute ends", windows: [w(100, 100, 60), w(1000, 100, 900)], want: 50 },
    { name: "overrun by the last call: still until the minute ends", windows: [w(100, 180, 60)], want: 50 },
    { name: "both used up: until the later end", windows: [w(100, 100, 60), w(1000, 1000, 900)], want: 890 },
    { name: "never 0, even at the very end", windows: [w(1, 1, 10)], want: 1 },
  ];
  for (const c of cases) {
    it(c.name, () => assert.equal(quotaRetryAfterMs(c.windows, 10), c.want));
  }
});

describe("the request allowance of one replica", () => {
  const limit: RequestLimit = { ratePerSec: 10, burst: 6 };
  const holding = (o: Partial<RequestHolding>): RequestHolding => ({ ...newRequestHolding(limit, 2, T0), ...o });

  const verdicts: {
    name: string;
    h: Partial<RequestHolding>;
    shared: boolean;
    want: ReturnType<typeof requestVerdict>;
  }[] = [
    {
      name: "a leased token admits the call",
      h: { pool: 2, poolExpiresAt: T0 + 1 },
      shared: true,
      want: { admit: true, from: "pool" },
    },
    {
      name: "a lease that expired admits nothing",
      h: { pool: 2, poolExpiresAt: T0, credit: 0 },
      shared: true,
      want: { admit: false, retryAfterMs: ANSWER_WAIT_MS },
    },
    {
      name: "a principal seen first gets one call on credit",
      h: {},
      shared: true,
      want: { admit: true, from: "credit" },
    },
    {
      name: "no credit before the shared bucket has a token again: retry then",
      h: { credit: 1, creditFrom: T0 + 300 },
      shared: true,
      want: { admit: false, retryAfterMs: 300 },
    },
    {
      name: "credit used, answer on its way: retry soon",
      h: { credit: 0 },
      shared: true,
      want: { admit: false, retryAfterMs: ANSWER_WAIT_MS },
    },
    {
      name: "Redis unreachable: the local share admits",
      h: { credit: 0, localLevel: 1, localAt: T0 },
      shared: false,
      want: { admit: true, from: "local" },
    },
    {
      name: "Redis unreachable, local share empty: retry when it refills (rate / 2 replicas = 5/s)",
      h: { credit: 1, localLevel: 0.5, localAt: T0 },
      shared: false,
      want: { admit: false, retryAfterMs: 100 },
    },
    {
      name: "Redis unreachable: leased tokens still count",
      h: { pool: 1, poolExpiresAt: T0 + 1, localLevel: 0, localAt: T0 },
      shared: false,
      want: { admit: true, from: "pool" },
    },
  ];
  for (const c of verdicts) {
    it(c.name, () => assert.deepEqual(requestVerdict(holding(c.h), limit, 2, c.shared, T0), c.want));
  }

  it("starts with a full local share (burst / replicas) and one call of credit", () => {
    const h = newRequestHolding(limit, 2, T0);
    assert.equal(h.localLevel, 3);
    assert.equal(h.credit, 1);
  });

  it("charges a call on credit with the next report, which also leases the replica's share", () => {
    const h = holding({});
    takeRequest(h, "credit", limit, 2, T0);
    const r = requestReport(h, limit, 2, T0, false);
    assert.deepEqual(r, { used: 0, debt: 1, refund: 0, want: 3 });
    assert.ok(reportUrgent(r));
    sendRequestReport(h, r);
    assert.equal(h.debt, 0);
    applyRequestAnswer(h, { grant: 3, held: 3, tokens: 2, waitMs: 0 }, T0, T0 + 2, 10_000);
    assert.deepEqual(
      { pool: h.pool, until: h.poolExpiresAt, credit: h.credit, from: h.creditFrom, demand: h.demand },
      { pool: 3, until: T0 + 10_000, credit: 1, from: T0 + 2, demand: 0 },
    );
  });

  it("leases as many as were asked for since the last answer, up to the burst", () => {
    const h = holding({ demand: 9 });
    assert.equal(requestReport(h, limit, 2, T0, false).want, 6);
  });

  it("leases nothing while the pool is above half the share, or the bucket is known empty", () => {
    assert.equal(requestReport(holding({ pool: 2, poolExpiresAt: T0 + 1 }), limit, 2, T0, false).want, 0);
    assert.equal(requestReport(holding({ creditFrom: T0 + 50 }), limit, 2, T0, false).want, 0);
  });

  it("reports used pool tokens only with the tick: they are not urgent", () => {
    const h = holding({ pool: 3, poolExpiresAt: T0 + 1 });
    takeRequest(h, "pool", limit, 2, T0);
    const r = requestReport(h, limit, 2, T0, false);
    assert.deepEqual(r, { used: 1, debt: 0, refund: 0, want: 0 });
    assert.ok(!reportUrgent(r));
  });

  it("gives the pool back when the principal is forgotten", () => {
    const h = holding({ pool: 2, poolExpiresAt: T0 + 1, used: 1 });
    assert.deepEqual(requestReport(h, limit, 2, T0, true), { used: 1, debt: 0, refund: 2, want: 0 });
  });

  it("takes Redis' count of its lease as the truth, minus what it used while the answer travelled", () => {
    const h = holding({ pool: 4, poolExpiresAt: T0 + 1 });
    const r = requestReport(h, limit, 2, T0, false);
    sendRequestReport(h, r);
    takeRequest(h, "pool", limit, 2, T0 + 1); // used while the report is out
    applyRequestAnswer(h, { grant: 0, held: 2, tokens: 0, waitMs: 100 }, T0, T0 + 2, 10_000);
    assert.equal(h.pool, 1, "Redis said 2 are held (it had expired some), one was used meanwhile");
    assert.equal(h.creditFrom, T0 + 102);
  });

  it("tells the remaining requests: the pool plus the shared bucket's estimate, less uncharged credit", () => {
    const h = holding({ pool: 2, poolExpiresAt: T0 + 1, sharedTokens: 1.5, sharedAt: T0 - 100, debt: 1 });
    assert.equal(remainingRequests(h, limit, 2, true, T0), 3); // 2 + floor(1.5 + 1 - 1)
    assert.equal(remainingRequests(holding({ localLevel: 2.7, localAt: T0 }), limit, 2, false, T0), 2);
  });
});

describe("the stream allowance of one replica", () => {
  const holding = (o: Partial<StreamHolding>): StreamHolding => ({ ...newStreamHolding(), ...o });
  const verdicts: { name: string; h: Partial<StreamHolding>; shared: boolean; admit: boolean; from?: string }[] = [
    {
      name: "within the reservation",
      h: { open: 1, reserved: 2, reservedUntil: T0 + 1 },
      shared: true,
      admit: true,
      from: "reserved",
    },
    { name: "a first stream on credit", h: {}, shared: true, admit: true, from: "credit" },
    {
      name: "reservation used up, no credit: refused",
      h: { open: 2, reserved: 2, reservedUntil: T0 + 1, credit: 0 },
      shared: true,
      admit: false,
    },
    {
      name: "an expired reservation does not count",
      h: { open: 0, reserved: 2, reservedUntil: T0, credit: 0 },
      shared: true,
      admit: false,
    },
    {
      name: "Redis unreachable: within the share (4 / 2)",
      h: { open: 1, credit: 0 },
      shared: false,
      admit: true,
      from: "local",
    },
    { name: "Redis unreachable: the share is full", h: { open: 2 }, shared: false, admit: false },
  ];
  for (const c of verdicts) {
    it(c.name, () => {
      const v = streamVerdict(holding(c.h), 4, 2, c.shared, T0);
      assert.equal(v.admit, c.admit);
      if (v.admit) assert.equal(v.from, c.from);
    });
  }

  it("while Redis is unreachable still lets each replica open one stream when the limit is below the replicas", () => {
    assert.equal(streamVerdict(holding({}), 1, 3, false, T0).admit, true);
  });

  const reports: { name: string; h: Partial<StreamHolding>; releasing?: boolean; want: number }[] = [
    { name: "idle: gives the reservation back", h: { reserved: 2 }, want: 0 },
    { name: "a stream refused with none open: the share", h: { demand: 1 }, want: 2 },
    { name: "busy: one slot ahead of what is open", h: { open: 3 }, want: 4 },
    { name: "never more than the limit", h: { open: 4 }, want: 4 },
    { name: "as many as were wanted since the last answer", h: { open: 1, demand: 3 }, want: 3 },
    {
      name: "Redis was full a moment ago: only what is held",
      h: { open: 1, reserved: 1, growAfter: T0 + 1, demand: 3 },
      want: 1,
    },
    { name: "forgotten: nothing", h: { open: 0, reserved: 2 }, releasing: true, want: 0 },
  ];
  for (const c of reports) {
    it(`asks for a reservation: ${c.name}`, () => {
      assert.equal(streamReport(holding(c.h), 4, 2, T0, c.releasing ?? false).want, c.want);
    });
  }

  it("reports a change only when it grows, registers streams past it, or shrinks by more than a slot", () => {
    const h = holding({ open: 3, reserved: 4, reservedUntil: T0 + 1 });
    assert.ok(!streamReportMatters(h, streamReport(h, 8, 2, T0, false), 8, 2), "one slot ahead already");
    openStream(h, "reserved");
    assert.ok(streamReportMatters(h, streamReport(h, 8, 2, T0, false), 8, 2), "grow to 5");
    const big = holding({ open: 1, reserved: 6, reservedUntil: T0 + 1 });
    assert.ok(streamReportMatters(big, streamReport(big, 8, 2, T0, false), 8, 2), "shrink from 6 to the share, 4");
    const near = holding({ open: 3, reserved: 5, reservedUntil: T0 + 1 });
    assert.ok(
      !streamReportMatters(near, streamReport(near, 8, 2, T0, false), 8, 2),
      "5 for 4 wanted: not worth a trip",
    );
  });

  it("after an answer without room: no credit, and no new growth asked for during the backoff", () => {
    const h = holding({});
    openStream(h, "credit");
    refuseStream(h);
    const r = streamReport(h, 4, 2, T0, false);
    assert.equal(r.want, 2);
    applyStreamAnswer(h, r, { mine: 1, others: 3 }, 4, T0, T0 + 1, 10_000);
    assert.deepEqual(
      { reserved: h.reserved, credit: h.credit, growAfter: h.growAfter, until: h.reservedUntil },
      { reserved: 1, credit: 0, growAfter: T0 + 1 + STREAM_FULL_BACKOFF_MS, until: T0 + 10_000 },
    );
    closeStream(h);
    assert.equal(h.open, 0);
    assert.equal(streamReport(h, 4, 2, T0 + 200, false).want, 0, "the last stream ended: all goes back");
  });
});

describe("the token quotas of one replica", () => {
  const minuteOnly = { perMinute: 100, perDay: undefined };
  it("admits a principal it knows nothing of, and refuses once its charges reach the limit until the minute ends", () => {
    const now = Date.UTC(2024, 0, 1, 12, 0, 15);
    const h = newTokenHolding();
    assert.equal(tokenVerdict(h, minuteOnly, 1, true, now), undefined);
    chargeTokens(h, 60, now);
    assert.equal(remainingTokens(h, minuteOnly, 1, true, now), 40);
    chargeTokens(h, 60, now);
    assert.equal(remainingTokens(h, minuteOnly, 1, true, now), 0);
    assert.equal(tokenVerdict(h, minuteOnly, 1, true, now), 45_000);
  });

  it("counts what Redis answered plus its own charges Redis has not counted yet", () => {
    const now = Date.UTC(2024, 0, 1, 12, 0, 0);
    const h = newTokenHolding();
    chargeTokens(h, 30, now);
    assert.equal(sendTokenReport(h), 30);
    chargeTokens(h, 5, now); // while the report is out
    assert.equal(remainingTokens(h, minuteOnly, 2, true, now), 65, "nothing answered: its own 35");
    applyTokenAnswer(h, { minuteUsed: 80, dayUsed: 80, minuteMsLeft: 60_000, dayMsLeft: 9e6 }, now);
    assert.equal(remainingTokens(h, minuteOnly, 2, true, now), 15, "100 - 80 answered (its 30 in) - 5 not counted yet");
    assert.equal(h.pending, 5, "still to send");
    assert.equal(tokenVerdict(h, minuteOnly, 2, true, now + 60_000), undefined, "a new minute starts from 0");
    assert.equal(
      remainingTokens(h, minuteOnly, 2, true, now + 60_000),
      100,
      "old charges not sent yet do not count in it",
    );
  });

  it("puts an unanswered charge back, to go with the next report", () => {
    const h = newTokenHolding();
    h.sending = 7;
    tokenReportFailed(h);
    assert.deepEqual([h.pending, h.sending], [7, 0]);
  });

  it("while Redis is unreachable also keeps to its share of each window", () => {
    const now = Date.UTC(2024, 0, 1, 12, 0, 0);
    const h = newTokenHolding();
    chargeTokens(h, 50, now);
    sendTokenReport(h); // sent and answered before the outage
    applyTokenAnswer(h, { minuteUsed: 50, dayUsed: 50, minuteMsLeft: 60_000, dayMsLeft: 1e6 }, now);
    assert.equal(tokenVerdict(h, minuteOnly, 2, true, now), undefined, "shared: 50 of 100");
    assert.equal(tokenVerdict(h, minuteOnly, 2, false, now), 60_000, "alone: its own 50 is its share of 100 / 2");
  });

  it("charges Ollama's counts, or a stream's messages when the counts never came", () => {
    const info = newRpcInfo("1.2.3.4");
    info.messages = 7;
    assert.equal(tokensOf(info, true), 7);
    info.promptTokens = 12;
    info.completionTokens = 30;
    assert.equal(tokensOf(info, true), 42);
    assert.equal(tokensOf(newRpcInfo(undefined), false), 0);
  });
});

describe("the limits section of the config file", () => {
  const parse = (section: unknown, env: Record<string, string> = {}): { limits: LimitsConfig; problems: string[] } => {
    const problems: string[] = [];
    return { limits: parseLimits(section, env, problems), problems };
  };

  it("is off when nothing is configured", () => {
    const { limits, problems } = parse(undefined);
    assert.deepEqual(problems, []);
    assert.ok(!limitsEnabled(limits));
    assert.ok(!limitsEnabled(loadConfig({}).limits));
  });

  it("merges a principal's override field by field over the default; null lifts a limit", () => {
    const { limits, problems } = parse({
      default: { requestsPerSecond: 5, burst: 10, tokensPerDay: 1000 },
      principals: { batch: { requestsPerSecond: 50, tokensPerDay: null }, "10.0.0.7": { concurrentStreams: 2 } },
    });
    assert.deepEqual(problems, []);
    assert.deepEqual(limitsFor(limits, "someone"), { requestsPerSecond: 5, burst: 10, tokensPerDay: 1000 });
    assert.deepEqual(limitsFor(limits, "batch"), { requestsPerSecond: 50, burst: 10 });
    assert.deepEqual(limitsFor(limits, "10.0.0.7"), {
      requestsPerSecond: 5,
      burst: 10,
      tokensPerDay: 1000,
      concurrentStreams: 2,
    });
  });

  it("gives a rate without a burst the rate rounded up as its burst", () => {
    assert.deepEqual(limitsFor(parse({ default: { requestsPerSecond: 2.5 } }).limits, "x"), {
      requestsPerSecond: 2.5,
      burst: 3,
    });
    assert.deepEqual(limitsFor(parse({ default: { requestsPerSecond: 0.2 } }).limits, "x").burst, 1);
  });

  it("treats a principal named __proto__ as any other", () => {
    const { limits } = parse({ principals: JSON.parse('{"__proto__": {"concurrentStreams": 1}}') as unknown });
    assert.equal(limitsFor(limits, "__proto__").concurrentStreams, 1);
    assert.equal(limitsFor(limits, "other").concurrentStreams, undefined);
  });

  it("takes RATE_LIMIT_RPS and RATE_LIMIT_BURST as the default request limit, over the file's", () => {
    const { limits } = parse(
      { default: { requestsPerSecond: 1, burst: 1, concurrentStreams: 3 } },
      { RATE_LIMIT_RPS: "20", RATE_LIMIT_BURST: "40" },
    );
    assert.deepEqual(limitsFor(limits, "x"), { requestsPerSecond: 20, burst: 40, concurrentStreams: 3 });
    const rpsOnly = parse({ default: { requestsPerSecond: 1, burst: 1 } }, { RATE_LIMIT_RPS: "8" }).limits;
    assert.deepEqual(limitsFor(rpsOnly, "x"), { requestsPerSecond: 8, burst: 8 }, "the file's burst was for its rate");
    const c = loadConfig({ RATE_LIMIT_RPS: "3", RATE_LIMIT_BURST: "6" });
    assert.deepEqual(limitsFor(c.limits, "127.0.0.1"), { requestsPerSecond: 3, burst: 6 });
  });

  it("reports every problem at once, naming the setting", () => {
    const { problems } = parse(
      {
        default: { requestsPerSecond: -1, burst: 2.5, concurrency: 3 },
        principals: { a: { tokensPerMinute: "many" }, b: null },
        extra: true,
      },
      { RATE_LIMIT_RPS: "fast" },
    );
    for (const bit of [
      "limits.default.requestsPerSecond",
      "limits.default.burst",
      "limits.default.concurrency",
      'limits.principals."a".tokensPerMinute',
      'limits.principals."b"',
      "limits.extra",
      "RATE_LIMIT_RPS",
    ]) {
      assert.ok(
        problems.some((p) => p.includes(bit)),
        `${bit} missing from ${problems.join(" | ")}`,
      );
    }
    assert.throws(
      () => loadConfig({ RATE_LIMIT_BURST: "5" }),
      (e: unknown) => e instanceof ConfigError && e.message.includes("RATE_LIMIT_BURST needs a request rate"),
    );
  });
});
