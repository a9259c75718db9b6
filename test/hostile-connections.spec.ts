// Attacks on the gateway's port by clients that misbehave on purpose, each
// against a gateway running as its own process, so its descriptors can be
// counted from /proc/<pid>/fd. Each test states the attack, then what must
// hold: the connection ends in bounded time and nothing stays behind.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import * as http2 from "node:http2";
import { fromBinary } from "@bufbuild/protobuf";
import {
  HealthCheckRequestSchema,
  HealthCheckResponseSchema,
  HealthCheckResponse_ServingStatus as ServingStatus,
} from "../src/gen/grpc/health/v1/health_pb.js";
import { startSimulator } from "../src/simulator/simulator.js";
import type { Simulator } from "../src/simulator/simulator.js";
import { spawnGateway } from "./helpers/gateway-process.js";
import type { GatewayProcess } from "./helpers/gateway-process.js";
import {
  FrameType,
  PREFACE,
  PROTOCOL_ERRORS,
  connectRaw,
  eventually,
  fdCount,
  goawayCode,
  h2Frame,
  h2From,
  hasFrame,
  rawH2,
  within,
} from "./helpers/hostile-clients.js";
import type { RawConnection } from "./helpers/hostile-clients.js";
import { encode, frame } from "./helpers/raw-grpc.js";

const CHECK_BODY = frame(encode(HealthCheckRequestSchema, { service: "" }));

/** Health/Check on an existing session: the serving status, or a string saying how it failed. */
function check(session: http2.ClientHttp2Session, timeoutMs = 10_000): Promise<ServingStatus | string> {
  return new Promise((resolve) => {
    let stream: http2.ClientHttp2Stream;
    try {
      stream = session.request({
        ":method": "POST",
        ":path": "/grpc.health.v1.Health/Check",
        "content-type": "application/grpc",
        te: "trailers",
      });
    } catch (e) {
      resolve(`request failed: ${e instanceof Error ? e.message : String(e)}`);
      return;
    }
    const timer = setTimeout(() => {
      stream.close(http2.constants.NGHTTP2_CANCEL);
      resolve("timed out");
    }, timeoutMs);
    const chunks: Buffer[] = [];
    stream.on("data", (c: Buffer) => chunks.push(c));
    stream.on("error", () => {
      // the close says how it ended
    });
    stream.on("close", () => {
      clearTimeout(timer);
      const data = Buffer.concat(chunks);
      resolve(
        data.length >= 5
          ? fromBinary(HealthCheckResponseSchema, data.subarray(5)).status
          : `closed (${stream.rstCode})`,
      );
    });
    stream.end(CHECK_BODY);
  });
}

/** A Health/Watch stream left open; resolves once its first status arrived. */
async function openWatch(session: http2.ClientHttp2Session): Promise<http2.ClientHttp2Stream> {
  const stream = session.request({
    ":method": "POST",
    ":path": "/grpc.health.v1.Health/Watch",
    "content-type": "application/grpc",
    te: "trailers",
  });
  stream.on("error", () => {
    // cancelled by the test
  });
  stream.end(CHECK_BODY);
  await new Promise<void>((resolve, reject) => {
    stream.once("data", () => resolve());
    stream.once("close", () => reject(new Error("the Watch stream closed before its first status")));
  });
  return stream;
}

/** A client session whose connect and close can be awaited. */
function h2Session(url: string, localAddress = "127.0.0.1"): http2.ClientHttp2Session {
  const session = h2From(url, localAddress);
  session.on("error", () => {
    // a refused or reset connection shows as its close
  });
  return session;
}

function sessionClosed(session: http2.ClientHttp2Session): Promise<void> {
  return session.closed && session.destroyed ? Promise.resolve() : new Promise((r) => session.once("close", () => r()));
}

/** The descriptor count once it has held still for a moment (the gateway's upstream and probe connections settle). */
async function settledFds(pid: number): Promise<number> {
  let last = fdCount(pid);
  let same = 0;
  for (let i = 0; i < 100 && same < 5; i++) {
    await new Promise((r) => setTimeout(r, 100));
    const now = fdCount(pid);
    same = now === last ? same + 1 : 0;
    last = now;
  }
  return last;
}

/** Whether the gateway accepts a new connection from `localAddress`: it answers an h2c preface with SETTINGS, or closes. */
async function probe(port: number, localAddress = "127.0.0.1"): Promise<"accepted" | "refused"> {
  let c: RawConnection;
  try {
    c = await connectRaw(port, localAddress);
  } catch {
    return "refused";
  }
  c.socket.write(Buffer.concat([PREFACE, h2Frame(FrameType.SETTINGS, 0, 0)]));
  try {
    await c.until((b) => hasFrame(b, FrameType.SETTINGS), "the server's SETTINGS");
    return "accepted";
  } catch {
    return "refused";
  } finally {
    c.socket.destroy();
    await c.closed;
  }
}

const portOf = (url: string): number => Number(new URL(url).port);

describe("hostile clients against the gateway process", { timeout: 240_000 }, () => {
  let sim: Simulator;
  before(async () => {
    sim = await startSimulator();
  });
  after(async () => {
    await sim.close();
  });

  describe("with the default limits and timeouts", () => {
    let gw: GatewayProcess;
    before(async () => {
      gw = await spawnGateway({ OLLAMA_URL: sim.url });
    });
    after(() => gw.stop());

    it("destroys HTTP/2 connections it answered with GOAWAY for a protocol error although their clients stay: 60 leave no descriptor behind within seconds", async (t) => {
      const session = h2Session(gw.url);
      assert.equal(await check(session), ServingStatus.SERVING);
      session.close();
      await sessionClosed(session);
      const baseline = await settledFds(gw.pid);
      const conns: RawConnection[] = [];
      const codes: Record<string, number | undefined> = {};
      for (const [name, attack] of Object.entries(PROTOCOL_ERRORS)) {
        for (let i = 0; i < 20; i++) {
          const c = await rawH2(portOf(gw.url));
          c.socket.write(attack());
          await c.until((b) => goawayCode(b) !== undefined, `a GOAWAY answering the ${name}`);
          codes[name] = goawayCode(c.received());
          conns.push(c);
        }
      }
      const attackedAt = Date.now();
      // Node 20 keeps every such connection open (60 descriptors more now); Node 24 closes them itself.
      const during = fdCount(gw.pid);
      await eventually(
        () => fdCount(gw.pid) <= baseline + 2,
        "the gateway's descriptors are back to baseline",
        30_000,
        () =>
          `(${fdCount(gw.pid)} open, baseline ${baseline}, ${conns.filter((c) => !c.isClosed).length} clients still connected)`,
      );
      const backAfterMs = Date.now() - attackedAt;
      await within(
        Promise.all(conns.map((c) => c.closed)),
        10_000,
        "every attacking client sees its connection closed",
      );
      t.diagnostic(
        `GOAWAY codes ${JSON.stringify(codes)}; descriptors: baseline ${baseline}, ${during} after the attack, back to baseline ${backAfterMs} ms later`,
      );
      const after = h2Session(gw.url);
      assert.equal(await check(after), ServingStatus.SERVING, "the gateway still serves");
      after.close();
    });

    it("bounds Health/Watch streams at HEALTH_MAX_WATCHERS (1,000): of 4,500, the rest are refused RESOURCE_EXHAUSTED", async () => {
      const sessions = Array.from({ length: 5 }, () => h2Session(gw.url));
      const streams: http2.ClientHttp2Stream[] = [];
      const outcomes = await Promise.all(
        Array.from({ length: 4500 }, (_, i) => {
          const stream = sessions[i % 5]!.request({
            ":method": "POST",
            ":path": "/grpc.health.v1.Health/Watch",
            "content-type": "application/grpc",
            te: "trailers",
          });
          streams.push(stream);
          stream.on("error", () => {
            // cancelled below
          });
          stream.end(CHECK_BODY);
          return new Promise<string>((resolve) => {
            stream.once("data", () => resolve("watching"));
            stream.once("response", (h) => {
              if (h["grpc-status"] !== undefined) resolve(`status ${String(h["grpc-status"])}`);
            });
            stream.once("trailers", (h) => resolve(`status ${String(h["grpc-status"])}`));
            stream.once("close", () => resolve("closed"));
          });
        }),
      );
      const tally: Record<string, number> = {};
      for (const o of outcomes) tally[o] = (tally[o] ?? 0) + 1;
      assert.deepEqual(tally, { watching: 1000, "status 8": 3500 });
      for (const s of streams) s.close(http2.constants.NGHTTP2_CANCEL);
      for (const s of sessions) s.close();
      await Promise.all(sessions.map(sessionClosed));
      // The freed slots are usable again: a new watcher is served.
      const session = h2Session(gw.url);
      const watch = await openWatch(session);
      watch.close(http2.constants.NGHTTP2_CANCEL);
      session.close();
    });
  });

  describe("with short timeouts (headers 500 ms, request 1.5 s, HTTP/2 idle 1.5 s)", () => {
    let gw: GatewayProcess;
    before(async () => {
      gw = await spawnGateway({
        OLLAMA_URL: sim.url,
        HTTP_HEADERS_TIMEOUT_MS: "500",
        HTTP_REQUEST_TIMEOUT_MS: "1500",
        HTTP2_IDLE_TIMEOUT_MS: "1500",
      });
    });
    after(() => gw.stop());

    it("closes HTTP/1.1 connections trickling their headers a byte at a time (slowloris) at the headers timeout", async (t) => {
      const baseline = await settledFds(gw.pid);
      const request = `POST /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: gateway\r\n${"X-Slow: loris\r\n".repeat(40)}\r\n`;
      const conns = await Promise.all(Array.from({ length: 20 }, () => connectRaw(portOf(gw.url))));
      const trickle = conns.map(async (c) => {
        for (let i = 0; i < request.length && !c.isClosed; i++) {
          c.socket.write(request[i]!);
          await new Promise((r) => setTimeout(r, 50));
        }
      });
      await eventually(() => fdCount(gw.pid) >= baseline + 15, "the trickling connections are open", 5_000);
      const closedAfter = await within(
        Promise.all(conns.map((c) => c.closed)),
        20_000,
        "the trickling connections are closed",
      );
      await Promise.all(trickle);
      t.diagnostic(`closed after ${Math.min(...closedAfter)}–${Math.max(...closedAfter)} ms`);
      assert.ok(Math.max(...closedAfter) < 10_000, `closed within 10 s (slowest ${Math.max(...closedAfter)} ms)`);
      assert.ok(
        conns.every((c) => !c.received().toString().includes("200 OK")),
        "none was answered as if its request had arrived",
      );
      await eventually(() => fdCount(gw.pid) <= baseline + 2, "descriptors are back to baseline", 10_000);
    });

    it("closes an HTTP/1.1 connection trickling its body at the request timeout, not at the headers timeout", async (t) => {
      const c = await connectRaw(portOf(gw.url));
      c.socket.write(
        "POST /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
      );
      const trickle = (async () => {
        for (let i = 0; i < 1000 && !c.isClosed; i++) {
          c.socket.write(" ");
          await new Promise((r) => setTimeout(r, 50));
        }
      })();
      const closedAfter = await within(c.closed, 20_000, "the connection trickling its body is closed");
      await trickle;
      t.diagnostic(
        `closed after ${closedAfter} ms; answer: ${JSON.stringify(c.received().toString().split("\r\n")[0])}`,
      );
      assert.ok(closedAfter >= 1000, `not cut by the 500 ms headers timeout (closed after ${closedAfter} ms)`);
      assert.ok(closedAfter < 10_000, `cut by the 1.5 s request timeout (closed after ${closedAfter} ms)`);
    });

    it("keeps an idle HTTP/1.1 keep-alive connection past the headers timeout and serves its next request", async () => {
      const c = await connectRaw(portOf(gw.url));
      const call =
        "POST /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
      const answers = (): number => c.received().toString().split("HTTP/1.1 200 OK").length - 1;
      c.socket.write(call);
      await c.until(() => answers() === 1 && c.received().toString().includes("SERVING"), "the first answer");
      // Idle for three headers timeouts: keep-alive (65 s) governs an idle connection, not the headers timeout.
      await new Promise((r) => setTimeout(r, 1500));
      assert.equal(c.isClosed, false, "the idle keep-alive connection is still open");
      c.socket.write(call);
      await c.until(() => answers() === 2, "the second answer on the same connection");
      c.socket.destroy();
    });

    it("closes HTTP/2 connections that send only the preface, or never acknowledge the server's SETTINGS", async (t) => {
      const baseline = await settledFds(gw.pid);
      const prefaceOnly = await Promise.all(Array.from({ length: 10 }, () => connectRaw(portOf(gw.url))));
      for (const c of prefaceOnly) c.socket.write(PREFACE);
      const halfPreface = await Promise.all(Array.from({ length: 5 }, () => connectRaw(portOf(gw.url))));
      for (const c of halfPreface) c.socket.write(PREFACE.subarray(0, 10));
      const noAck = await Promise.all(Array.from({ length: 5 }, () => connectRaw(portOf(gw.url))));
      for (const c of noAck) c.socket.write(Buffer.concat([PREFACE, h2Frame(FrameType.SETTINGS, 0, 0)]));
      const all = [...prefaceOnly, ...halfPreface, ...noAck];
      const closedAfter = await within(
        Promise.all(all.map((c) => c.closed)),
        20_000,
        "the silent connections are closed",
      );
      t.diagnostic(`closed after ${Math.min(...closedAfter)}–${Math.max(...closedAfter)} ms`);
      assert.ok(Math.max(...closedAfter) < 10_000, `all closed within 10 s (slowest ${Math.max(...closedAfter)} ms)`);
      await eventually(() => fdCount(gw.pid) <= baseline + 2, "descriptors are back to baseline", 10_000);
    });

    it("closes an idle HTTP/2 session with GOAWAY although its client keeps sending PINGs, and keeps one with an open stream", async (t) => {
      const idle = h2Session(gw.url);
      const busy = h2Session(gw.url);
      assert.equal(await check(idle), ServingStatus.SERVING);
      const watch = await openWatch(busy);
      let goawayCodeSeen: number | undefined;
      idle.once("goaway", (code) => (goawayCodeSeen = code));
      const startedAt = Date.now();
      const pinger = setInterval(() => {
        if (!idle.closed && !idle.destroyed) idle.ping(() => {});
      }, 200);
      try {
        await within(sessionClosed(idle), 20_000, "the idle session is closed");
      } finally {
        clearInterval(pinger);
      }
      const idleClosedAfter = Date.now() - startedAt;
      t.diagnostic(`idle session closed after ${idleClosedAfter} ms (GOAWAY code ${goawayCodeSeen})`);
      assert.equal(goawayCodeSeen, 0, "a graceful GOAWAY (NO_ERROR)");
      assert.ok(idleClosedAfter < 10_000);
      // The session with a stream open outlives the idle timeout by far, and still serves calls.
      await new Promise((r) => setTimeout(r, 3000));
      assert.equal(busy.closed || busy.destroyed, false, "the session with an open Watch stream is still open");
      assert.equal(await check(busy), ServingStatus.SERVING);
      // Once its last stream ends, it is idle and closed too.
      watch.close(http2.constants.NGHTTP2_CANCEL);
      await within(sessionClosed(busy), 20_000, "the session is closed once idle");
    });
  });

  describe("with MAX_CONNECTIONS=12 and MAX_CONNECTIONS_PER_IP=5", () => {
    let gw: GatewayProcess;
    before(async () => {
      gw = await spawnGateway({ OLLAMA_URL: sim.url, MAX_CONNECTIONS: "12", MAX_CONNECTIONS_PER_IP: "5" });
    });
    after(() => gw.stop());

    it("refuses a sixth connection from one address at accept and still accepts other addresses", async () => {
      const port = portOf(gw.url);
      const held = await Promise.all(Array.from({ length: 5 }, () => rawH2(port, "127.0.0.2")));
      try {
        assert.equal(await probe(port, "127.0.0.2"), "refused");
        assert.equal(await probe(port, "127.0.0.3"), "accepted");
      } finally {
        for (const c of held) c.socket.destroy();
      }
      await Promise.all(held.map((c) => c.closed));
      await eventually(
        async () => (await probe(port, "127.0.0.2")) === "accepted",
        "127.0.0.2 is accepted again",
        10_000,
      );
    });

    it("refuses connections beyond MAX_CONNECTIONS at accept while existing ones, health checks included, are served; accepts again once the flood is gone", async (t) => {
      const port = portOf(gw.url);
      const existing = h2Session(gw.url, "127.0.0.1");
      assert.equal(await check(existing), ServingStatus.SERVING);
      // 11 more from four addresses (within the per-address limit): 12 open.
      const flood: http2.ClientHttp2Session[] = [];
      for (const [address, n] of [
        ["127.0.0.4", 4],
        ["127.0.0.5", 4],
        ["127.0.0.6", 3],
      ] as const) {
        for (let i = 0; i < n; i++) flood.push(h2Session(gw.url, address));
      }
      await Promise.all(flood.map((s) => check(s)));
      const refusedBefore = refusalLines(gw);
      const probes = [];
      for (let i = 0; i < 30; i++) probes.push(await probe(port, "127.0.0.7"));
      assert.deepEqual(new Set(probes), new Set(["refused"]), "every new connection is refused");
      assert.equal(
        await check(existing),
        ServingStatus.SERVING,
        "a health check on an existing connection is answered",
      );
      await eventually(() => refusalLines(gw).length > refusedBefore.length, "the refusals are logged");
      const lines = refusalLines(gw).slice(refusedBefore.length);
      t.diagnostic(`refusal log lines for 30 refused connections: ${JSON.stringify(lines)}`);
      assert.ok(lines.length <= 2, `at most one line per 10 s and limit (${lines.length} lines)`);
      // The refusals within the 10 s after a line are reported together when they are over.
      const counted = (): number =>
        refusalLines(gw)
          .slice(refusedBefore.length)
          .filter((l) => l["limit"] === 12)
          .reduce((n, l) => n + Number(l["refused"]), 0);
      await eventually(
        () => counted() === 30,
        "all 30 refusals are counted in the log",
        20_000,
        () => `(${counted()})`,
      );
      for (const s of flood) s.close();
      await Promise.all(flood.map(sessionClosed));
      await eventually(
        async () => (await probe(port, "127.0.0.7")) === "accepted",
        "new connections are accepted again",
        10_000,
      );
      existing.close();
    });
  });
});

function refusalLines(gw: GatewayProcess): Record<string, unknown>[] {
  return gw.lines().filter((l) => typeof l["msg"] === "string" && l["msg"].startsWith("connections refused"));
}
