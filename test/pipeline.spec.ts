import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { EventEmitter, once } from "node:events";
import { constants as http2constants } from "node:http2";
import type { ClientHttp2Stream, IncomingHttpHeaders } from "node:http2";
import { gzipSync } from "node:zlib";
import { fromBinary } from "@bufbuild/protobuf";
import type { DescMessage, MessageInitShape } from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import type { ConnectRouter, HandlerContext } from "@connectrpc/connect";
import { compressionGzip, connectNodeAdapter, createGrpcTransport } from "@connectrpc/connect-node";
import { modelNotFound } from "../src/errors/domain-errors.js";
import { ErrorInfoSchema, RetryInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../src/gen/google/rpc/status_pb.js";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../src/gen/grpc/health/v1/health_pb.js";
import { ServerReflection } from "../src/gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ServerReflectionV1alpha } from "../src/gen/grpc/reflection/v1alpha/reflection_pb.js";
import { GatewayService } from "../src/gen/ollama/gateway/v1/gateway_pb.js";
import {
  EmbedRequestSchema,
  EmbedResponseSchema,
  GenerateRequestSchema,
  GenerateResponseSchema,
  InferenceService,
} from "../src/gen/ollama/gateway/v1/inference_pb.js";
import type {
  EmbedResponseSchema as EmbedResponseDesc,
  GenerateRequest,
} from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { ModelService } from "../src/gen/ollama/gateway/v1/model_pb.js";
import { kRpcInfo, rpcInfo } from "../src/observability/rpc-info.js";
import { callValues, protocolOf } from "../src/pipeline/call.js";
import type { Call } from "../src/pipeline/call.js";
import { concurrencyCap } from "../src/pipeline/concurrency-cap.js";
import { pipelineInterceptor } from "../src/pipeline/connect-interceptor.js";
import { exemptionsOf } from "../src/pipeline/exemptions.js";
import { createGatewayPipeline } from "../src/pipeline/gateway-pipeline.js";
import type { GatewayPipeline } from "../src/pipeline/gateway-pipeline.js";
import { createPipeline } from "../src/pipeline/pipeline.js";
import type { CallEnd, CallHook } from "../src/pipeline/pipeline.js";
import { acceptedRequestId, sequentialRequestIds } from "../src/pipeline/request-id.js";
import type { MessageSink } from "../src/services/message-sink.js";
import { sinkIterable } from "../src/services/message-sink.js";
import { listenDualProtocol } from "../src/transport/dual-protocol-server.js";
import type { DualProtocolServer } from "../src/transport/dual-protocol-server.js";
import { createGrpcFastPath, serverStreamingRoute, unaryRoute } from "../src/transport/grpc-fast-path.js";
import { createHealthService } from "../src/transport/health-service.js";
import { captureLogs } from "./helpers/log-capture.js";
import type { LogCapture } from "./helpers/log-capture.js";
import { encode, frame, rawGrpc } from "./helpers/raw-grpc.js";
import type { RawGrpcCall, RawGrpcReply } from "./helpers/raw-grpc.js";
import { eventually } from "./helpers/sim-http.js";
import { TRANSPORTS } from "./helpers/transports.js";

/** A Call for unit tests: the method of `service`, a request id header if given. */
function fakeCall(service = InferenceService.typeName, requestId?: string): Call {
  const method = service === InferenceService.typeName ? InferenceService.method.generate : Health.method.check;
  const values = callValues("10.0.0.1");
  const requestHeader = new Headers(requestId === undefined ? {} : { "x-request-id": requestId });
  return {
    method,
    streaming: method.methodKind !== "unary",
    protocolName: "grpc",
    requestHeader,
    responseHeader: new Headers(),
    responseTrailer: new Headers(),
    values,
    info: values.get(kRpcInfo)!,
    signal: new AbortController().signal,
  };
}

/** A hook that records its begin and end in `trace`, and refuses when told to. */
function recorder(name: string, trace: string[], opts: { refuse?: ConnectError; noEnd?: boolean } = {}): CallHook {
  return {
    begin() {
      trace.push(`begin ${name}`);
      if (opts.refuse) throw opts.refuse;
      if (opts.noEnd) return undefined;
      return (error) => trace.push(`end ${name} ${error === undefined ? "ok" : Code[error.code]}`);
    },
  };
}

describe("the call pipeline", () => {
  it("begins the hooks in order and ends them in reverse, once however often the end is called", () => {
    const trace: string[] = [];
    const pipeline = createPipeline([
      recorder("a", trace),
      recorder("b", trace, { noEnd: true }),
      recorder("c", trace),
    ]);
    const end = pipeline.begin(fakeCall());
    assert.deepEqual(trace, ["begin a", "begin b", "begin c"]);
    end(new ConnectError("x", Code.Aborted));
    end(undefined);
    assert.deepEqual(trace, ["begin a", "begin b", "begin c", "end c Aborted", "end a Aborted"]);
  });

  it("on a refusal in the middle, skips the later hooks, ends the earlier ones with it and throws it", () => {
    const trace: string[] = [];
    const refusal = new ConnectError("no", Code.PermissionDenied);
    const pipeline = createPipeline([
      recorder("a", trace),
      recorder("b", trace),
      recorder("c", trace, { refuse: refusal }),
      recorder("d", trace),
    ]);
    assert.throws(
      () => pipeline.begin(fakeCall()),
      (e) => e === refusal,
    );
    assert.deepEqual(trace, ["begin a", "begin b", "begin c", "end b PermissionDenied", "end a PermissionDenied"]);
  });

  it("turns a hook's foreign exception into INTERNAL, keeping it as the cause", () => {
    const bug = new TypeError("oops");
    const pipeline = createPipeline([
      {
        begin() {
          throw bug;
        },
      },
    ]);
    assert.throws(
      () => pipeline.begin(fakeCall()),
      (e) => e instanceof ConnectError && e.code === Code.Internal && e.cause === bug,
    );
  });

  it("runs every end even when one throws, then rethrows that one", () => {
    const trace: string[] = [];
    const broken = new Error("broken end");
    const pipeline = createPipeline([
      recorder("a", trace),
      {
        begin: () => () => {
          throw broken;
        },
      },
      recorder("c", trace),
    ]);
    const end = pipeline.begin(fakeCall());
    assert.throws(
      () => end(undefined),
      (e) => e === broken,
    );
    assert.deepEqual(trace, ["begin a", "begin c", "end c ok", "end a ok"]);
  });

  it("costs no closure per call when no hook has anything to end", () => {
    const pipeline = createPipeline([recorder("a", [], { noEnd: true })]);
    assert.equal(pipeline.begin(fakeCall()), pipeline.begin(fakeCall()));
  });
});

describe("the request id policy", () => {
  const cases: [string | null | undefined, boolean][] = [
    ["abc-123", true],
    ["x", true],
    ["a".repeat(128), true],
    ["!~{}[]:;/", true],
    [undefined, false],
    [null, false],
    ["", false],
    ["a".repeat(129), false],
    ["two words", false],
    ["tab\there", false],
    ["new\nline", false],
    ["naïve", false],
    ["a, b", false],
  ];
  for (const [given, kept] of cases) {
    it(`${kept ? "keeps" : "replaces"} ${JSON.stringify(given)?.slice(0, 40) ?? "no header"}`, () => {
      assert.equal(acceptedRequestId(given), kept ? given : undefined);
    });
  }

  it("generates ids from a prefix and a base-36 counter", () => {
    const next = sequentialRequestIds("p");
    const ids = Array.from({ length: 37 }, () => next());
    assert.equal(ids[0], "p-1");
    assert.equal(ids[35], "p-10");
    assert.equal(new Set(ids).size, 37);
    assert.match(sequentialRequestIds()(), /^[0-9a-f]{8}-1$/, "a random prefix per process by default");
  });

  it("is applied by the hook: into the log facts, the response headers and the trailers", () => {
    const { pipeline } = createGatewayPipeline({
      log: captureLogs().log,
      maxConcurrentRpcs: 10,
      newRequestId: () => "made-up",
    });
    for (const [given, want] of [
      ["client-7", "client-7"],
      ["bad id", "made-up"],
      [undefined, "made-up"],
    ] as const) {
      const call = fakeCall(InferenceService.typeName, given);
      const end = pipeline.begin(call);
      assert.equal(typeof end, "function", "without authentication the pipeline answers at once");
      (end as CallEnd)(undefined);
      assert.equal(call.info.requestId, want);
      assert.equal(call.responseHeader.get("x-request-id"), want);
      assert.equal(call.responseTrailer.get("x-request-id"), want);
    }
  });
});

describe("exemptions and the concurrency cap", () => {
  it("exempt health, reflection and the gateway status from the cap, and nothing else", () => {
    const table: [string, boolean][] = [
      [Health.typeName, true],
      [ServerReflection.typeName, true],
      [ServerReflectionV1alpha.typeName, true],
      [GatewayService.typeName, true],
      [InferenceService.typeName, false],
      [ModelService.typeName, false],
      ["some.Unknown", false],
    ];
    for (const [service, exempt] of table) assert.equal(exemptionsOf(service).cap, exempt, service);
  });

  it("counts calls once admitted (their body arrived), refuses past the cap with GATEWAY_OVERLOADED and a RetryInfo, and counts no exempt call", () => {
    const overloaded = (e: unknown): boolean =>
      e instanceof ConnectError &&
      e.code === Code.ResourceExhausted &&
      e.findDetails(ErrorInfoSchema)[0]?.reason === "GATEWAY_OVERLOADED" &&
      e.findDetails(RetryInfoSchema).length === 1;
    const cap = concurrencyCap(2);
    const calls = [fakeCall(), fakeCall(), fakeCall()] as const;
    const [first, second, bodiless] = calls.map((c) => cap.begin(c)!);
    assert.equal(cap.active, 0, "begun calls without a body hold no slot");
    cap.admit!(calls[0]);
    cap.admit!(calls[1]);
    const health = fakeCall(Health.typeName);
    assert.equal(cap.begin(health), undefined, "health is not counted");
    cap.admit!(health);
    assert.equal(cap.active, 2);
    assert.throws(() => cap.begin(fakeCall()), overloaded, "a call arriving at a full cap is refused before its body");
    assert.throws(() => cap.admit!(calls[2]), overloaded, "a body arriving at a full cap is refused");
    bodiless!(undefined);
    assert.equal(cap.active, 2, "ending a call that was never admitted releases nothing");
    first!(undefined);
    assert.equal(cap.active, 1);
    const late = fakeCall();
    const end = cap.begin(late)!;
    cap.admit!(late);
    end(undefined);
    second!(undefined);
    assert.equal(cap.active, 0);
  });

  it("tells the protocol from the content type", () => {
    assert.equal(protocolOf("application/grpc"), "grpc");
    assert.equal(protocolOf("application/grpc+proto"), "grpc");
    assert.equal(protocolOf("application/grpc-web+proto"), "grpc-web");
    assert.equal(protocolOf("application/grpc-web-text"), "grpc-web");
    assert.equal(protocolOf("application/connect+proto"), "connect");
    assert.equal(protocolOf("application/json"), "connect");
    assert.equal(protocolOf(null), "connect");
  });
});

// ---------------------------------------------------------------------------------------------
// Both paths, side by side: one server with the gateway's pipeline, connect-node and the fast
// path, and fake handlers. A plain gRPC request takes the fast path; the same request
// gzip-compressed is served by connect-node. Everything a client sees must match.

const GENERATE = "/ollama.gateway.v1.InferenceService/Generate";
const EMBED = "/ollama.gateway.v1.InferenceService/Embed";

/** Names that say how the bytes travel (compression, content type, date), not what the call answered. */
const TRANSPORT_HEADERS = new Set([":status", "content-type", "grpc-encoding", "grpc-accept-encoding", "date"]);

/** The headers and trailers of a reply, without transport names. */
function answer(h: IncomingHttpHeaders): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(h)) if (!TRANSPORT_HEADERS.has(k) && v !== undefined) out[k] = String(v);
  return out;
}

/** What a client sees of a call as one block: a trailers-only answer has its trailers in the headers. */
function seen(r: RawGrpcReply): Record<string, string> {
  return { ...answer(r.headers), ...answer(r.trailers) };
}

/** The reason and retry delay in a reply's grpc-status-details-bin. */
function statusDetails(r: RawGrpcReply): { reason?: string; retryMs?: number } {
  const bin = (r.trailers["grpc-status-details-bin"] ?? r.headers["grpc-status-details-bin"]) as string | undefined;
  if (bin === undefined) return {};
  const status = fromBinary(StatusSchema, Buffer.from(bin, "base64"));
  let reason: string | undefined;
  let retryMs: number | undefined;
  for (const any of status.details) {
    reason ??= anyUnpack(any, ErrorInfoSchema)?.reason;
    const retry = anyUnpack(any, RetryInfoSchema);
    if (retry?.retryDelay) retryMs = Number(retry.retryDelay.seconds) * 1000 + retry.retryDelay.nanos / 1e6;
  }
  return { reason, retryMs };
}

/** The same call on both paths: plain (fast path) and gzip-compressed (connect-node). */
async function bothPaths<T extends DescMessage>(
  url: string,
  path: string,
  schema: T,
  message: MessageInitShape<T>,
  ids: { fast: string; connect: string },
): Promise<{ fast: RawGrpcReply; connect: RawGrpcReply }> {
  const bytes = encode(schema, message);
  const fast = await rawGrpc(url, path, { body: [frame(bytes)], headers: { "x-request-id": ids.fast } });
  const connect = await rawGrpc(url, path, {
    body: [frame(gzipSync(bytes), 1)],
    headers: { "x-request-id": ids.connect, "grpc-encoding": "gzip" },
  });
  return { fast, connect };
}

/** A reply's headers or trailers with the request id replaced by a placeholder, to compare two calls. */
function withoutId(h: Record<string, string>, id: string): Record<string, string> {
  const out = { ...h };
  if (out["x-request-id"] === id) out["x-request-id"] = "<id>";
  return out;
}

/** The rpc line of a request id, without what differs between two calls (time, duration, id). */
function logLine(logs: LogCapture, requestId: string): Record<string, unknown> | undefined {
  const line = logs.find("rpc").find((l) => l["requestId"] === requestId);
  if (line === undefined) return undefined;
  const { time: _t, ms, requestId: _r, ...rest } = line;
  assert.equal(typeof ms, "number");
  return rest;
}

/** Both calls' log lines, once written (the fast path logs as the call ends, connect-node as well). */
async function logLines(logs: LogCapture, a: string, b: string): Promise<[unknown, unknown]> {
  assert.ok(await eventually(() => logLine(logs, a) !== undefined && logLine(logs, b) !== undefined, 5000));
  return [logLine(logs, a), logLine(logs, b)];
}

/**
 * Fake handlers, driven by the prompt (Generate) or the first input (Embed):
 * - "ok": sets a response trailer, fills the log facts, answers;
 * - "fail-late": a message, then an error with metadata of its own;
 * - "fail-early": the response trailer, then an error before any message;
 * - "hold": waits until `release` (counts against the cap meanwhile).
 */
function fakeInference(held: EventEmitter) {
  const release = new Set<() => void>();
  const hold = (signal: AbortSignal): Promise<void> =>
    new Promise<void>((resolve) => {
      release.add(resolve);
      signal.addEventListener("abort", () => resolve(), { once: true });
      held.emit("held");
    });
  const failure = (model: string): ConnectError => {
    const e = modelNotFound(model);
    e.metadata.set("x-error-meta", "from-the-error");
    return e;
  };
  const generate = async (
    req: GenerateRequest,
    ctx: HandlerContext,
    sink: MessageSink<MessageInitShape<typeof GenerateResponseSchema>>,
  ): Promise<void> => {
    const info = rpcInfo(ctx);
    info.model = req.model;
    info.node = "fake-node";
    ctx.responseTrailer.set("x-handler", "generate");
    if (req.prompt === "hold") await hold(ctx.signal);
    if (req.prompt === "fail-early") throw failure(req.model);
    for (let i = 0; i < 3; i++) {
      info.messages++;
      if (!sink.send({ text: `t${i}` })) await sink.drained();
    }
    if (req.prompt === "fail-late") throw failure(req.model);
    info.messages++;
    sink.send({ text: "", done: true });
  };
  const embed = async (
    req: { model: string; inputs: string[] },
    ctx: HandlerContext,
  ): Promise<MessageInitShape<typeof EmbedResponseDesc>> => {
    rpcInfo(ctx).model = req.model;
    ctx.responseTrailer.set("x-handler", "embed");
    if (req.inputs[0] === "hold") await hold(ctx.signal);
    if (req.inputs[0]?.startsWith("fail")) throw failure(req.model);
    return { embeddings: [{ values: [1, 2, 3] }] };
  };
  return {
    generate,
    embed,
    releaseAll: () => {
      for (const r of release) r();
      release.clear();
    },
  };
}

interface PipelineServer {
  url: string;
  logs: LogCapture;
  gateway: GatewayPipeline;
  held: EventEmitter;
  releaseAll(): void;
  close(): Promise<void>;
}

/** The gateway's pipeline in front of fake handlers, on both paths, as gateway.ts composes them. */
async function startPipelineServer(maxConcurrentRpcs: number): Promise<PipelineServer> {
  const logs = captureLogs();
  const gateway = createGatewayPipeline({ log: logs.log, maxConcurrentRpcs });
  const held = new EventEmitter();
  const fake = fakeInference(held);
  const health = createHealthService({ serverStatus: ServingStatus.SERVING });
  const shutdown = new AbortController();
  const routes = (router: ConnectRouter): void => {
    router.service(InferenceService, {
      generate: (req, ctx) => sinkIterable((sink) => fake.generate(req, ctx, sink)),
      embed: (req, ctx) => fake.embed(req, ctx),
    });
    router.service(Health, health.implementation);
  };
  const handler = connectNodeAdapter({
    routes,
    interceptors: [pipelineInterceptor(gateway.pipeline)],
    acceptCompression: [compressionGzip],
    compressMinBytes: Number.MAX_SAFE_INTEGER,
    shutdownSignal: shutdown.signal,
    contextValues: (req) => callValues(req.socket.remoteAddress),
  });
  const fastPath = createGrpcFastPath({
    routes: [
      serverStreamingRoute(InferenceService.method.generate, fake.generate),
      unaryRoute(InferenceService.method.embed, fake.embed),
    ],
    readMaxBytes: 1 << 20,
    writeMaxBytes: 1 << 20,
    shutdownSignal: shutdown.signal,
    pipeline: gateway.pipeline,
  });
  const server: DualProtocolServer = await listenDualProtocol(handler, {
    host: "127.0.0.1",
    port: 0,
    maxConcurrentStreams: 100,
    keepAliveTimeoutMs: 5000,
    fastPath,
  });
  return {
    url: `http://127.0.0.1:${server.port}`,
    logs,
    gateway,
    held,
    releaseAll: fake.releaseAll,
    async close() {
      fake.releaseAll();
      health.close();
      server.stopAccepting();
      if (!(await server.drained(500))) server.destroy();
    },
  };
}

describe("connect-node and the gRPC fast path run the same pipeline", () => {
  let s: PipelineServer;
  before(async () => {
    s = await startPipelineServer(100);
  });
  after(async () => {
    await s.close();
  });

  it("stream: same messages, the request id in headers and trailers, the handler's trailer, the same log line", async () => {
    const ids = { fast: "gen-ok-fast", connect: "gen-ok-connect" };
    const { fast, connect } = await bothPaths(
      s.url,
      GENERATE,
      GenerateRequestSchema,
      { model: "m", prompt: "ok" },
      ids,
    );
    for (const [r, id] of [
      [fast, ids.fast],
      [connect, ids.connect],
    ] as const) {
      assert.equal(r.status, 0, r.message);
      assert.equal(r.messages.length, 4);
      assert.deepEqual(answer(r.headers), { "x-request-id": id });
      assert.deepEqual(answer(r.trailers), { "grpc-status": "0", "x-request-id": id, "x-handler": "generate" });
    }
    assert.deepEqual(
      fast.messages.map((m) => fromBinary(GenerateResponseSchema, m).text),
      connect.messages.map((m) => fromBinary(GenerateResponseSchema, m).text),
    );
    const [a, b] = await logLines(s.logs, ids.fast, ids.connect);
    assert.deepEqual(a, b);
    assert.deepEqual(a, {
      level: "info",
      service: "ollama-grpc-gateway",
      pid: process.pid,
      method: "ollama.gateway.v1.InferenceService/Generate",
      model: "m",
      node: "fake-node",
      messages: 4,
      code: "ok",
      msg: "rpc",
    });
  });

  it("unary: the same answer, headers, trailers and log line", async () => {
    const ids = { fast: "emb-ok-fast", connect: "emb-ok-connect" };
    const { fast, connect } = await bothPaths(s.url, EMBED, EmbedRequestSchema, { model: "e", inputs: ["ok"] }, ids);
    for (const [r, id] of [
      [fast, ids.fast],
      [connect, ids.connect],
    ] as const) {
      assert.equal(r.status, 0, r.message);
      assert.deepEqual(fromBinary(EmbedResponseSchema, r.messages[0]!).embeddings[0]?.values, [1, 2, 3]);
      assert.deepEqual(answer(r.headers), { "x-request-id": id });
      assert.deepEqual(answer(r.trailers), { "grpc-status": "0", "x-request-id": id, "x-handler": "embed" });
    }
    const [a, b] = await logLines(s.logs, ids.fast, ids.connect);
    assert.deepEqual(a, b);
    assert.equal((a as Record<string, unknown>)["code"], "ok");
  });

  it("an error after messages: the handler's trailer, the error's metadata, status and details, on both", async () => {
    const ids = { fast: "gen-late-fast", connect: "gen-late-connect" };
    const { fast, connect } = await bothPaths(
      s.url,
      GENERATE,
      GenerateRequestSchema,
      { model: "m", prompt: "fail-late" },
      ids,
    );
    assert.equal(fast.messages.length, 3);
    assert.equal(connect.messages.length, 3);
    assert.deepEqual(withoutId(answer(fast.headers), ids.fast), withoutId(answer(connect.headers), ids.connect));
    assert.deepEqual(withoutId(answer(fast.trailers), ids.fast), withoutId(answer(connect.trailers), ids.connect));
    const t = answer(fast.trailers);
    assert.equal(t["grpc-status"], String(Code.NotFound));
    assert.equal(t["x-request-id"], ids.fast);
    assert.equal(t["x-handler"], "generate");
    assert.equal(t["x-error-meta"], "from-the-error");
    assert.equal(statusDetails(fast).reason, "MODEL_NOT_FOUND");
    const [a, b] = await logLines(s.logs, ids.fast, ids.connect);
    assert.deepEqual(a, b);
    assert.equal((a as Record<string, unknown>)["reason"], "MODEL_NOT_FOUND");
    assert.equal((a as Record<string, unknown>)["messages"], 3);
  });

  for (const [name, path, schema, message] of [
    ["a stream", GENERATE, GenerateRequestSchema, { model: "m", prompt: "fail-early" }],
    ["a unary call", EMBED, EmbedRequestSchema, { model: "e", inputs: ["fail"] }],
  ] as const) {
    it(`${name} failing before any message: what a client sees is the same (the fast path answers trailers-only)`, async () => {
      const ids = { fast: `early-${path.length}-fast`, connect: `early-${path.length}-connect` };
      const { fast, connect } = await bothPaths(s.url, path, schema as DescMessage, message, ids);
      assert.deepEqual(fast.trailers, {}, "trailers-only");
      assert.deepEqual(withoutId(seen(fast), ids.fast), withoutId(seen(connect), ids.connect));
      for (const [r, id] of [
        [fast, ids.fast],
        [connect, ids.connect],
      ] as const) {
        const all = seen(r);
        assert.equal(all["grpc-status"], String(Code.NotFound));
        assert.equal(all["x-request-id"], id, "the id reaches the client with the error");
        assert.equal(all["x-error-meta"], "from-the-error");
        assert.match(all["x-handler"] ?? "", /generate|embed/, "the handler's trailer is not dropped");
        assert.equal(r.trailers["x-request-id"] ?? r.headers["x-request-id"], id);
      }
      const [a, b] = await logLines(s.logs, ids.fast, ids.connect);
      assert.deepEqual(a, b);
    });
  }

  it("echoes the request id over every protocol, on success and in an error's metadata", async () => {
    for (const t of TRANSPORTS) {
      const client = createClient(InferenceService, t.make(s.url));
      const id = `every-${t.name.replace(/\W+/g, "-")}`;
      let header: Headers | undefined;
      let trailer: Headers | undefined;
      await client.embed(
        { model: "e", inputs: ["ok"] },
        { headers: { "x-request-id": id }, onHeader: (h) => (header = h), onTrailer: (h) => (trailer = h) },
      );
      assert.equal(header?.get("x-request-id"), id, `${t.name}: header`);
      assert.equal(trailer?.get("x-request-id"), id, `${t.name}: trailer`);
      const err = await client.embed({ model: "e", inputs: ["fail"] }, { headers: { "x-request-id": `${id}-e` } }).then(
        () => undefined,
        (e: unknown) => ConnectError.from(e),
      );
      assert.equal(err?.code, Code.NotFound, t.name);
      assert.equal(err?.metadata.get("x-request-id"), `${id}-e`, `${t.name}: error metadata`);
    }
  });
});

/**
 * Starts a call the fake handler holds, and resolves once it is held (it counts against the
 * cap) with the promise of its reply; fails instead of waiting forever when the call ends first
 * (refused, say).
 */
async function heldCall(s: PipelineServer, call: RawGrpcCall = {}): Promise<{ reply: Promise<RawGrpcReply> }> {
  const held = once(s.held, "held");
  const reply = rawGrpc(s.url, GENERATE, {
    body: [frame(encode(GenerateRequestSchema, { model: "m", prompt: "hold" }))],
    ...call,
  });
  await Promise.race([
    held,
    reply.then((r) => {
      throw new Error(`the call to hold ended first: status ${r.status} ${r.message}`);
    }),
  ]);
  return { reply };
}

describe("the concurrency cap on both paths", () => {
  let s: PipelineServer;
  before(async () => {
    s = await startPipelineServer(1);
  });
  after(async () => {
    await s.close();
  });

  it("refuses over the cap with the same GATEWAY_OVERLOADED, RetryInfo, trailers and log line, and counts no exempt call", async () => {
    const holding = await heldCall(s);
    try {
      assert.equal(s.gateway.cap.active, 1);
      const ids = { fast: "cap-fast", connect: "cap-connect" };
      const { fast, connect } = await bothPaths(s.url, EMBED, EmbedRequestSchema, { model: "e", inputs: ["ok"] }, ids);
      assert.deepEqual(withoutId(seen(fast), ids.fast), withoutId(seen(connect), ids.connect));
      for (const [r, id] of [
        [fast, ids.fast],
        [connect, ids.connect],
      ] as const) {
        assert.equal(r.status, Code.ResourceExhausted, r.message);
        assert.deepEqual(statusDetails(r), { reason: "GATEWAY_OVERLOADED", retryMs: 250 });
        assert.equal(seen(r)["x-request-id"], id);
        assert.equal(seen(r)["x-handler"], undefined, "the handler never ran");
      }
      assert.equal(fast.message, connect.message);
      const [a, b] = await logLines(s.logs, ids.fast, ids.connect);
      assert.deepEqual(a, b);
      assert.equal((a as Record<string, unknown>)["code"], "ResourceExhausted");
      assert.equal((a as Record<string, unknown>)["reason"], "GATEWAY_OVERLOADED");

      // Health is exempt: it answers on a full gateway, and is not counted.
      const health = createClient(Health, createGrpcTransport({ baseUrl: s.url }));
      assert.equal((await health.check({})).status, ServingStatus.SERVING);
      assert.equal(s.gateway.cap.active, 1);
    } finally {
      s.releaseAll();
    }
    assert.equal((await holding.reply).status, 0);
    assert.ok(await eventually(() => s.gateway.cap.active === 0, 5000), "the held call gave its slot back");
  });

  it("does not count an open health watch: a Generate still gets the one slot", async () => {
    assert.ok(await eventually(() => s.gateway.cap.active === 0, 5000), "no call left over");
    const watcher = new AbortController();
    const health = createClient(Health, createGrpcTransport({ baseUrl: s.url }));
    const watch = health.watch({}, { signal: watcher.signal })[Symbol.asyncIterator]();
    try {
      assert.equal((await watch.next()).value?.status, ServingStatus.SERVING);
      assert.equal(s.gateway.cap.active, 0);
      const ids = { fast: "watch-fast", connect: "watch-connect" };
      const { fast, connect } = await bothPaths(
        s.url,
        GENERATE,
        GenerateRequestSchema,
        { model: "m", prompt: "ok" },
        ids,
      );
      assert.equal(fast.status, 0, fast.message);
      assert.equal(connect.status, 0, connect.message);
    } finally {
      watcher.abort();
      await watch.return?.().catch(() => undefined);
    }
    assert.ok(await eventually(() => s.gateway.cap.active === 0, 5000));
  });

  it("releases the slot of a call the client cancels, and logs it as CANCELLED, on both paths", async () => {
    for (const gzip of [false, true]) {
      assert.ok(await eventually(() => s.gateway.cap.active === 0, 5000), "no call left over");
      const bytes = encode(GenerateRequestSchema, { model: "m", prompt: "hold" });
      let client: ClientHttp2Stream | undefined;
      const cancelled = await heldCall(s, {
        body: [gzip ? frame(gzipSync(bytes), 1) : frame(bytes)],
        headers: { "x-request-id": `cancel-${gzip}`, ...(gzip ? { "grpc-encoding": "gzip" } : {}) },
        onStream: (stream) => (client = stream),
      });
      client?.close(http2constants.NGHTTP2_CANCEL);
      assert.equal((await cancelled.reply).rstCode, http2constants.NGHTTP2_CANCEL);
      assert.ok(await eventually(() => s.gateway.cap.active === 0, 5000), `gzip ${gzip}: slot released`);
      assert.ok(await eventually(() => logLine(s.logs, `cancel-${gzip}`) !== undefined, 5000));
      assert.equal(logLine(s.logs, `cancel-${gzip}`)?.["code"], "Canceled");
    }
  });
});
