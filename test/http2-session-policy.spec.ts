import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { sessionVerdict, sweepIntervalMs } from "../src/transport/http2-session-policy.js";
import type { SessionState, SessionVerdict } from "../src/transport/http2-session-policy.js";

const T = { handshakeMs: 10_000, idleMs: 300_000, pingIntervalMs: 5_000, pingTimeoutMs: 5_000 };

/** A session opened at 0 whose handshake was done at 100, with no stream ever opened. */
const fresh: SessionState = {
  openedAt: 0,
  handshakeDoneAt: 100,
  openStreams: 0,
  idleSince: 0,
  pingSentAt: undefined,
  pingAnsweredAt: undefined,
  closing: false,
};

describe("what the gateway does with an HTTP/2 session", () => {
  const cases: { name: string; state: Partial<SessionState>; now: number; expect: SessionVerdict }[] = [
    {
      name: "keeps a session still in its handshake before the headers timeout",
      state: { handshakeDoneAt: undefined },
      now: 9_999,
      expect: { action: "keep" },
    },
    {
      name: "destroys a session whose client has not finished the preface and SETTINGS in time",
      state: { handshakeDoneAt: undefined },
      now: 10_000,
      expect: { action: "destroy", reason: "handshake-timeout" },
    },
    {
      name: "sends no PING before the interval has passed since the handshake",
      state: {},
      now: 5_099,
      expect: { action: "keep" },
    },
    { name: "PINGs a session once the interval has passed", state: {}, now: 5_100, expect: { action: "ping" } },
    {
      name: "counts the interval from the last answered PING",
      state: { pingAnsweredAt: 20_000 },
      now: 24_999,
      expect: { action: "keep" },
    },
    {
      name: "sends no second PING while one awaits its answer",
      state: { pingSentAt: 20_000 },
      now: 24_999,
      expect: { action: "keep" },
    },
    {
      name: "destroys a session that leaves a PING unanswered for the PING timeout (dead peer, or shut by nghttp2)",
      state: { pingSentAt: 20_000 },
      now: 25_000,
      expect: { action: "destroy", reason: "ping-timeout" },
    },
    {
      name: "destroys an unanswering session even with streams open and GOAWAY already sent",
      state: { pingSentAt: 20_000, openStreams: 3, idleSince: undefined, closing: true },
      now: 25_000,
      expect: { action: "destroy", reason: "ping-timeout" },
    },
    {
      name: "sends GOAWAY to a session without a stream for the idle timeout, however recently it answered a PING",
      state: { idleSince: 1_000, pingAnsweredAt: 300_999 },
      now: 301_000,
      expect: { action: "goaway", reason: "idle" },
    },
    {
      name: "never calls a session with an open stream idle",
      state: { openStreams: 1, idleSince: undefined, pingAnsweredAt: 999_000 },
      now: 1_000_000,
      expect: { action: "keep" },
    },
    {
      name: "counts idleness from the end of the last stream",
      state: { idleSince: 700_000, pingAnsweredAt: 999_000 },
      now: 999_999,
      expect: { action: "keep" },
    },
    {
      name: "neither PINGs nor closes again a session that is already closing",
      state: { closing: true, idleSince: 0 },
      now: 1_000_000,
      expect: { action: "keep" },
    },
  ];
  for (const c of cases) {
    it(c.name, () => {
      assert.deepEqual(sessionVerdict({ ...fresh, ...c.state }, c.now, T), c.expect);
    });
  }

  it("is applied four times per shortest timeout, between every 20 ms and every second", () => {
    assert.equal(sweepIntervalMs(T), 1000);
    assert.equal(sweepIntervalMs({ ...T, handshakeMs: 500 }), 125);
    assert.equal(sweepIntervalMs({ ...T, pingTimeoutMs: 10 }), 20);
  });
});
