import assert from "node:assert/strict";
import { getEventListeners, setMaxListeners } from "node:events";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, createHandlerContext } from "@connectrpc/connect";
import type { Client, ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter, createGrpcTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import {
  Health,
  HealthCheckRequestSchema,
  HealthCheckResponseSchema,
  HealthCheckResponse_ServingStatus as ServingStatus,
} from "../src/gen/grpc/health/v1/health_pb.js";
import type { HealthCheckRequest, HealthCheckResponse } from "../src/gen/grpc/health/v1/health_pb.js";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { createHealthService } from "../src/transport/health-service.js";
import type { HealthService } from "../src/transport/health-service.js";
import { registerReflection } from "../src/transport/reflection-service.js";

const INFERENCE = InferenceService.typeName;

interface TestServer {
  readonly baseUrl: string;
  readonly port: number;
  readonly shutdown: AbortController;
  close(): Promise<void>;
}

/** A real h2c connect-node server with health, reflection and a stub InferenceService. */
async function startServer(health: HealthService): Promise<TestServer> {
  const shutdown = new AbortController();
  const routes = (router: ConnectRouter): void => {
    router.service(Health, health.implementation);
    router.service(InferenceService, {
      async *generate(req) {
        yield { text: `echo ${req.prompt}`, done: true };
      },
    });
    registerReflection(router, [InferenceService, Health]);
  };
  const server = http2.createServer(connectNodeAdapter({ routes, shutdownSignal: shutdown.signal }));
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (s: http2.ServerHttp2Session) => {
    sessions.add(s);
    s.once("close", () => sessions.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    baseUrl: `http://127.0.0.1:${port}`,
    port,
    shutdown,
    async close() {
      health.close();
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of sessions) s.destroy();
      await closed;
    },
  };
}

/** Resolves once `predicate` holds, polling; fails after `ms`. */
async function eventually(predicate: () => boolean, what: string, ms = 3000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Rejects with the ConnectError code of a failed call. */
async function codeOf(p: Promise<unknown>): Promise<Code> {
  try {
    await p;
  } catch (e) {
    return ConnectError.from(e).code;
  }
  return assert.fail("the call succeeded but was expected to fail");
}

describe("health service", () => {
  const health = createHealthService({ maxWatchers: 4 });
  let server: TestServer;
  let client: Client<typeof Health>;

  before(async () => {
    health.register(INFERENCE, ServingStatus.SERVING);
    server = await startServer(health);
    client = createClient(Health, createGrpcTransport({ baseUrl: server.baseUrl }));
  });
  after(async () => {
    await server.close();
  });

  it("reports the whole server as SERVING under the empty name", async () => {
    const res = await client.check({ service: "" });
    assert.equal(res.status, ServingStatus.SERVING);
  });

  it("reports the status of a registered service and follows changes", async () => {
    assert.equal((await client.check({ service: INFERENCE })).status, ServingStatus.SERVING);
    health.setStatus(INFERENCE, ServingStatus.NOT_SERVING);
    try {
      assert.equal((await client.check({ service: INFERENCE })).status, ServingStatus.NOT_SERVING);
    } finally {
      health.setStatus(INFERENCE, ServingStatus.SERVING);
    }
  });

  it("answers NOT_FOUND for a service it does not know", async () => {
    assert.equal(await codeOf(client.check({ service: "no.such.Service" })), Code.NotFound);
  });

  it("registers new services as NOT_SERVING unless told otherwise", async () => {
    health.register("test.Registered");
    assert.equal(health.get("test.Registered"), ServingStatus.NOT_SERVING);
    assert.equal((await client.check({ service: "test.Registered" })).status, ServingStatus.NOT_SERVING);
    health.register("test.Registered", ServingStatus.SERVING); // already known: keeps its status
    assert.equal(health.get("test.Registered"), ServingStatus.NOT_SERVING);
    assert.equal(health.get("test.NeverRegistered"), undefined);
  });

  it("streams the current status at once and then only changes", async () => {
    const ac = new AbortController();
    const stream = client.watch({ service: INFERENCE }, { signal: ac.signal })[Symbol.asyncIterator]();
    try {
      assert.equal((await stream.next()).value?.status, ServingStatus.SERVING);
      health.setStatus(INFERENCE, ServingStatus.SERVING); // no change: nothing is sent
      health.setStatus(INFERENCE, ServingStatus.NOT_SERVING);
      assert.equal((await stream.next()).value?.status, ServingStatus.NOT_SERVING);
      health.setStatus(INFERENCE, ServingStatus.SERVING);
      assert.equal((await stream.next()).value?.status, ServingStatus.SERVING);
    } finally {
      ac.abort();
      health.setStatus(INFERENCE, ServingStatus.SERVING);
    }
    await eventually(() => health.watcherCount === 0, "the watcher is gone");
  });

  it("tells a watcher of an unknown service SERVICE_UNKNOWN and updates it once registered", async () => {
    const ac = new AbortController();
    const stream = client.watch({ service: "test.Late" }, { signal: ac.signal })[Symbol.asyncIterator]();
    try {
      assert.equal((await stream.next()).value?.status, ServingStatus.SERVICE_UNKNOWN);
      health.register("test.Late", ServingStatus.SERVING);
      assert.equal((await stream.next()).value?.status, ServingStatus.SERVING);
    } finally {
      ac.abort();
    }
    await eventually(() => health.watcherCount === 0, "the watcher is gone");
  });

  it("ends a Watch when the client cancels and forgets the watcher", async () => {
    const ac = new AbortController();
    const received: ServingStatus[] = [];
    const consumed = (async () => {
      for await (const res of client.watch({ service: "" }, { signal: ac.signal })) {
        received.push(res.status);
        ac.abort();
      }
    })();
    assert.equal(await codeOf(consumed), Code.Canceled);
    assert.deepEqual(received, [ServingStatus.SERVING]);
    await eventually(() => health.watcherCount === 0, "the server-side watcher count is back to 0");
  });

  it("ends a Watch at the client's deadline and forgets the watcher", async () => {
    const received: ServingStatus[] = [];
    const consumed = (async () => {
      for await (const res of client.watch({ service: "" }, { timeoutMs: 300 })) received.push(res.status);
    })();
    assert.equal(await codeOf(consumed), Code.DeadlineExceeded);
    assert.deepEqual(received, [ServingStatus.SERVING]);
    await eventually(() => health.watcherCount === 0, "the server-side watcher count is back to 0");
  });

  it("refuses Watch streams beyond the cap with RESOURCE_EXHAUSTED", async () => {
    const ac = new AbortController();
    const open: AsyncIterator<HealthCheckResponse>[] = [];
    try {
      for (let i = 0; i < 4; i++) {
        const it = client.watch({ service: "" }, { signal: ac.signal })[Symbol.asyncIterator]();
        await it.next();
        open.push(it);
      }
      assert.equal(health.watcherCount, 4);
      const extra = client.watch({ service: "" }, { signal: ac.signal })[Symbol.asyncIterator]();
      assert.equal(await codeOf(extra.next()), Code.ResourceExhausted);
    } finally {
      ac.abort();
    }
    await eventually(() => health.watcherCount === 0, "all watchers are gone");
  });

  it("lists every registered service with its status", async () => {
    const res = await client.list({});
    assert.deepEqual(Object.fromEntries(Object.entries(res.statuses).map(([k, v]) => [k, v.status])), {
      "": ServingStatus.SERVING,
      [INFERENCE]: ServingStatus.SERVING,
      "test.Registered": ServingStatus.NOT_SERVING,
      "test.Late": ServingStatus.SERVING,
    });
  });

  it("flips every service and the server with setAll", async () => {
    const ac = new AbortController();
    const stream = client.watch({ service: "" }, { signal: ac.signal })[Symbol.asyncIterator]();
    try {
      assert.equal((await stream.next()).value?.status, ServingStatus.SERVING);
      health.setAll(ServingStatus.NOT_SERVING);
      assert.equal((await stream.next()).value?.status, ServingStatus.NOT_SERVING);
      const res = await client.list({});
      assert.ok(Object.values(res.statuses).every((v) => v.status === ServingStatus.NOT_SERVING));
      assert.equal(Object.keys(res.statuses).length, 4);
    } finally {
      ac.abort();
      health.setAll(ServingStatus.SERVING);
    }
    await eventually(() => health.watcherCount === 0, "the watcher is gone");
  });

  it("rejects SERVICE_UNKNOWN as a status to set, since it only exists for Watch", () => {
    assert.throws(() => health.setStatus(INFERENCE, ServingStatus.SERVICE_UNKNOWN), RangeError);
    assert.equal(health.get(INFERENCE), ServingStatus.SERVING);
  });

  it("leaves no abort listeners behind after many watch cycles", async () => {
    const warnings: string[] = [];
    const onWarning = (w: Error): void => void warnings.push(w.name);
    process.on("warning", onWarning);
    const baseline = getEventListeners(server.shutdown.signal, "abort").length;
    try {
      for (let i = 0; i < 200; i++) {
        const ac = new AbortController();
        const stream = client.watch({ service: INFERENCE }, { signal: ac.signal })[Symbol.asyncIterator]();
        await stream.next();
        // a few changes per cycle, so a listener-per-update bug would show up too
        health.setStatus(INFERENCE, ServingStatus.NOT_SERVING);
        await stream.next();
        health.setStatus(INFERENCE, ServingStatus.SERVING);
        await stream.next();
        ac.abort();
      }
      await eventually(() => health.watcherCount === 0, "all watchers are gone");
      await eventually(
        () => getEventListeners(server.shutdown.signal, "abort").length === baseline,
        "the shutdown signal is back to its baseline listener count",
      );
    } finally {
      process.off("warning", onWarning);
    }
    assert.deepEqual(
      warnings.filter((n) => n === "MaxListenersExceededWarning"),
      [],
    );
  });

  it("answers a @grpc/grpc-js health check", async () => {
    const raw = new grpc.Client(`127.0.0.1:${server.port}`, grpc.credentials.createInsecure());
    try {
      const res = await new Promise<HealthCheckResponse>((resolve, reject) => {
        raw.makeUnaryRequest(
          "/grpc.health.v1.Health/Check",
          (m: HealthCheckRequest) => Buffer.from(toBinary(HealthCheckRequestSchema, m)),
          (b: Buffer) => fromBinary(HealthCheckResponseSchema, b),
          create(HealthCheckRequestSchema, { service: INFERENCE }),
          (err, value) => (err ? reject(err) : value ? resolve(value) : reject(new Error("empty response"))),
        );
      });
      assert.equal(res.status, ServingStatus.SERVING);
    } finally {
      raw.close();
    }
  });
});

describe("health service watch internals", () => {
  function watchContext(): ReturnType<typeof createHandlerContext> {
    return createHandlerContext({
      service: Health,
      method: Health.method.watch,
      protocolName: "grpc",
      requestMethod: "POST",
      url: "http://localhost/grpc.health.v1.Health/Watch",
    });
  }

  it("keeps one abort listener per stream however many updates it sends", async () => {
    const health = createHealthService();
    health.register("svc", ServingStatus.SERVING);
    const ctx = watchContext();
    const baseline = getEventListeners(ctx.signal, "abort").length;
    const it = health.implementation
      .watch(create(HealthCheckRequestSchema, { service: "svc" }), ctx)
      [Symbol.asyncIterator]();
    assert.equal((await it.next()).value?.status, ServingStatus.SERVING);
    for (let i = 0; i < 1000; i++) {
      const next = i % 2 === 0 ? ServingStatus.NOT_SERVING : ServingStatus.SERVING;
      const pulled = it.next(); // parks the stream waiting for a change, as the adapter does
      assert.equal(getEventListeners(ctx.signal, "abort").length, baseline + 1);
      health.setStatus("svc", next);
      assert.equal((await pulled).value?.status, next);
    }
    const pending = it.next();
    ctx.abort();
    assert.equal((await pending).done, true);
    assert.equal(health.watcherCount, 0);
  });

  it("removes its abort listener when a stream ends without an abort, over many cycles", async () => {
    const health = createHealthService();
    const ctx = watchContext(); // one long-lived signal shared by every cycle
    const baseline = getEventListeners(ctx.signal, "abort").length;
    for (let i = 0; i < 500; i++) {
      const it = health.implementation
        .watch(create(HealthCheckRequestSchema, { service: "" }), ctx)
        [Symbol.asyncIterator]();
      assert.equal((await it.next()).value?.status, ServingStatus.SERVING);
      await it.return?.(undefined); // what the adapter does when the response is finished
    }
    assert.equal(getEventListeners(ctx.signal, "abort").length, baseline);
    assert.equal(health.watcherCount, 0);
  });

  it("ends Watch streams with UNAVAILABLE when the server shuts down", async () => {
    const health = createHealthService();
    const server = await startServer(health);
    const client = createClient(Health, createGrpcTransport({ baseUrl: server.baseUrl }));
    try {
      const received: ServingStatus[] = [];
      const watching = (async () => {
        for await (const res of client.watch({ service: "" })) received.push(res.status);
      })().then(
        () => "OK",
        (e: unknown) => Code[ConnectError.from(e).code],
      );
      await eventually(() => received.length === 1, "the first status arrived");
      server.shutdown.abort(new ConnectError("server shutting down", Code.Unavailable));
      let timer: NodeJS.Timeout | undefined;
      const outcome = await Promise.race([
        watching,
        new Promise<string>((r) => (timer = setTimeout(() => r("still open"), 3000))),
      ]).finally(() => clearTimeout(timer));
      assert.equal(outcome, Code[Code.Unavailable]);
      await eventually(() => health.watcherCount === 0, "the watcher is gone");
    } finally {
      await server.close();
    }
  });

  it("ends every Watch stream cleanly on close and refuses new ones with UNAVAILABLE", async () => {
    const health = createHealthService();
    const server = await startServer(health);
    const client = createClient(Health, createGrpcTransport({ baseUrl: server.baseUrl }));
    try {
      const received: ServingStatus[] = [];
      const watching = (async () => {
        for await (const res of client.watch({ service: "" })) received.push(res.status);
      })().then(
        () => undefined,
        (e: unknown) => e,
      );
      await eventually(() => received.length === 1, "the first status arrived");
      health.close();
      assert.equal(await watching, undefined, "the stream ends with OK");
      assert.deepEqual(received, [ServingStatus.SERVING]);
      assert.equal(health.watcherCount, 0);
      const late = client.watch({ service: "" })[Symbol.asyncIterator]();
      assert.equal(await codeOf(late.next()), Code.Unavailable);
      assert.equal((await client.check({ service: "" })).status, ServingStatus.SERVING);
    } finally {
      await server.close();
    }
  });
});

describe("health watchers at their cap", () => {
  /** Opens `n` Watch streams over `sessions` and resolves with each one's outcome once it is known. */
  function watchMany(sessions: http2.ClientHttp2Session[], n: number, streams: http2.ClientHttp2Stream[]) {
    const body = Buffer.from([0, 0, 0, 0, 0]); // an empty HealthCheckRequest, gRPC-framed
    return Promise.all(
      Array.from({ length: n }, (_, i) => {
        const stream = sessions[i % sessions.length]!.request({
          ":method": "POST",
          ":path": "/grpc.health.v1.Health/Watch",
          "content-type": "application/grpc",
          te: "trailers",
        });
        streams.push(stream);
        stream.on("error", () => {
          // cancelled by the test
        });
        stream.end(body);
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
  }

  it("refuses Watch streams beyond the cap and frees the memory of all of them once they close", async (t) => {
    setFlagsFromString("--expose-gc");
    const gc = runInNewContext("gc") as () => void;
    const heapMb = (): number => {
      gc();
      gc();
      return process.memoryUsage().heapUsed / 1e6;
    };
    const health = createHealthService({ maxWatchers: 1000 });
    const server = await startServer(health);
    // As in the gateway: every call links its signal to the shutdown signal.
    setMaxListeners(0, server.shutdown.signal);
    const sessions = Array.from({ length: 4 }, () => {
      const s = http2.connect(server.baseUrl);
      s.on("error", () => {
        // closed by the test
      });
      return s;
    });
    const round = async (n: number): Promise<Record<string, number>> => {
      const streams: http2.ClientHttp2Stream[] = [];
      const outcomes = await watchMany(sessions, n, streams);
      const tally: Record<string, number> = {};
      for (const o of outcomes) tally[o] = (tally[o] ?? 0) + 1;
      tally["heldMb"] = heapMb();
      for (const s of streams) s.close(http2.constants.NGHTTP2_CANCEL);
      await eventually(() => health.watcherCount === 0, "every watcher is gone", 10_000);
      return tally;
    };
    try {
      await round(200); // warms up every code path the measured round takes
      const baseline = heapMb();
      const { heldMb, ...tally } = await round(1500);
      assert.deepEqual(tally, { watching: 1000, "status 8": 500 });
      const afterMb = heapMb();
      t.diagnostic(
        `heap: ${baseline.toFixed(1)} MB before, ${heldMb!.toFixed(1)} MB with 1,000 watchers open, ${afterMb.toFixed(1)} MB after they closed`,
      );
      assert.ok(heldMb! - baseline > 10, "open watchers hold measurable memory");
      assert.ok(afterMb - baseline < 5, `their memory is freed (${(afterMb - baseline).toFixed(1)} MB left)`);
    } finally {
      for (const s of sessions) s.close();
      await server.close();
    }
  });
});
