// gRPC server reflection (grpc.reflection.v1 and v1alpha) built from the
// protobuf-es v2 descriptors that the generated code already embeds, so that
// buf curl, grpcurl and Postman can call the gateway without .proto files.
//
// The schema is fixed at start-up: every file reachable from the served
// services is collected once, serialized once, and indexed by every symbol a
// client may ask for. A reflection stream then only does map look-ups; the
// only per-stream state is the set of file names already sent.

import { createRegistry, toBinary } from "@bufbuild/protobuf";
import type { DescFile, DescMessage, DescService, Registry } from "@bufbuild/protobuf";
import { nestedTypes } from "@bufbuild/protobuf/reflect";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import type { ConnectRouter, HandlerContext } from "@connectrpc/connect";
import { ServerReflection as ServerReflectionV1 } from "../gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ServerReflectionV1Alpha } from "../gen/grpc/reflection/v1alpha/reflection_pb.js";

/** Default cap on requests per reflection stream; real clients send a few dozen. */
export const DEFAULT_MAX_REFLECTION_REQUESTS_PER_STREAM = 10_000;

/** Options for the reflection service. */
export interface ReflectionOptions {
  /**
   * Requests allowed on one ServerReflectionInfo stream before it is ended
   * with RESOURCE_EXHAUSTED, so one connection cannot keep the server busy
   * forever. (Request size is already bounded by connect's readMaxBytes.)
   * Default 10,000.
   */
  readonly maxRequestsPerStream?: number;
}

/**
 * The request fields both reflection versions share. v1 and v1alpha messages
 * are wire-identical, so one implementation serves both.
 */
interface ReflectionRequestLike {
  readonly host: string;
  readonly messageRequest:
    | {
        readonly case: "fileByFilename" | "fileContainingSymbol" | "allExtensionNumbersOfType" | "listServices";
        readonly value: string;
      }
    | {
        readonly case: "fileContainingExtension";
        readonly value: { readonly containingType: string; readonly extensionNumber: number };
      }
    | { readonly case: undefined; readonly value?: undefined };
}

/** The `message_response` oneof, as an init shape valid for both versions. */
type ReflectionAnswer =
  | { case: "fileDescriptorResponse"; value: { fileDescriptorProto: Uint8Array[] } }
  | { case: "allExtensionNumbersResponse"; value: { baseTypeName: string; extensionNumber: number[] } }
  | { case: "listServicesResponse"; value: { service: { name: string }[] } }
  | { case: "errorResponse"; value: { errorCode: number; errorMessage: string } };

/**
 * The schema served by reflection, precomputed from the service descriptors.
 * Exposed (with {@link createReflectionSchema}) so it can be inspected and
 * unit-tested without a server.
 */
export interface ReflectionSchema {
  /** Full names of the listed services, in registration order. */
  readonly serviceNames: readonly string[];
  /** Every reachable file by its proto file name, e.g. "google/protobuf/duration.proto". */
  readonly files: ReadonlyMap<string, DescFile>;
  /** Type registry over all reachable files; used for extension look-ups. */
  readonly registry: Registry;
  /** The file that declares a fully-qualified symbol (types, services, methods, fields, enum values). */
  fileContainingSymbol(symbol: string): DescFile | undefined;
}

/**
 * Collects every file reachable from `services` (their files and, recursively,
 * their imports) and indexes their symbols. The reflection services
 * themselves are always included: clients such as buf curl resolve the
 * reflection service through reflection and fail without it.
 */
export function createReflectionSchema(services: readonly DescService[]): ReflectionSchema {
  const all = dedupe([...services, ServerReflectionV1, ServerReflectionV1Alpha]);
  const files = new Map<string, DescFile>();
  const visit = (file: DescFile): void => {
    if (files.has(file.proto.name)) return;
    files.set(file.proto.name, file);
    for (const dep of file.dependencies) visit(dep);
  };
  for (const service of all) visit(service.file);

  const registry = createRegistry(...files.values());
  const symbols = new Map<string, DescFile>();
  for (const file of files.values()) {
    for (const type of nestedTypes(file)) {
      symbols.set(type.typeName, file);
      switch (type.kind) {
        case "service":
          for (const method of type.methods) symbols.set(`${type.typeName}.${method.name}`, file);
          break;
        case "message":
          for (const member of type.members) symbols.set(`${type.typeName}.${member.name}`, file);
          break;
        case "enum": {
          // Enum values live in the enum's enclosing scope (C++ scoping rules).
          const scope = type.parent?.typeName ?? file.proto.package;
          for (const value of type.values) symbols.set(scope === "" ? value.name : `${scope}.${value.name}`, file);
          break;
        }
        case "extension":
          break;
      }
    }
  }
  return {
    serviceNames: all.map((s) => s.typeName),
    files,
    registry,
    fileContainingSymbol: (symbol) => symbols.get(stripDot(symbol)),
  };
}

/**
 * Registers grpc.reflection.v1 and grpc.reflection.v1alpha ServerReflection
 * on `router`, describing `services`. Pass every service the router serves
 * (including grpc.health.v1.Health); the reflection services are added
 * automatically. Both versions are mounted because older grpcurl and some
 * tools only speak v1alpha.
 */
export function registerReflection(
  router: ConnectRouter,
  services: readonly DescService[],
  options: ReflectionOptions = {},
): void {
  const info = createReflectionHandler(createReflectionSchema(services), options);
  router.service(ServerReflectionV1, { serverReflectionInfo: info });
  router.service(ServerReflectionV1Alpha, { serverReflectionInfo: info });
}

/**
 * Creates the ServerReflectionInfo bidi handler over a schema. Generic in the
 * request type so the same function type-checks as the v1 and the v1alpha
 * implementation.
 */
export function createReflectionHandler(
  schema: ReflectionSchema,
  options: ReflectionOptions = {},
): <R extends ReflectionRequestLike>(
  requests: AsyncIterable<R>,
  ctx: HandlerContext,
) => AsyncGenerator<{ validHost: string; originalRequest: R; messageResponse: ReflectionAnswer }> {
  const maxRequests = options.maxRequestsPerStream ?? DEFAULT_MAX_REFLECTION_REQUESTS_PER_STREAM;
  if (!Number.isInteger(maxRequests) || maxRequests < 1) {
    throw new RangeError(`maxRequestsPerStream must be a positive integer, got ${maxRequests}`);
  }
  const encoded = new Map<string, Uint8Array>();
  for (const [name, file] of schema.files) encoded.set(name, toBinary(FileDescriptorProtoSchema, file.proto));
  const listServices: ReflectionAnswer = {
    case: "listServicesResponse",
    value: { service: schema.serviceNames.map((name) => ({ name })) },
  };

  /** The requested file first, then its transitive imports not yet sent on this stream. */
  function fileAnswer(file: DescFile, sent: Set<string>): ReflectionAnswer {
    const out: Uint8Array[] = [];
    const add = (f: DescFile, force: boolean): void => {
      const name = f.proto.name;
      if (sent.has(name) && !force) return;
      sent.add(name);
      const bytes = encoded.get(name);
      if (bytes !== undefined) out.push(bytes);
      for (const dep of f.dependencies) add(dep, false);
    };
    add(file, true);
    return { case: "fileDescriptorResponse", value: { fileDescriptorProto: out } };
  }

  function answer(req: ReflectionRequestLike, sent: Set<string>): ReflectionAnswer {
    const r = req.messageRequest;
    switch (r.case) {
      case "listServices":
        return listServices;
      case "fileByFilename": {
        const file = schema.files.get(r.value);
        return file ? fileAnswer(file, sent) : notFound(`file ${r.value} not found`);
      }
      case "fileContainingSymbol": {
        const file = schema.fileContainingSymbol(r.value);
        return file ? fileAnswer(file, sent) : notFound(`symbol ${r.value} not found`);
      }
      case "fileContainingExtension": {
        const { containingType, extensionNumber } = r.value;
        const message = schema.registry.getMessage(stripDot(containingType));
        const ext = message && schema.registry.getExtensionFor(message, extensionNumber);
        return ext
          ? fileAnswer(ext.file, sent)
          : notFound(`extension ${extensionNumber} of ${containingType} not found`);
      }
      case "allExtensionNumbersOfType": {
        const message = schema.registry.getMessage(stripDot(r.value));
        if (!message) return notFound(`type ${r.value} not found`);
        return {
          case: "allExtensionNumbersResponse",
          value: { baseTypeName: message.typeName, extensionNumber: extensionNumbersOf(schema.registry, message) },
        };
      }
      case undefined:
        return {
          case: "errorResponse",
          value: { errorCode: Code.InvalidArgument, errorMessage: "empty reflection request" },
        };
    }
  }

  return async function* serverReflectionInfo<R extends ReflectionRequestLike>(
    requests: AsyncIterable<R>,
    _ctx: HandlerContext,
  ) {
    const sent = new Set<string>();
    let count = 0;
    for await (const req of requests) {
      if (++count > maxRequests) {
        throw new ConnectError("too many requests on one reflection stream", Code.ResourceExhausted);
      }
      yield { validHost: req.host, originalRequest: req, messageResponse: answer(req, sent) };
    }
  };
}

function notFound(errorMessage: string): ReflectionAnswer {
  return { case: "errorResponse", value: { errorCode: Code.NotFound, errorMessage } };
}

function extensionNumbersOf(registry: Registry, message: DescMessage): number[] {
  const numbers: number[] = [];
  for (const desc of registry) {
    if (desc.kind === "extension" && desc.extendee.typeName === message.typeName) numbers.push(desc.number);
  }
  return numbers.sort((a, b) => a - b);
}

function stripDot(name: string): string {
  return name.startsWith(".") ? name.slice(1) : name;
}

function dedupe(services: readonly DescService[]): DescService[] {
  const byName = new Map<string, DescService>();
  for (const s of services) if (!byName.has(s.typeName)) byName.set(s.typeName, s);
  return [...byName.values()];
}
