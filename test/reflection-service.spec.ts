import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { create, fromBinary } from "@bufbuild/protobuf";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, createHandlerContext } from "@connectrpc/connect";
import type { Client, ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter, createGrpcTransport } from "@connectrpc/connect-node";
import { Health } from "../src/gen/grpc/health/v1/health_pb.js";
import { ServerReflection, ServerReflectionRequestSchema } from "../src/gen/grpc/reflection/v1/reflection_pb.js";
import type { ServerReflectionRequest, ServerReflectionResponse } from "../src/gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ServerReflectionV1Alpha } from "../src/gen/grpc/reflection/v1alpha/reflection_pb.js";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { createHealthService } from "../src/transport/health-service.js";
import {
  createReflectionHandler,
  createReflectionSchema,
  registerReflection,
} from "../src/transport/reflection-service.js";

const run = promisify(execFile);
const BUF = join(process.cwd(), "node_modules", ".bin", "buf");

type RequestInit = MessageInitShape<typeof ServerReflectionRequestSchema>;

/** Sends `requests` on one reflection stream and collects every answer. */
async function reflect(
  client: Client<typeof ServerReflection>,
  requests: RequestInit[],
): Promise<ServerReflectionResponse["messageResponse"][]> {
  async function* send() {
    yield* requests;
  }
  const out: ServerReflectionResponse["messageResponse"][] = [];
  for await (const res of client.serverReflectionInfo(send())) out.push(res.messageResponse);
  return out;
}

/** File names in a file_descriptor_response, in the order sent. */
function fileNames(answer: ServerReflectionResponse["messageResponse"] | undefined): string[] {
  assert.equal(answer?.case, "fileDescriptorResponse", `expected files, got ${JSON.stringify(answer)}`);
  return answer.value.fileDescriptorProto.map((b) => fromBinary(FileDescriptorProtoSchema, b).name);
}

/** Runs `buf curl` with the given arguments and returns its stdout. */
async function bufCurl(...args: string[]): Promise<string> {
  const { stdout } = await run(BUF, ["curl", ...args], { timeout: 60_000 });
  return stdout;
}

describe("reflection service", () => {
  const health = createHealthService();
  let server: http2.Http2Server;
  const sessions = new Set<http2.ServerHttp2Session>();
  let baseUrl = "";
  let client: Client<typeof ServerReflection>;
  let clientV1Alpha: Client<typeof ServerReflectionV1Alpha>;

  before(async () => {
    const routes = (router: ConnectRouter): void => {
      router.service(Health, health.implementation);
      router.service(InferenceService, {
        async *generate(req) {
          yield { text: `echo ${req.prompt} from ${req.model}`, done: true };
        },
      });
      registerReflection(router, [InferenceService, Health]);
    };
    server = http2.createServer(connectNodeAdapter({ routes }));
    server.on("session", (s: http2.ServerHttp2Session) => {
      sessions.add(s);
      s.once("close", () => sessions.delete(s));
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const transport = createGrpcTransport({ baseUrl });
    client = createClient(ServerReflection, transport);
    clientV1Alpha = createClient(ServerReflectionV1Alpha, transport);
  });
  after(async () => {
    health.close();
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    for (const s of sessions) s.destroy();
    await closed;
  });

  describe("through buf curl", () => {
    it("lists our service, health and reflection", async () => {
      const services = (await bufCurl("--list-services", baseUrl)).trim().split("\n");
      for (const name of [
        "ollama.gateway.v1.InferenceService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
      ]) {
        assert.ok(services.includes(name), `${name} missing from ${JSON.stringify(services)}`);
      }
    });

    it("lists the methods of every service", async () => {
      const methods = (await bufCurl("--list-methods", baseUrl)).trim().split("\n");
      for (const name of [
        "ollama.gateway.v1.InferenceService/Generate",
        "ollama.gateway.v1.InferenceService/Chat",
        "ollama.gateway.v1.InferenceService/Embed",
        "grpc.health.v1.Health/Check",
        "grpc.health.v1.Health/Watch",
        "grpc.health.v1.Health/List",
      ]) {
        assert.ok(methods.includes(name), `${name} missing from ${JSON.stringify(methods)}`);
      }
    });

    it("calls Generate over gRPC using only the reflected schema", async () => {
      const out = await bufCurl(
        "--protocol",
        "grpc",
        "--http2-prior-knowledge",
        "-d",
        '{"model":"m","prompt":"hi"}',
        `${baseUrl}/ollama.gateway.v1.InferenceService/Generate`,
      );
      assert.deepEqual(JSON.parse(out), { text: "echo hi from m", done: true });
    });

    it("calls Generate when the client only speaks reflection v1alpha", async () => {
      const out = await bufCurl(
        "--reflect-protocol",
        "grpc-v1alpha",
        "--protocol",
        "grpc",
        "--http2-prior-knowledge",
        "-d",
        '{"model":"m","prompt":"alpha"}',
        `${baseUrl}/ollama.gateway.v1.InferenceService/Generate`,
      );
      assert.deepEqual(JSON.parse(out), { text: "echo alpha from m", done: true });
    });

    it("calls Generate over the Connect protocol too", async () => {
      const out = await bufCurl(
        "--protocol",
        "connect",
        "-d",
        '{"model":"m","prompt":"connect"}',
        `${baseUrl}/ollama.gateway.v1.InferenceService/Generate`,
      );
      assert.deepEqual(JSON.parse(out), { text: "echo connect from m", done: true });
    });

    it("checks health", async () => {
      const out = await bufCurl(
        "--protocol",
        "grpc",
        "--http2-prior-knowledge",
        "--emit-defaults",
        "-d",
        '{"service":""}',
        `${baseUrl}/grpc.health.v1.Health/Check`,
      );
      assert.deepEqual(JSON.parse(out), { status: "SERVING" });
    });
  });

  describe("on the bidi stream", () => {
    it("lists services", async () => {
      const [answer] = await reflect(client, [{ messageRequest: { case: "listServices", value: "*" } }]);
      assert.equal(answer?.case, "listServicesResponse");
      assert.deepEqual(
        answer.value.service.map((s) => s.name),
        [
          "ollama.gateway.v1.InferenceService",
          "grpc.health.v1.Health",
          "grpc.reflection.v1.ServerReflection",
          "grpc.reflection.v1alpha.ServerReflection",
        ],
      );
    });

    it("answers an unknown symbol with error code 5 NOT_FOUND and keeps the stream open", async () => {
      const answers = await reflect(client, [
        { messageRequest: { case: "fileContainingSymbol", value: "no.such.Thing" } },
        { messageRequest: { case: "fileByFilename", value: "no/such/file.proto" } },
        { messageRequest: { case: "listServices", value: "" } },
      ]);
      assert.equal(answers.length, 3);
      for (const answer of answers.slice(0, 2)) {
        assert.equal(answer?.case, "errorResponse");
        assert.equal(answer.value.errorCode, Code.NotFound);
        assert.equal(answer.value.errorCode, 5);
      }
      assert.equal(answers[2]?.case, "listServicesResponse");
    });

    it("sends a file with its imports first time, and never resends imports on the same stream", async () => {
      const [first, second, third] = await reflect(client, [
        { messageRequest: { case: "fileByFilename", value: "ollama/gateway/v1/inference.proto" } },
        { messageRequest: { case: "fileByFilename", value: "ollama/gateway/v1/types.proto" } },
        { messageRequest: { case: "fileContainingSymbol", value: "ollama.gateway.v1.GenerateRequest" } },
      ]);
      const names = fileNames(first);
      assert.equal(names[0], "ollama/gateway/v1/inference.proto", "the requested file comes first");
      assert.deepEqual([...names].sort(), [
        "google/protobuf/duration.proto",
        "google/protobuf/struct.proto",
        "ollama/gateway/v1/inference.proto",
        "ollama/gateway/v1/types.proto",
      ]);
      assert.deepEqual(fileNames(second), ["ollama/gateway/v1/types.proto"]);
      assert.deepEqual(fileNames(third), ["ollama/gateway/v1/inference.proto"]);
    });

    it("starts every stream with an empty set of files already sent", async () => {
      const [answer] = await reflect(client, [
        { messageRequest: { case: "fileByFilename", value: "ollama/gateway/v1/types.proto" } },
      ]);
      assert.deepEqual(fileNames(answer).sort(), [
        "google/protobuf/duration.proto",
        "google/protobuf/struct.proto",
        "ollama/gateway/v1/types.proto",
      ]);
    });

    it("finds the file of a service, a method, a message, a nested enum, a field and an enum value", async () => {
      const answers = await reflect(client, [
        { messageRequest: { case: "fileContainingSymbol", value: "ollama.gateway.v1.InferenceService" } },
        { messageRequest: { case: "fileContainingSymbol", value: "ollama.gateway.v1.InferenceService.Generate" } },
        { messageRequest: { case: "fileContainingSymbol", value: "grpc.health.v1.HealthCheckResponse" } },
        {
          messageRequest: {
            case: "fileContainingSymbol",
            value: "grpc.health.v1.HealthCheckResponse.ServingStatus",
          },
        },
        { messageRequest: { case: "fileContainingSymbol", value: "grpc.health.v1.HealthCheckRequest.service" } },
        { messageRequest: { case: "fileContainingSymbol", value: "grpc.health.v1.HealthCheckResponse.SERVING" } },
        { messageRequest: { case: "fileContainingSymbol", value: "google.protobuf.Duration" } },
      ]);
      assert.deepEqual(
        answers.map((a) => fileNames(a)[0]),
        [
          "ollama/gateway/v1/inference.proto",
          "ollama/gateway/v1/inference.proto",
          "grpc/health/v1/health.proto",
          "grpc/health/v1/health.proto",
          "grpc/health/v1/health.proto",
          "grpc/health/v1/health.proto",
          "google/protobuf/duration.proto",
        ],
      );
    });

    it("answers extension queries for known types and NOT_FOUND otherwise", async () => {
      const [numbers, unknownType, unknownExt] = await reflect(client, [
        { messageRequest: { case: "allExtensionNumbersOfType", value: "ollama.gateway.v1.GenerateRequest" } },
        { messageRequest: { case: "allExtensionNumbersOfType", value: "no.such.Message" } },
        {
          messageRequest: {
            case: "fileContainingExtension",
            value: { containingType: "ollama.gateway.v1.GenerateRequest", extensionNumber: 1000 },
          },
        },
      ]);
      assert.equal(numbers?.case, "allExtensionNumbersResponse");
      assert.equal(numbers.value.baseTypeName, "ollama.gateway.v1.GenerateRequest");
      assert.deepEqual(numbers.value.extensionNumber, []);
      assert.equal(unknownType?.case, "errorResponse");
      assert.equal(unknownType.value.errorCode, Code.NotFound);
      assert.equal(unknownExt?.case, "errorResponse");
      assert.equal(unknownExt.value.errorCode, Code.NotFound);
    });

    it("serves the same answers over v1alpha", async () => {
      async function* send() {
        yield { messageRequest: { case: "listServices", value: "" } } as const;
        yield { messageRequest: { case: "fileContainingSymbol", value: "grpc.health.v1.Health" } } as const;
      }
      const answers = [];
      for await (const res of clientV1Alpha.serverReflectionInfo(send())) answers.push(res.messageResponse);
      const [list, file] = answers;
      assert.equal(list?.case, "listServicesResponse");
      assert.ok(list.value.service.some((s) => s.name === "grpc.reflection.v1alpha.ServerReflection"));
      assert.equal(file?.case, "fileDescriptorResponse");
      assert.deepEqual(
        file.value.fileDescriptorProto.map((b) => fromBinary(FileDescriptorProtoSchema, b).name),
        ["grpc/health/v1/health.proto"],
      );
    });
  });

  describe("its limits", () => {
    it("ends a stream that sends more requests than allowed with RESOURCE_EXHAUSTED", async () => {
      const handler = createReflectionHandler(createReflectionSchema([Health]), { maxRequestsPerStream: 3 });
      const ctx = createHandlerContext({
        service: ServerReflection,
        method: ServerReflection.method.serverReflectionInfo,
        protocolName: "grpc",
        requestMethod: "POST",
        url: "http://localhost/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
      });
      async function* requests(): AsyncGenerator<ServerReflectionRequest> {
        for (let i = 0; i < 10; i++) {
          yield create(ServerReflectionRequestSchema, { messageRequest: { case: "listServices", value: "" } });
        }
      }
      let answered = 0;
      let error: unknown;
      try {
        for await (const res of handler(requests(), ctx)) {
          assert.equal(res.messageResponse.case, "listServicesResponse");
          answered++;
        }
      } catch (e) {
        error = e;
      }
      assert.equal(answered, 3);
      assert.ok(error instanceof ConnectError, "the stream ends with an error");
      assert.equal(error.code, Code.ResourceExhausted);
    });

    it("always lists the reflection services even when not given", () => {
      const schema = createReflectionSchema([Health, Health]);
      assert.deepEqual(schema.serviceNames, [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
      ]);
    });
  });
});
