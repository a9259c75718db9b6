/**
 * Calls ollama-grpc-gateway the way a Node/TypeScript service does with Connect: stubs generated
 * from proto/ by protoc-gen-es (build.sh), `@connectrpc/connect` clients over the gRPC transport.
 *
 * It streams a completion, runs a chat turn with a tool call and its result, embeds two texts,
 * reads ErrorInfo and RetryInfo from failed calls, shows a deadline, sends credentials when
 * OGW_API_KEY is set, and checks health. Every step checks what it got and the process exits 1
 * at the first surprise, so CI (scripts/run-examples.sh) can run it against the gateway.
 *
 * Run: `node --import tsx connect-client.ts` (examples/README.md lists the environment).
 */
import { create } from "@bufbuild/protobuf";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import type { Client, Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { ErrorInfoSchema, RetryInfoSchema } from "./gen/google/rpc/error_details_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "./gen/grpc/health/v1/health_pb.js";
import { InferenceService } from "./gen/ollama/gateway/v1/inference_pb.js";
import type { ChatRequestSchema, GenerateRequestSchema } from "./gen/ollama/gateway/v1/inference_pb.js";
import { ModelService } from "./gen/ollama/gateway/v1/model_pb.js";
import { DoneReason, MessageSchema, Role } from "./gen/ollama/gateway/v1/types_pb.js";
import type { Message, ToolSchema } from "./gen/ollama/gateway/v1/types_pb.js";

const addr = process.env["OGW_ADDR"] || "localhost:50051";
const model = process.env["OGW_MODEL"] || "llama3.2";
const apiKey = process.env["OGW_API_KEY"];
/** Bounds every call expected to succeed; without a deadline the gateway applies MAX_DEADLINE_MS. */
const CALL_TIMEOUT_MS = 30_000;

/** Adds `authorization: Bearer <key>` to every call. */
const bearer =
  (key: string): Interceptor =>
  (next) =>
  (req) => {
    req.header.set("authorization", `Bearer ${key}`);
    return next(req);
  };

// gRPC over HTTP/2 cleartext, as the gateway serves it (a mesh adds mTLS; use https:// with TLS).
// createConnectTransport speaks the Connect protocol to the same port (browsers: connect-web).
const transport = createGrpcTransport({
  baseUrl: `http://${addr}`,
  interceptors: apiKey ? [bearer(apiKey)] : [],
});
const inference = createClient(InferenceService, transport);

function ok(step: string, detail: string): void {
  console.log(`ok ${`${step}:`.padEnd(17)} ${detail}`);
}

function check(cond: unknown, message: string): asserts cond {
  if (!cond) {
    console.error(`typescript (connect) example: FAILED: ${message}`);
    process.exit(1);
  }
}

async function health(): Promise<void> {
  const res = await createClient(Health, transport).check({ service: "" }, { timeoutMs: CALL_TIMEOUT_MS });
  check(res.status === HealthCheckResponse_ServingStatus.SERVING, `health: ${res.status}`);
  ok("health", HealthCheckResponse_ServingStatus[res.status]);
}

async function listModels(): Promise<void> {
  const res = await createClient(ModelService, transport).listModels({}, { timeoutMs: CALL_TIMEOUT_MS });
  const names = res.models.map((m) => m.name);
  check(names.includes(model) || names.includes(`${model}:latest`), `list models: ${model} not in ${names}`);
  ok("list models", names.join(", "));
}

async function generate(): Promise<void> {
  let text = "";
  let last;
  // A server stream is an async iterable; its errors are thrown while iterating.
  for await (const msg of inference.generate(
    { model, prompt: "Why is the sky blue?", options: { numPredict: 8 } },
    { timeoutMs: CALL_TIMEOUT_MS },
  )) {
    text += msg.text;
    last = msg;
  }
  // A stream always ends with one done message, or with an error.
  check(last?.done, "generate: no final message");
  check(text !== "", "generate: no text");
  const usage = last.usage;
  ok(
    "generate",
    `${JSON.stringify(text)} (${DoneReason[last.doneReason]}, ${usage?.completionTokens} tokens, node ${usage?.node})`,
  );
}

/** One streamed chat turn, its deltas folded into one message. */
async function chat(
  client: Client<typeof InferenceService>,
  req: MessageInitShape<typeof ChatRequestSchema>,
): Promise<Message> {
  const reply = create(MessageSchema, { role: Role.ASSISTANT });
  let done = false;
  for await (const msg of client.chat(req, { timeoutMs: CALL_TIMEOUT_MS })) {
    reply.content += msg.message?.content ?? "";
    reply.thinking += msg.message?.thinking ?? "";
    reply.toolCalls.push(...(msg.message?.toolCalls ?? []));
    done = msg.done;
  }
  check(done, "chat: no final message");
  return reply;
}

async function chatWithTool(): Promise<void> {
  const tools: MessageInitShape<typeof ToolSchema>[] = [
    {
      name: "get_weather",
      description: "Current weather in a city",
      // google.protobuf.Struct is a plain JSON object in protobuf-es.
      parameters: {
        type: "object",
        properties: { city: { type: "string", description: "City name" } },
        required: ["city"],
      },
    },
  ];
  const messages: Message[] = [
    create(MessageSchema, { role: Role.USER, content: "Use get_weather to tell me the weather in Paris" }),
  ];

  // Turn 1: the model answers with a tool call instead of text.
  const reply = await chat(inference, { model, messages, tools });
  check(reply.toolCalls.length === 1, `chat: expected one tool call, got ${reply.toolCalls.length}`);
  const call = reply.toolCalls[0]!;
  const city = call.arguments?.["city"];
  check(call.name === "get_weather" && typeof city === "string" && city !== "", `chat: unexpected tool call`);
  ok("chat tool call", `${call.name}(city=${JSON.stringify(city)}) id=${call.id}`);

  // Turn 2: our "tool" runs, and its result goes back with the call's id.
  messages.push(
    reply,
    create(MessageSchema, {
      role: Role.TOOL,
      content: JSON.stringify({ city, temperature_c: 18, sky: "clear" }),
      toolName: call.name,
      toolCallId: call.id,
    }),
  );
  const answer = await chat(inference, { model, messages, tools });
  check(answer.content !== "" && answer.toolCalls.length === 0, "chat: no text answer after the tool result");
  ok("chat tool result", JSON.stringify(answer.content));
}

async function embed(): Promise<void> {
  const embedModel = process.env["OGW_EMBED_MODEL"] || "all-minilm";
  const res = await inference.embed(
    { model: embedModel, inputs: ["hello world", "hello there"] },
    { timeoutMs: CALL_TIMEOUT_MS },
  );
  check(res.embeddings.length === 2, `embed: ${res.embeddings.length} vectors for 2 inputs`);
  const dims = res.embeddings.map((e) => e.values.length);
  check(dims[0]! > 0 && dims[0] === dims[1], `embed: vector sizes ${dims}`);
  ok("embed", `2 vectors of ${dims[0]} dimensions (${res.cachedInputs} from the cache)`);
}

/** Runs a Generate call to its end and returns its error as a ConnectError (or undefined). */
async function generateError(
  req: MessageInitShape<typeof GenerateRequestSchema>,
  timeoutMs: number,
): Promise<ConnectError | undefined> {
  try {
    for await (const _ of inference.generate(req, { timeoutMs })) {
      // drain
    }
    return undefined;
  } catch (e) {
    return ConnectError.from(e);
  }
}

async function unknownModel(): Promise<void> {
  // ErrorInfo.reason is stable: switch on it, not on the message.
  const err = await generateError({ model: "no-such-model", prompt: "hi" }, CALL_TIMEOUT_MS);
  check(err?.code === Code.NotFound, `unknown model: got ${err}`);
  const [info] = err.findDetails(ErrorInfoSchema);
  check(info?.reason === "MODEL_NOT_FOUND" && info.domain === "ollama.gateway.v1", `unknown model: ${err}`);
  ok("error", `${Code[err.code]} ${info.reason} (domain ${info.domain}, model ${info.metadata["model"]})`);
}

async function busyModel(busy: string): Promise<void> {
  // Worth retrying: UNAVAILABLE or RESOURCE_EXHAUSTED, with RetryInfo.
  const err = await generateError({ model: busy, prompt: "hi" }, CALL_TIMEOUT_MS);
  check(err?.code === Code.Unavailable || err?.code === Code.ResourceExhausted, `busy model: got ${err}`);
  const [info] = err.findDetails(ErrorInfoSchema);
  const [retry] = err.findDetails(RetryInfoSchema);
  const delayMs = Number(retry?.retryDelay?.seconds ?? 0n) * 1000 + (retry?.retryDelay?.nanos ?? 0) / 1e6;
  check(info !== undefined && delayMs > 0, `busy model: ErrorInfo ${info?.reason}, RetryInfo ${delayMs} ms`);
  // A real client would now wait delayMs (plus jitter) and try again.
  ok("retryable error", `${Code[err.code]} ${info.reason}, retry after ${delayMs} ms`);
}

async function deadline(): Promise<void> {
  // Less time than the call needs: the gateway stops the upstream work and the call ends with
  // DEADLINE_EXCEEDED.
  const slow = process.env["OGW_SLOW_MODEL"] || model;
  const start = performance.now();
  const err = await generateError(
    { model: slow, prompt: "Write a very long story.", options: { numPredict: 100_000 } },
    500,
  );
  check(err?.code === Code.DeadlineExceeded, `deadline: got ${err}`);
  ok("deadline", `${Code[err.code]} after ${Math.round(performance.now() - start)} ms`);
}

await health();
await listModels();
await generate();
await chatWithTool();
await embed();
await unknownModel();
if (process.env["OGW_BUSY_MODEL"]) await busyModel(process.env["OGW_BUSY_MODEL"]);
await deadline();
console.log("typescript (connect) example: all checks passed");
