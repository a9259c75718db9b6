/**
 * Calls ollama-grpc-gateway with `@grpc/grpc-js`, the gRPC library most Node services already
 * use, and the same protobuf-es stubs as connect-client.ts: grpc-js carries the bytes, protobuf-es
 * (de)serialises them, and the method descriptors give each call its path and types.
 *
 * It checks health, streams a completion, embeds two texts, reads ErrorInfo and RetryInfo from
 * failed calls, shows a deadline, and sends credentials when OGW_API_KEY is set (the chat with a
 * tool is in connect-client.ts). Exits 1 at the first surprise, so CI can run it.
 *
 * Run: `node --import tsx grpc-js-client.ts` (examples/README.md lists the environment).
 */
import * as grpc from "@grpc/grpc-js";
import { create, createRegistry, fromBinary, toBinary } from "@bufbuild/protobuf";
import type {
  DescMessage,
  DescMethodServerStreaming,
  DescMethodUnary,
  MessageInitShape,
  MessageShape,
} from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { ErrorInfoSchema, RetryInfoSchema } from "./gen/google/rpc/error_details_pb.js";
import type { ErrorInfo, RetryInfo } from "./gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "./gen/google/rpc/status_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "./gen/grpc/health/v1/health_pb.js";
import { InferenceService } from "./gen/ollama/gateway/v1/inference_pb.js";
import type { GenerateRequestSchema } from "./gen/ollama/gateway/v1/inference_pb.js";

const addr = process.env["OGW_ADDR"] || "localhost:50051";
const model = process.env["OGW_MODEL"] || "llama3.2";
const apiKey = process.env["OGW_API_KEY"];
/** Bounds every call expected to succeed; without a deadline the gateway applies MAX_DEADLINE_MS. */
const CALL_TIMEOUT_MS = 30_000;

/** Adds `authorization: Bearer <key>` to every call (call credentials need a TLS channel). */
const bearer =
  (key: string): grpc.Interceptor =>
  (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set("authorization", `Bearer ${key}`);
        next(metadata, listener);
      },
    });

// Plaintext HTTP/2, as the gateway serves it; with TLS use grpc.credentials.createSsl().
const client = new grpc.Client(addr, grpc.credentials.createInsecure(), {
  interceptors: apiKey ? [bearer(apiKey)] : [],
});

/** grpc-js serialisers for one method, from its protobuf-es descriptor. */
function codec<I extends DescMessage, O extends DescMessage>(method: { input: I; output: O }) {
  return {
    serialize: (v: MessageInitShape<I>): Buffer => Buffer.from(toBinary(method.input, create(method.input, v))),
    deserialize: (b: Buffer): MessageShape<O> => fromBinary(method.output, b),
  };
}

/** A unary call. */
function unary<I extends DescMessage, O extends DescMessage>(
  method: DescMethodUnary<I, O>,
  request: MessageInitShape<I>,
  options: grpc.CallOptions,
): Promise<MessageShape<O>> {
  const { serialize, deserialize } = codec(method);
  const path = `/${method.parent.typeName}/${method.name}`;
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest(path, serialize, deserialize, request, new grpc.Metadata(), options, (err, res) =>
      err || res === undefined ? reject(err) : resolve(res),
    );
  });
}

/** A server-streaming call, as an async iterable; its error is thrown while iterating. */
function serverStream<I extends DescMessage, O extends DescMessage>(
  method: DescMethodServerStreaming<I, O>,
  request: MessageInitShape<I>,
  options: grpc.CallOptions,
): AsyncIterable<MessageShape<O>> {
  const { serialize, deserialize } = codec(method);
  const path = `/${method.parent.typeName}/${method.name}`;
  return client.makeServerStreamRequest(path, serialize, deserialize, request, new grpc.Metadata(), options);
}

/** ErrorInfo and RetryInfo of a failed call, from its grpc-status-details-bin trailer. */
function details(err: grpc.ServiceError): { info?: ErrorInfo; retry?: RetryInfo } {
  const [raw] = err.metadata.get("grpc-status-details-bin");
  if (!(raw instanceof Buffer)) return {};
  const registry = createRegistry(ErrorInfoSchema, RetryInfoSchema);
  const out: { info?: ErrorInfo; retry?: RetryInfo } = {};
  for (const any of fromBinary(StatusSchema, raw).details) {
    const msg = anyUnpack(any, registry);
    if (msg?.$typeName === "google.rpc.ErrorInfo") out.info = msg as ErrorInfo;
    if (msg?.$typeName === "google.rpc.RetryInfo") out.retry = msg as RetryInfo;
  }
  return out;
}

function isServiceError(e: unknown): e is grpc.ServiceError {
  return e instanceof Error && "code" in e && "metadata" in e;
}

const deadlineIn = (ms: number): grpc.CallOptions => ({ deadline: Date.now() + ms });

function ok(step: string, detail: string): void {
  console.log(`ok ${`${step}:`.padEnd(17)} ${detail}`);
}

function check(cond: unknown, message: string): asserts cond {
  if (!cond) {
    console.error(`typescript (grpc-js) example: FAILED: ${message}`);
    process.exit(1);
  }
}

async function health(): Promise<void> {
  const res = await unary(Health.method.check, { service: "" }, deadlineIn(CALL_TIMEOUT_MS));
  check(res.status === HealthCheckResponse_ServingStatus.SERVING, `health: ${res.status}`);
  ok("health", HealthCheckResponse_ServingStatus[res.status]);
}

async function generate(): Promise<void> {
  let text = "";
  let last;
  const request = { model, prompt: "Why is the sky blue?", options: { numPredict: 8 } };
  for await (const msg of serverStream(InferenceService.method.generate, request, deadlineIn(CALL_TIMEOUT_MS))) {
    text += msg.text;
    last = msg;
  }
  // A stream always ends with one done message, or with an error.
  check(last?.done, "generate: no final message");
  check(text !== "", "generate: no text");
  ok("generate", `${JSON.stringify(text)} (${last.usage?.completionTokens} tokens, node ${last.usage?.node})`);
}

async function embed(): Promise<void> {
  const embedModel = process.env["OGW_EMBED_MODEL"] || "all-minilm";
  const request = { model: embedModel, inputs: ["hello world", "hello there"] };
  const res = await unary(InferenceService.method.embed, request, deadlineIn(CALL_TIMEOUT_MS));
  const dims = res.embeddings.map((e) => e.values.length);
  check(dims.length === 2 && dims[0]! > 0 && dims[0] === dims[1], `embed: vector sizes ${dims}`);
  ok("embed", `2 vectors of ${dims[0]} dimensions`);
}

/** Runs a Generate call to its end; returns its grpc-js error (or undefined). */
async function generateError(
  request: MessageInitShape<typeof GenerateRequestSchema>,
  options: grpc.CallOptions,
): Promise<grpc.ServiceError | undefined> {
  try {
    for await (const _ of serverStream(InferenceService.method.generate, request, options)) {
      // drain
    }
    return undefined;
  } catch (e) {
    if (isServiceError(e)) return e;
    throw e;
  }
}

async function unknownModel(): Promise<void> {
  // ErrorInfo.reason is stable: switch on it, not on the message.
  const err = await generateError({ model: "no-such-model", prompt: "hi" }, deadlineIn(CALL_TIMEOUT_MS));
  check(err?.code === grpc.status.NOT_FOUND, `unknown model: got ${err}`);
  const { info } = details(err);
  check(info?.reason === "MODEL_NOT_FOUND" && info.domain === "ollama.gateway.v1", `unknown model: ${err}`);
  ok("error", `${grpc.status[err.code]} ${info.reason} (domain ${info.domain})`);
}

async function busyModel(busy: string): Promise<void> {
  // Worth retrying: UNAVAILABLE or RESOURCE_EXHAUSTED, with RetryInfo.
  const err = await generateError({ model: busy, prompt: "hi" }, deadlineIn(CALL_TIMEOUT_MS));
  const retryable = err?.code === grpc.status.UNAVAILABLE || err?.code === grpc.status.RESOURCE_EXHAUSTED;
  check(err && retryable, `busy model: got ${err}`);
  const { info, retry } = details(err);
  const delayMs = Number(retry?.retryDelay?.seconds ?? 0n) * 1000 + (retry?.retryDelay?.nanos ?? 0) / 1e6;
  check(info !== undefined && delayMs > 0, `busy model: ErrorInfo ${info?.reason}, RetryInfo ${delayMs} ms`);
  ok("retryable error", `${grpc.status[err.code]} ${info.reason}, retry after ${delayMs} ms`);
}

async function deadline(): Promise<void> {
  const slow = process.env["OGW_SLOW_MODEL"] || model;
  const start = performance.now();
  const err = await generateError(
    { model: slow, prompt: "Write a very long story.", options: { numPredict: 100_000 } },
    deadlineIn(500),
  );
  check(err?.code === grpc.status.DEADLINE_EXCEEDED, `deadline: got ${err}`);
  ok("deadline", `${grpc.status[err.code]} after ${Math.round(performance.now() - start)} ms`);
}

await health();
await generate();
await embed();
await unknownModel();
if (process.env["OGW_BUSY_MODEL"]) await busyModel(process.env["OGW_BUSY_MODEL"]);
await deadline();
client.close();
console.log("typescript (grpc-js) example: all checks passed");
