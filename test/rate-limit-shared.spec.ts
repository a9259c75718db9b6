import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Redis } from "ioredis";
import type { LimitSet } from "../src/config/limits-config.js";
import { errorReason } from "../src/errors/gateway-error.js";
import { RetryInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";
import { LIMITS_LOCAL_MSG, LIMITS_SHARED_AGAIN_MSG, LIMITS_SHARED_MSG, createLimiter } from "../src/limits/limiter.js";
import type { Admission, Limiter } from "../src/limits/limiter.js";
import { createRedisLink } from "../src/redis/redis-link.js";
import type { RedisLink } from "../src/redis/redis-link.js";
import { captureLogs } from "./helpers/log-capture.js";
import type { LogCapture } from "./helpers/log-capture.js";
import { startRedis } from "./helpers/redis-server.js";
import type { RedisServer } from "./helpers/redis-server.js";

async function waitFor(what: string, cond: () => boolean | Promise<boolean>, ms = 8000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await sleep(10);
  }
}

const PLAIN = { streaming: false, metered: false };
const STREAM = { streaming: true, metered: false };
const INFERENCE = { streaming: false, metered: true };

const reasonOf = (a: Admission): string | undefined =>
  a.refusal === undefined ? undefined : (errorReason(a.refusal) ?? "no reason");

/**
 * Admits calls of `name` on `limiter` about every millisecond for `ms`, and counts what was
 * admitted and what was refused, by reason.
 */
async function hammer(
  limiter: Limiter,
  name: string,
  ms: number,
): Promise<{ ok: number; refused: Map<string, number> }> {
  const refused = new Map<string, number>();
  let ok = 0;
  const end = performance.now() + ms;
  while (performance.now() < end) {
    const a = limiter.admit(name, false, PLAIN);
    if (a.refusal === undefined) ok++;
    else refused.set(reasonOf(a)!, (refused.get(reasonOf(a)!) ?? 0) + 1);
    await sleep(1);
  }
  return { ok, refused };
}

/*
 * Two limiters, each on its own Redis link like two gateway replicas, share one real redis-server.
 * Every principal is new to the test that uses it, so its buckets start full.
 */
describe("rate limits shared by two replicas through Redis", { timeout: 60_000 }, () => {
  let redis: RedisServer;
  let raw: Redis;
  const links: RedisLink[] = [];
  const limiters: Limiter[] = [];
  let logsA: LogCapture;
  let logsB: LogCapture;
  let a: Limiter;
  let b: Limiter;

  const replica = (limits: Record<string, LimitSet>, logs: LogCapture): Limiter => {
    // A generous bound: a command timing out on a loaded machine would switch to local shares mid-count.
    const link = createRedisLink({ url: redis.url, commandTimeoutMs: 1000, log: logs.log });
    links.push(link);
    const principals = Object.fromEntries(Object.entries(limits));
    const limiter = createLimiter({ limits: { default: {}, principals }, redis: link, tickMs: 100, log: logs.log });
    limiters.push(limiter);
    return limiter;
  };

  const LIMITS: Record<string, LimitSet> = {
    rate: { requestsPerSecond: 20, burst: 10 },
    outage: { requestsPerSecond: 20, burst: 10 },
    streams: { concurrentStreams: 2 },
    // Per day, not per minute: a test crossing a minute's end would start over from 0.
    tokens: { tokensPerDay: 100 },
  };

  before(async () => {
    redis = await startRedis();
    raw = new Redis(redis.url);
    raw.on("error", () => undefined); // the server is stopped on purpose below
    logsA = captureLogs();
    logsB = captureLogs();
    a = replica(LIMITS, logsA);
    b = replica(LIMITS, logsB);
    await waitFor("both replicas share the limits and count each other", () =>
      limiters.every((l) => l.shared() && l.replicas() === 2),
    );
  });

  after(async () => {
    await Promise.all(limiters.map((l) => l.close()));
    await Promise.all(links.map((l) => l.close()));
    raw.disconnect();
    await redis.stop();
  });

  it("says once that the limits are shared", () => {
    assert.equal(logsA.find(LIMITS_SHARED_MSG).length, 1);
    assert.equal(logsB.find(LIMITS_SHARED_MSG).length, 1);
  });

  it("admits on both together at most the rate times the time plus the burst (plus one credit per replica), not twice that", async () => {
    const start = performance.now();
    const [onA, onB] = await Promise.all([hammer(a, "rate", 3000), hammer(b, "rate", 3000)]);
    const seconds = (performance.now() - start) / 1000;
    const ok = onA.ok + onB.ok;
    const bound = 20 * seconds + 10 + 2;
    assert.ok(ok <= bound, `admitted ${ok} in ${seconds.toFixed(2)} s, more than ${bound.toFixed(1)}`);
    // Not starved either: well above what one replica's half would give (the broken "N × less" case).
    assert.ok(ok >= 20 * seconds * 0.6, `admitted only ${ok} in ${seconds.toFixed(2)} s`);
    assert.ok(onA.ok > 0 && onB.ok > 0, "both replicas admitted calls");
    for (const r of [onA, onB]) assert.deepEqual([...r.refused.keys()], ["RATE_LIMITED"]);
  });

  it("refuses with RATE_LIMITED and a RetryInfo that says when a token comes", () => {
    let refusal: Admission | undefined;
    for (let i = 0; i < 50 && refusal === undefined; i++) {
      const x = a.admit("rate", false, PLAIN);
      if (x.refusal !== undefined) refusal = x;
    }
    assert.ok(refusal?.refusal !== undefined, "the exhausted bucket refuses");
    assert.equal(reasonOf(refusal), "RATE_LIMITED");
    const retry = refusal.refusal.findDetails(RetryInfoSchema)[0];
    const ms = Number(retry?.retryDelay?.seconds ?? 0n) * 1000 + (retry?.retryDelay?.nanos ?? 0) / 1e6;
    assert.ok(ms > 0 && ms <= 1000, `retry after ${ms} ms`);
    assert.equal(refusal.remainingRequests, 0);
  });

  it("caps concurrent streams across replicas: a cold replica's first stream goes on credit, the next is refused until one ends", async () => {
    const onA = [a.admit("streams", false, STREAM)];
    assert.equal(reasonOf(onA[0]!), undefined, "A opens one on credit");
    assert.equal(reasonOf(a.admit("streams", false, STREAM)), "TOO_MANY_STREAMS", "a second at once waits for Redis");
    await waitFor("A reserved slots and opens a second", () => {
      const x = a.admit("streams", false, STREAM);
      if (x.refusal === undefined) onA.push(x);
      return x.refusal === undefined;
    });
    await waitFor("Redis counts A's two streams", async () => {
      const held = await raw.hgetall("ogw:v1:rl:streams:p%3Astreams");
      return Object.values(held).some((v) => Number(v.split("|")[0]) >= 2);
    });
    const first = b.admit("streams", false, STREAM);
    assert.equal(reasonOf(first), undefined, "B never saw the principal: one stream on credit (README)");
    await waitFor("B hears that every slot is taken", () => reasonOf(b.admit("streams", false, STREAM)) !== undefined);
    const refused = b.admit("streams", false, STREAM);
    assert.equal(reasonOf(refused), "TOO_MANY_STREAMS");
    assert.equal(reasonOf(a.admit("streams", false, STREAM)), "TOO_MANY_STREAMS", "A is full too");

    for (const s of [...onA, first]) s.end?.(0);
    await waitFor("a slot is free again on B", () => {
      const x = b.admit("streams", false, STREAM);
      x.end?.(0);
      return x.refusal === undefined;
    });
  });

  it("counts tokens charged on one replica against the quota on the other", async () => {
    const first = a.admit("tokens", false, INFERENCE);
    assert.equal(reasonOf(first), undefined);
    first.end?.(120); // one call may overrun the quota: a running call is never cut
    assert.equal(reasonOf(a.admit("tokens", false, INFERENCE)), "TOKEN_QUOTA_EXCEEDED", "A knows at once");
    await waitFor("B learns A's charge within a tick or two", () => {
      const x = b.admit("tokens", false, INFERENCE);
      x.end?.(0);
      return reasonOf(x) === "TOKEN_QUOTA_EXCEEDED";
    });
    const refused = b.admit("tokens", false, INFERENCE);
    assert.equal(refused.remainingTokens, 0);
    const retry = refused.refusal!.findDetails(RetryInfoSchema)[0];
    const ms = Number(retry?.retryDelay?.seconds ?? 0n) * 1000 + (retry?.retryDelay?.nanos ?? 0) / 1e6;
    assert.ok(ms > 0 && ms <= 86_400_000, `until the UTC day ends: ${ms} ms`);
  });

  it("while Redis is down, each replica enforces its share, and no call fails for it; shared again when it is back", async () => {
    // Both replicas hold some of the bucket before the outage.
    await Promise.all([hammer(a, "outage", 300), hammer(b, "outage", 300)]);
    await redis.kill();
    await waitFor("both replicas noticed", () => limiters.every((l) => !l.shared()));
    assert.equal(logsA.find(LIMITS_LOCAL_MSG).length, 1, "one warning per outage");

    const start = performance.now();
    const [onA, onB] = await Promise.all([hammer(a, "outage", 2000), hammer(b, "outage", 2000)]);
    const seconds = (performance.now() - start) / 1000;
    const ok = onA.ok + onB.ok;
    // Each: its share (10/s, burst 5) plus at most its leased pool (its share of the burst, 5).
    const bound = 20 * seconds + 10 + 10;
    assert.ok(ok <= bound, `admitted ${ok} in ${seconds.toFixed(2)} s alone, more than ${bound.toFixed(1)}`);
    assert.ok(onA.ok >= 10 * seconds * 0.6 && onB.ok >= 10 * seconds * 0.6, `each keeps serving: ${onA.ok}, ${onB.ok}`);
    for (const r of [onA, onB]) assert.deepEqual([...r.refused.keys()], ["RATE_LIMITED"], "only the limit refuses");

    await redis.restart();
    await waitFor("both share again", () => limiters.every((l) => l.shared()));
    assert.equal(logsA.find(LIMITS_SHARED_AGAIN_MSG).length, 1);
    await waitFor("A admits from the shared bucket again", () => a.admit("outage", false, PLAIN).refusal === undefined);
  });
});
