// Attacks on the gateway's calls by clients that misbehave on purpose (issue 15, request level),
// each against a gateway running as its own process, so its descriptors, memory, stderr and log
// lines can be read as an operator would. Each test states the attack, then what must hold.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import type * as http2 from "node:http2";
import { gzipSync } from "node:zlib";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { codeFromString } from "@connectrpc/connect/protocol-connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { ErrorInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";
import {
  EmbedRequestSchema,
  GenerateRequestSchema,
  InferenceService,
} from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { GatewayService } from "../src/gen/ollama/gateway/v1/gateway_pb.js";
import { ServerReflection } from "../src/gen/grpc/reflection/v1/reflection_pb.js";
import { startSimulator } from "../src/simulator/simulator.js";
import type { Simulator } from "../src/simulator/simulator.js";
import {
  answerEncoding,
  embedAnswerBytes,
  embedInputsThatFit,
  embeddingLength,
} from "../src/services/validate-request.js";
import {
  contentFreeDecodeMessage,
  isClientCaused,
  isServerError,
  markClientCaused,
} from "../src/errors/client-errors.js";
import { capDeadlineHeaders, capTimeout } from "../src/transport/deadline-header.js";
import { createRequestBodyWaits, shedVictim } from "../src/transport/request-body-waits.js";
import { createPipeline } from "../src/pipeline/pipeline.js";
import { spawnGateway } from "./helpers/gateway-process.js";
import type { GatewayProcess } from "./helpers/gateway-process.js";
import { connectRaw, eventually, fdCount, h2Connect, h2Request, rssMb, within } from "./helpers/hostile-clients.js";
import type { H2Reply } from "./helpers/hostile-clients.js";
import { encode, frame } from "./helpers/raw-grpc.js";
import { TRANSPORTS } from "./helpers/transports.js";

const GENERATE = "/ollama.gateway.v1.InferenceService/Generate";
const EMBED = "/ollama.gateway.v1.InferenceService/Embed";

/** The ways a call reaches the gateway over HTTP/2, and which of its two servers takes it. */
type Protocol = "grpc" | "grpc-gzip" | "grpc-web" | "connect";

const CONTENT_TYPE: Record<Protocol, { unary: string; stream: string }> = {
  grpc: { unary: "application/grpc", stream: "application/grpc" },
  "grpc-gzip": { unary: "application/grpc", stream: "application/grpc" },
  "grpc-web": { unary: "application/grpc-web+proto", stream: "application/grpc-web+proto" },
  connect: { unary: "application/json", stream: "application/connect+json" },
};

/** Request headers of a call to `path` in `protocol`, with a request id and any extra headers. */
function callHeaders(
  protocol: Protocol,
  path: string,
  requestId: string,
  extra: Record<string, string> = {},
): http2.OutgoingHttpHeaders {
  const streaming = path === GENERATE;
  return {
    ":method": "POST",
    ":path": path,
    "content-type": CONTENT_TYPE[protocol][streaming ? "stream" : "unary"],
    ...(protocol === "connect" ? { "connect-protocol-version": "1" } : { te: "trailers" }),
    ...(protocol === "grpc-gzip" ? { "grpc-encoding": "gzip" } : {}),
    "x-request-id": requestId,
    ...extra,
  };
}

/** The status a reply carries, whatever the protocol: gRPC trailers, a gRPC-Web trailer frame, Connect JSON. */
function statusOf(protocol: Protocol, path: string, r: H2Reply): { code: Code | undefined; message: string } {
  if (protocol === "grpc" || protocol === "grpc-gzip") {
    return { code: r.grpcStatus as Code | undefined, message: r.grpcMessage };
  }
  if (protocol === "grpc-web") {
    for (let at = 0; at + 5 <= r.body.length; ) {
      const n = r.body.readUInt32BE(at + 1);
      if ((r.body[at]! & 0x80) === 0x80) {
        const text = r.body.subarray(at + 5, at + 5 + n).toString();
        const status = /grpc-status:\s*(\d+)/i.exec(text)?.[1];
        const message = /grpc-message:\s*(.*)/i.exec(text)?.[1]?.trim() ?? "";
        return {
          code: status === undefined ? undefined : (Number(status) as Code),
          message: decodeURIComponent(message),
        };
      }
      at += 5 + n;
    }
    return { code: undefined, message: "" };
  }
  let error: { code?: string; message?: string } | undefined;
  if (path === GENERATE) {
    // Connect streaming: the end-stream envelope (flag 2) holds the error.
    for (let at = 0; at + 5 <= r.body.length; ) {
      const n = r.body.readUInt32BE(at + 1);
      if ((r.body[at]! & 0x02) === 0x02) {
        error = (JSON.parse(r.body.subarray(at + 5, at + 5 + n).toString()) as { error?: typeof error }).error;
        if (error === undefined) return { code: Code.Unknown - 2, message: "" }; // OK
      }
      at += 5 + n;
    }
  } else if (Number(r.headers[":status"]) !== 200) {
    error = JSON.parse(r.body.toString()) as typeof error;
  } else {
    return { code: 0 as Code, message: "" };
  }
  return { code: error?.code === undefined ? undefined : codeFromString(error.code), message: error?.message ?? "" };
}

/** The gateway's `rpc` line for a request id, once written. */
async function rpcLine(gw: GatewayProcess, requestId: string, ms = 10_000): Promise<Record<string, unknown>> {
  const find = (): Record<string, unknown> | undefined =>
    gw.lines().find((l) => l["msg"] === "rpc" && l["requestId"] === requestId);
  await eventually(() => find() !== undefined, `the rpc line of ${requestId} is written`, ms);
  return find()!;
}

/** Sends a PING and waits for its answer: the gateway has then processed every frame sent before it. */
async function pinged(session: http2.ClientHttp2Session): Promise<void> {
  if (session.connecting) await new Promise((resolve) => session.once("connect", resolve));
  await new Promise<void>((resolve, reject) => {
    session.ping((err) => (err ? reject(err) : resolve()));
  });
}

/** A body for `path` in `protocol`: one framed message (gRPC, gRPC-Web), JSON (Connect unary) or enveloped JSON. */
function bodyOf(protocol: Protocol, path: string, json: Record<string, unknown>): Buffer {
  if (protocol === "connect") {
    const text = Buffer.from(JSON.stringify(json));
    return path === GENERATE ? frame(text) : text;
  }
  const bytes =
    path === GENERATE
      ? encode(GenerateRequestSchema, json as Parameters<typeof encode<typeof GenerateRequestSchema>>[1])
      : encode(EmbedRequestSchema, json as Parameters<typeof encode<typeof EmbedRequestSchema>>[1]);
  return protocol === "grpc-gzip" ? frame(gzipSync(bytes), 1) : frame(bytes);
}

const ALL: readonly Protocol[] = ["grpc", "grpc-gzip", "grpc-web", "connect"];

describe("hostile requests against the gateway process", { timeout: 300_000 }, () => {
  let sim: Simulator;
  before(async () => {
    sim = await startSimulator();
  });
  after(async () => {
    await sim.close();
  });

  describe("with REQUEST_BODY_TIMEOUT_MS=1500", () => {
    let gw: GatewayProcess;
    before(async () => {
      gw = await spawnGateway({ OLLAMA_URL: sim.url, REQUEST_BODY_TIMEOUT_MS: "1500" });
    });
    after(() => gw.stop());

    it("ends a call whose body never comes at the body timeout with DEADLINE_EXCEEDED (REQUEST_BODY_TIMEOUT), on both paths and every protocol, logged", async (t) => {
      const session = h2Connect(gw.url);
      try {
        const cases = ALL.flatMap((p) =>
          [GENERATE, EMBED].map((path) => ({ p, path, id: `nobody-${p}-${path.slice(-5)}` })),
        );
        const replies = await Promise.all(
          cases.map((c) => h2Request(session, callHeaders(c.p, c.path, c.id), [], { keepOpen: true })),
        );
        for (const [i, c] of cases.entries()) {
          const r = replies[i]!;
          const status = statusOf(c.p, c.path, r);
          t.diagnostic(`${c.p} ${c.path}: ${Code[status.code ?? -1]} "${status.message}" after ${r.ms} ms`);
          assert.equal(status.code, Code.DeadlineExceeded, `${c.p} ${c.path}: ${JSON.stringify(status)}`);
          assert.match(status.message, /request body did not arrive within 1500 ms/);
          assert.ok(r.ms >= 1400 && r.ms < 10_000, `${c.p} ${c.path}: ended after ${r.ms} ms`);
          assert.notEqual(r.rstCode, -1, "the gateway ended the stream, the client did not have to");
          const line = await rpcLine(gw, c.id);
          assert.equal(line["code"], "DeadlineExceeded");
          assert.equal(line["reason"], "REQUEST_BODY_TIMEOUT");
        }
      } finally {
        session.close();
      }
    });

    it("answers a Connect call over HTTP/1.1 whose body stalls at the body timeout, then closes the connection (the rest of the body will not be read)", async () => {
      const c = await connectRaw(Number(new URL(gw.url).port));
      c.socket.write(
        `POST ${EMBED} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nX-Request-Id: h1-stall\r\nContent-Length: 100\r\n\r\n{"model":`,
      );
      const closedAfter = await within(c.closed, 10_000, "the connection is closed");
      const answer = c.received().toString();
      assert.match(answer.split("\r\n")[0]!, /^HTTP\/1.1 504/, answer);
      assert.match(answer, /connection: close/i);
      assert.match(answer, /"code":"deadline_exceeded"/);
      assert.ok(closedAfter >= 1400, `closed at the body timeout, not before (${closedAfter} ms)`);
      assert.equal((await rpcLine(gw, "h1-stall"))["reason"], "REQUEST_BODY_TIMEOUT");
    });

    it("keeps a bidi stream (reflection) that sends its first message at once open past the body timeout", async () => {
      const client = createClient(ServerReflection, TRANSPORTS[0]!.make(gw.url));
      async function* requests() {
        yield { messageRequest: { case: "listServices" as const, value: "" } };
        await new Promise((r) => setTimeout(r, 2500));
        yield { messageRequest: { case: "listServices" as const, value: "" } };
      }
      let answers = 0;
      for await (const _ of client.serverReflectionInfo(requests())) answers++;
      assert.equal(answers, 2, "both requests answered, the second after the body timeout");
    });

    it("ends the wait for a body at the call's deadline when that comes first", async () => {
      const session = h2Connect(gw.url);
      try {
        for (const p of ALL) {
          const r = await h2Request(session, callHeaders(p, EMBED, `short-${p}`, timeoutHeader(p, 200)), [], {
            keepOpen: true,
          });
          const status = statusOf(p, EMBED, r);
          assert.equal(status.code, Code.DeadlineExceeded, `${p}: ${JSON.stringify(status)}`);
          assert.ok(r.ms < 1400, `${p}: ended at the 200 ms deadline, not the body timeout (${r.ms} ms)`);
        }
      } finally {
        session.close();
      }
    });

    it("caps a deadline of 700 hours (30 days on Connect) at MAX_DEADLINE_MS: every protocol's call succeeds, no timer overflows", async () => {
      const stderrBefore = gw.stderr();
      for (const transport of TRANSPORTS) {
        const client = createClient(InferenceService, transport.make(gw.url));
        const headers = transport.name.startsWith("Connect")
          ? { "connect-timeout-ms": String(30 * 24 * 3600 * 1000) }
          : { "grpc-timeout": "700H" };
        let text = "";
        for await (const m of client.generate({ model: "llama3.2", prompt: "hi" }, { headers })) text += m.text;
        assert.ok(text.length > 0, `${transport.name}: Generate answered`);
        const embed = await client.embed({ model: "all-minilm", inputs: ["a", "b"] }, { headers });
        assert.equal(embed.embeddings.length, 2, `${transport.name}: Embed answered`);
      }
      assert.doesNotMatch(gw.stderr().slice(stderrBefore.length), /TimeoutOverflowWarning/);
    });

    it("answers a malformed Connect JSON body INVALID_ARGUMENT without quoting it, with one rpc line at info that quotes none of it", async () => {
      const secret = "SECRET-7d3f";
      const bodies: [string, string][] = [
        ["syntax", `{"model":"all-minilm","inputs":["x"],"options":{"stop":["${secret}"}}`],
        ["syntax-token", `{"model":"all-minilm","inputs":[${secret}]}`],
        ["type", `{"model":"all-minilm","inputs":"${secret}"}`],
        ["short-type", `{"model":"all-minilm","inputs":["x"],"dimensions":"S3"}`],
        ["unknown-key", `{"model":"all-minilm","inputs":["x"],"${secret}-key":1}`],
      ];
      for (const [kind, text] of bodies) {
        const id = `json-${kind}`;
        const res = await fetch(`${gw.url}${EMBED}`, {
          method: "POST",
          headers: { "content-type": "application/json", "x-request-id": id },
          body: text,
        });
        const answer = (await res.json()) as { code: string; message: string };
        assert.equal(answer.code, "invalid_argument", `${kind}: ${JSON.stringify(answer)}`);
        assert.ok(!answer.message.includes(secret), `${kind}: the client's message quotes the body: ${answer.message}`);
        assert.ok(!answer.message.includes("S3"), `${kind}: the client's message quotes the body: ${answer.message}`);
        const line = await rpcLine(gw, id);
        assert.equal(line["level"], "info", `${kind}: ${JSON.stringify(line)}`);
        assert.equal(line["code"], "InvalidArgument");
        assert.equal(line["cause"], undefined, "no cause, no stack");
      }
      // Protobuf that is not protobuf, on both gRPC paths and gRPC-Web: INTERNAL as grpc-go answers, logged at info.
      const session = h2Connect(gw.url);
      try {
        for (const p of ["grpc", "grpc-gzip", "grpc-web"] as const) {
          const garbage = Buffer.from(`\u00ff\u00ff\u00ff${secret}`, "latin1");
          const body = p === "grpc-gzip" ? frame(gzipSync(garbage), 1) : frame(garbage);
          const r = await h2Request(session, callHeaders(p, EMBED, `garbage-${p}`), [body]);
          const status = statusOf(p, EMBED, r);
          assert.equal(status.code, Code.Internal, `${p}: ${JSON.stringify(status)}`);
          assert.ok(!status.message.includes(secret), `${p}: the message quotes the body`);
          const line = await rpcLine(gw, `garbage-${p}`);
          assert.equal(line["level"], "info", `${p}: ${JSON.stringify(line)}`);
          assert.equal(line["cause"], undefined);
        }
      } finally {
        session.close();
      }
      const leaked = gw.lines().filter((l) => JSON.stringify(l).includes(secret));
      assert.deepEqual(leaked, [], "no log line quotes the request");
      assert.ok(!gw.stderr().includes(secret), "nor does stderr");
    });

    it("rejects an unknown enum name in JSON as it rejects an unknown number: INVALID_ARGUMENT on Connect and gRPC-Web JSON", async () => {
      const session = h2Connect(gw.url);
      try {
        const json = { model: "llama3.2", prompt: "hi", think: "THINK_MODE_BOGUS" };
        const connect = await h2Request(session, callHeaders("connect", GENERATE, "enum-connect"), [
          bodyOf("connect", GENERATE, json),
        ]);
        const refused = statusOf("connect", GENERATE, connect);
        assert.equal(refused.code, Code.InvalidArgument);
        assert.doesNotMatch(refused.message, /BOGUS/, "the message names the field's type, not the value");
        const web = await h2Request(
          session,
          { ...callHeaders("grpc-web", GENERATE, "enum-web"), "content-type": "application/grpc-web+json" },
          [frame(Buffer.from(JSON.stringify(json)))],
        );
        assert.equal(statusOf("grpc-web", GENERATE, web).code, Code.InvalidArgument);
        const number = await h2Request(session, callHeaders("connect", GENERATE, "enum-number"), [
          bodyOf("connect", GENERATE, { ...json, think: 99 }),
        ]);
        assert.equal(statusOf("connect", GENERATE, number).code, Code.InvalidArgument, "as an unknown number");
        const known = await h2Request(session, callHeaders("connect", GENERATE, "enum-known"), [
          bodyOf("connect", GENERATE, { ...json, think: "THINK_MODE_OFF" }),
        ]);
        assert.equal(statusOf("connect", GENERATE, known).message, "", "a known name is served");
      } finally {
        session.close();
      }
    });

    it("refuses an Embed whose answer cannot fit before any upstream work, saying how many inputs fit; memory stays flat under 8 at once", async (t) => {
      const inputs = Array.from({ length: 4096 }, (_, i) => `input number ${i} with a few words in it`);
      const client = createClient(InferenceService, TRANSPORTS[0]!.make(gw.url));
      // The model's metadata is fetched (and cached) by a first small call.
      await client.embed({ model: "all-minilm", inputs: ["warm"] });
      const embedsBefore = sim.stats.requests["/api/embed"] ?? 0;
      const fitBinary = embedInputsThatFit(384, 4 * 1024 * 1024, "binary");
      const fitJson = embedInputsThatFit(384, 4 * 1024 * 1024, "json");
      const baseline = rssMb(gw.pid);
      let peak = baseline;
      const sampler = setInterval(() => (peak = Math.max(peak, rssMb(gw.pid))), 20);
      try {
        const results = await Promise.all(
          Array.from({ length: 8 }, (_, i) =>
            createClient(
              InferenceService,
              i % 2 === 0
                ? TRANSPORTS[0]!.make(gw.url)
                : createConnectTransport({ baseUrl: gw.url, httpVersion: "1.1", useBinaryFormat: false }),
            )
              .embed({ model: "all-minilm", inputs })
              .then(
                () => undefined,
                (e: unknown) => ConnectError.from(e),
              ),
          ),
        );
        for (const [i, e] of results.entries()) {
          assert.ok(e !== undefined, "refused");
          assert.equal(e.code, Code.InvalidArgument, e.message);
          assert.equal(e.findDetails(ErrorInfoSchema)[0]?.reason, "ANSWER_TOO_LARGE");
          const fit = i % 2 === 0 ? fitBinary : fitJson;
          assert.match(e.rawMessage, new RegExp(`at most ${fit} inputs fit`), e.rawMessage);
        }
      } finally {
        clearInterval(sampler);
      }
      t.diagnostic(
        `RSS ${baseline} MB before, peak ${peak} MB during 8 refused Embeds of 4,096 inputs; fit ${fitBinary} (binary), ${fitJson} (JSON)`,
      );
      assert.equal(sim.stats.requests["/api/embed"] ?? 0, embedsBefore, "Ollama computed nothing");
      assert.ok(peak - baseline < 150, `RSS grew by ${peak - baseline} MB`);
      // As many inputs as fit are served.
      const served = await client.embed({ model: "all-minilm", inputs: inputs.slice(0, fitBinary) });
      assert.equal(served.embeddings.length, fitBinary);
    });
  });

  describe("with REQUEST_BODY_TIMEOUT_MS=60000 (header-only streams stay open)", () => {
    let gw: GatewayProcess;
    before(async () => {
      gw = await spawnGateway({ OLLAMA_URL: sim.url, REQUEST_BODY_TIMEOUT_MS: "60000" });
    });
    after(() => gw.stop());

    it("serves an honest client while 2,970 Generate streams over 3 connections send headers and never a body (they hold no call slot)", async (t) => {
      const attackers = [h2Connect(gw.url), h2Connect(gw.url), h2Connect(gw.url)];
      const held: Promise<H2Reply>[] = [];
      const opened = attackers.map(async (session, s) => {
        for (let i = 0; i < 990; i++) {
          const p: Protocol = i % 3 === 0 ? "grpc-web" : "grpc";
          held.push(
            h2Request(session, callHeaders(p, GENERATE, `held-${s}-${i}`), [], { keepOpen: true, timeoutMs: 120_000 }),
          );
        }
        await pinged(session);
      });
      await Promise.all(opened);
      try {
        const inference = createClient(InferenceService, TRANSPORTS[0]!.make(gw.url));
        const connect = createClient(InferenceService, TRANSPORTS[2]!.make(gw.url));
        const answers = await Promise.all([
          ...Array.from({ length: 10 }, async () => {
            let text = "";
            for await (const m of inference.generate({ model: "llama3.2", prompt: "honest" })) text += m.text;
            return text.length > 0;
          }),
          ...Array.from(
            { length: 5 },
            async () => (await connect.embed({ model: "all-minilm", inputs: ["x"] })).embeddings.length === 1,
          ),
        ]);
        assert.deepEqual(new Set(answers), new Set([true]), "every honest call was served");
        const status = await createClient(GatewayService, TRANSPORTS[0]!.make(gw.url)).getStatus({});
        t.diagnostic(`active calls reported with 2,970 bodiless streams open: ${status.activeCalls}`);
        assert.ok(status.activeCalls < 100, `bodiless streams are not counted (${status.activeCalls})`);
      } finally {
        for (const s of attackers) s.destroy();
      }
      const outcomes = await within(Promise.all(held), 30_000, "the held streams end once their connections are gone");
      assert.equal(outcomes.length, 2970);
      await eventually(
        () =>
          gw.lines().filter((l) => l["msg"] === "rpc" && String(l["requestId"]).startsWith("held-")).length === 2970,
        "every held stream is logged once as it ends",
        30_000,
      );
    });
  });

  describe("with REQUEST_BODY_MAX_WAITING=100 and MAX_DEADLINE_MS=2000", () => {
    let gw: GatewayProcess;
    before(async () => {
      gw = await spawnGateway({
        OLLAMA_URL: sim.url,
        REQUEST_BODY_TIMEOUT_MS: "60000",
        REQUEST_BODY_MAX_WAITING: "100",
        MAX_DEADLINE_MS: "2000",
      });
    });
    after(() => gw.stop());

    it("sheds the calls silent longest when more wait for their body, and serves a call whose body comes", async () => {
      const first = h2Connect(gw.url);
      const second = h2Connect(gw.url);
      try {
        const old = Array.from({ length: 100 }, (_, i) =>
          h2Request(first, callHeaders("grpc", EMBED, `old-${i}`), [], { keepOpen: true, timeoutMs: 60_000 }),
        );
        await pinged(first);
        const fresh = Array.from({ length: 30 }, (_, i) =>
          h2Request(second, callHeaders(i % 2 ? "grpc-web" : "grpc", EMBED, `new-${i}`), [], {
            keepOpen: true,
            timeoutMs: 60_000,
          }),
        );
        await pinged(second);
        const shed = await within(Promise.all(old.slice(0, 30)), 10_000, "the 30 oldest are shed");
        for (const r of shed) {
          assert.equal(r.grpcStatus, Code.ResourceExhausted, r.grpcMessage);
          assert.match(r.grpcMessage, /waiting for their request body/);
        }
        const honest = await h2Request(second, callHeaders("grpc", EMBED, "honest"), [
          bodyOf("grpc", EMBED, { model: "all-minilm", inputs: ["x"] }),
        ]);
        assert.equal(honest.grpcStatus, 0, honest.grpcMessage);
        first.destroy();
        second.destroy();
        await Promise.all([...old, ...fresh]);
      } finally {
        first.destroy();
        second.destroy();
      }
    });

    it("ends a call with a 700-hour deadline at MAX_DEADLINE_MS, on both paths", async () => {
      sim.faults.add({ kind: "stall", path: "/api/generate", ms: 8000, times: 2 });
      try {
        const session = h2Connect(gw.url);
        try {
          for (const p of ["grpc", "grpc-web"] as const) {
            const r = await h2Request(session, callHeaders(p, GENERATE, `capped-${p}`, { "grpc-timeout": "700H" }), [
              bodyOf(p, GENERATE, { model: "llama3.2", prompt: "stall" }),
            ]);
            const status = statusOf(p, GENERATE, r);
            assert.equal(status.code, Code.DeadlineExceeded, `${p}: ${JSON.stringify(status)}`);
            assert.ok(r.ms >= 1800 && r.ms < 7000, `${p}: ended after ${r.ms} ms`);
          }
        } finally {
          session.close();
        }
      } finally {
        sim.faults.clear();
      }
      assert.doesNotMatch(gw.stderr(), /TimeoutOverflowWarning/);
      await eventually(() => fdCount(gw.pid) > 0, "the gateway is alive");
    });
  });
});

/** A deadline header of `ms` in the protocol's own syntax. */
function timeoutHeader(p: Protocol, ms: number): Record<string, string> {
  return p === "connect" ? { "connect-timeout-ms": String(ms) } : { "grpc-timeout": `${ms}m` };
}

// ---------------------------------------------------------------------------------------------
// The policies behind the above, pure, stated as tables; and the body register's mechanism.

describe("the request-level policies", () => {
  it("reduces decoding errors to the field path and the kind of error, quoting nothing of the request", () => {
    const table: [string, string][] = [
      [
        'cannot decode message ollama.gateway.v1.GenerateRequest from JSON: Unexpected token \'S\', "{"stop": SECRET}" is not valid JSON',
        "cannot decode message ollama.gateway.v1.GenerateRequest from JSON: invalid JSON",
      ],
      [
        "cannot decode message ollama.gateway.v1.GenerateRequest from JSON: Expected ',' or ']' after array element in JSON at position 45",
        "cannot decode message ollama.gateway.v1.GenerateRequest from JSON: invalid JSON at position 45",
      ],
      [
        'cannot decode field ollama.gateway.v1.Options.temperature from JSON: expected number (float64), got "SECRET"',
        "cannot decode field ollama.gateway.v1.Options.temperature from JSON: expected number (float64)",
      ],
      [
        "cannot decode field ollama.gateway.v1.Options.stop from JSON: list item #1: expected string, got 5",
        "cannot decode field ollama.gateway.v1.Options.stop from JSON: list item #1: expected string",
      ],
      [
        'cannot decode field ollama.gateway.v1.Options.extra from JSON: map entry "SECRET": expected string, got 5',
        "cannot decode field ollama.gateway.v1.Options.extra from JSON: map entry: expected string",
      ],
      [
        'cannot decode field ollama.gateway.v1.Options.extra from JSON: duplicate map key "SECRET"',
        "cannot decode field ollama.gateway.v1.Options.extra from JSON: duplicate map key",
      ],
      [
        "cannot decode field ollama.gateway.v1.GenerateRequest.images from JSON: invalid base64 string",
        "cannot decode field ollama.gateway.v1.GenerateRequest.images from JSON: invalid base64 string",
      ],
      [
        'cannot decode enum ollama.gateway.v1.ThinkMode from JSON: "SECRET"',
        "cannot decode enum ollama.gateway.v1.ThinkMode from JSON: unknown value",
      ],
      [
        'cannot decode message google.protobuf.Duration from JSON: "SECRET"',
        "cannot decode message google.protobuf.Duration from JSON: invalid value",
      ],
      [
        "cannot decode message ollama.gateway.v1.GenerateRequest from JSON: Array(2)",
        "cannot decode message ollama.gateway.v1.GenerateRequest from JSON: invalid value",
      ],
      [
        'cannot decode message ollama.gateway.v1.GenerateRequest from JSON: key "fooBar" is unknown',
        'cannot decode message ollama.gateway.v1.GenerateRequest from JSON: key "fooBar" is unknown',
      ],
      [
        'cannot decode message ollama.gateway.v1.GenerateRequest from JSON: key "SECRET value!" is unknown',
        "cannot decode message ollama.gateway.v1.GenerateRequest from JSON: a key is unknown",
      ],
      [
        'cannot decode message ollama.gateway.v1.GenerateRequest from JSON: duplicate object key "model"',
        'cannot decode message ollama.gateway.v1.GenerateRequest from JSON: key "model" is duplicated',
      ],
      ["parse binary: premature EOF", "parse binary: premature EOF"],
      ["parse binary: illegal tag: field no 1 wire type 7", "parse binary: illegal tag: field no 1 wire type 7"],
      ["parse binary: The encoded data was not valid for encoding utf-8", "parse binary: invalid UTF-8"],
      ["the operation timed out", "the operation timed out"],
    ];
    for (const [given, want] of table) {
      assert.equal(contentFreeDecodeMessage(given), want, given);
      assert.doesNotMatch(contentFreeDecodeMessage(given), /SECRET/);
    }
  });

  it("tells client-caused errors from server errors, whatever their code", () => {
    const table: [ConnectError, boolean][] = [
      [new ConnectError("parse binary: premature EOF", Code.Internal), false],
      [new ConnectError("received compressed envelope, but do not know how to decompress", Code.Internal), false],
      [new ConnectError("decompression failed", Code.Internal), false],
      [new ConnectError("protocol error: incomplete envelope", Code.InvalidArgument), false],
      [markClientCaused(new ConnectError("anything", Code.Internal)), false],
      [new ConnectError("internal error", Code.Internal), true],
      [new ConnectError("boom", Code.Unknown), true],
      [new ConnectError("no", Code.InvalidArgument), false],
    ];
    for (const [error, server] of table) {
      assert.equal(isServerError(error), server, error.rawMessage);
      if (error.code === Code.Internal && !server) assert.ok(isClientCaused(error), error.rawMessage);
    }
  });

  it("caps deadline headers at MAX_DEADLINE_MS in each header's own syntax, and leaves invalid ones to connect-node", () => {
    const max = 1_800_000;
    const table: [Parameters<typeof capTimeout>[0], string, number, ReturnType<typeof capTimeout>][] = [
      ["grpc-timeout", "700H", max, { value: "1800000m", ms: max }],
      ["grpc-timeout", "99999999S", max, { value: "1800000m", ms: max }],
      ["grpc-timeout", "5S", max, { value: "5S", ms: 5000 }],
      ["grpc-timeout", "700H", 7 * 24 * 3600 * 1000, { value: "604800S", ms: 604_800_000 }],
      ["grpc-timeout", "99999999H", 2 ** 40, { value: "2147483S", ms: 2_147_483_000 }],
      ["grpc-timeout", "bogus", max, undefined],
      ["connect-timeout-ms", String(30 * 24 * 3600 * 1000), max, { value: "1800000", ms: max }],
      ["connect-timeout-ms", "250", max, { value: "250", ms: 250 }],
      ["connect-timeout-ms", "-1", max, undefined],
    ];
    for (const [name, value, cap, want] of table)
      assert.deepEqual(capTimeout(name, value, cap), want, `${name}: ${value}`);
    const headers = new Headers({ "grpc-timeout": "700H", "connect-timeout-ms": "5000" });
    assert.equal(capDeadlineHeaders(headers, max), 5000, "the shorter of the two");
    assert.equal(headers.get("grpc-timeout"), "1800000m");
    assert.equal(capDeadlineHeaders(new Headers(), max), undefined);
  });

  it("sheds the waiting call silent longest, and only when the register is full", () => {
    assert.equal(shedVictim(["a", "b"], 2, 3), undefined);
    assert.equal(shedVictim(["a", "b", "c"], 3, 3), "a");
    assert.equal(shedVictim([], 0, 0), undefined);
  });

  it("estimates an Embed answer's size per encoding and how many inputs fit", () => {
    // 384 float32 values: 1,536 bytes, packed behind a tag and length, in a message behind its own.
    assert.equal(embedAnswerBytes(1, 384, "binary"), 1536 + 2 + 2 + 2);
    assert.equal(embedAnswerBytes(4096, 384, "binary"), 4096 * 1542);
    assert.equal(embedAnswerBytes(1, 384, "json"), 384 * 12 + 14, "12 bytes a value and the object around them");
    assert.equal(embedInputsThatFit(384, 4 * 1024 * 1024, "binary"), Math.floor((4 * 1024 * 1024) / 1542));
    assert.equal(answerEncoding("application/json"), "json");
    assert.equal(answerEncoding("application/grpc-web+json"), "json");
    assert.equal(answerEncoding("application/grpc"), "binary");
    assert.equal(answerEncoding(null), "binary");
    assert.equal(embeddingLength({ "general.architecture": "bert", "bert.embedding_length": 384 }), 384);
    assert.equal(embeddingLength({ "llama.embedding_length": 4096, "clip.vision.embedding_length": 1024 }), 4096);
    assert.equal(embeddingLength({ "general.architecture": "x" }), undefined);
    assert.equal(embeddingLength({ "a.embedding_length": 1, "b.embedding_length": 2 }), undefined, "ambiguous");
  });

  it("ends a waiting call at the body timeout, at its deadline when sooner, and sheds by last activity", async () => {
    const waits = createRequestBodyWaits({ timeoutMs: 80, maxWaiting: 2 });
    const ended: string[] = [];
    const expired = (name: string) => (e: ConnectError) => ended.push(`${name}: ${Code[e.code]}`);
    const slow = waits.wait(expired("slow"));
    const early = waits.wait(expired("early"), 20);
    await eventually(() => ended.length === 1, "the deadline ends the second", 2000);
    assert.deepEqual(ended, ["early: DeadlineExceeded"]);
    await eventually(() => ended.length === 2, "the body timeout ends the first", 2000);
    assert.deepEqual(ended.slice(1), ["slow: DeadlineExceeded"]);
    assert.equal(waits.waiting, 0);
    assert.deepEqual(waits.ended, { timedOut: 1, shed: 0 });
    slow.done();
    early.done();
    const shedding = createRequestBodyWaits({ timeoutMs: 60_000, maxWaiting: 2 });
    const order: string[] = [];
    const a = shedding.wait((e) => order.push(`a ${Code[e.code]}`));
    const b = shedding.wait((e) => order.push(`b ${Code[e.code]}`));
    a.progress(); // a chunk of a's body arrived: b is now the one silent longest
    const c = shedding.wait((e) => order.push(`c ${Code[e.code]}`));
    assert.deepEqual(order, ["b ResourceExhausted"]);
    assert.equal(shedding.waiting, 2);
    for (const w of [a, b, c]) w.done();
    assert.equal(shedding.waiting, 0);
  });

  it("admits calls in a second step, whose refusal reaches the caller as a ConnectError", () => {
    const trace: string[] = [];
    const pipeline = createPipeline([
      { begin: () => undefined, admit: () => trace.push("first") },
      { begin: () => undefined },
      {
        begin: () => undefined,
        admit: () => {
          throw new Error("a bug");
        },
      },
    ]);
    const call = { method: InferenceService.method.embed } as unknown as Parameters<typeof pipeline.admit>[0];
    assert.throws(
      () => pipeline.admit(call),
      (e) => e instanceof ConnectError && e.code === Code.Internal,
    );
    assert.deepEqual(trace, ["first"]);
  });
});
