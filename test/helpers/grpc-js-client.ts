import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { DescMessage, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { createRegistry } from "@bufbuild/protobuf";
import { StatusSchema } from "../../src/gen/google/rpc/status_pb.js";
import { ErrorInfoSchema, RetryInfoSchema } from "../../src/gen/google/rpc/error_details_pb.js";
import type { ErrorInfo, RetryInfo } from "../../src/gen/google/rpc/error_details_pb.js";

/** A plain @grpc/grpc-js client (what most Node services use), driven by protobuf-es descriptors. */
export function grpcJsClient(address: string): grpc.Client {
  return new grpc.Client(address, grpc.credentials.createInsecure());
}

/** Serializers for one method's messages, as grpc-js wants them. */
function codec<I extends DescMessage, O extends DescMessage>(input: I, output: O) {
  return {
    serialize: (v: MessageInitShape<I>): Buffer => Buffer.from(toBinary(input, create(input, v))),
    deserialize: (b: Buffer): MessageShape<O> => fromBinary(output, b),
  };
}

/** Starts a server-streaming call with grpc-js. */
export function grpcJsServerStream<I extends DescMessage, O extends DescMessage>(
  client: grpc.Client,
  path: string,
  input: I,
  output: O,
  request: MessageInitShape<I>,
  options: grpc.CallOptions = {},
  metadata = new grpc.Metadata(),
): grpc.ClientReadableStream<MessageShape<O>> {
  const c = codec(input, output);
  return client.makeServerStreamRequest(path, c.serialize, c.deserialize, request, metadata, options);
}

/** Makes a unary call with grpc-js. */
export function grpcJsUnary<I extends DescMessage, O extends DescMessage>(
  client: grpc.Client,
  path: string,
  input: I,
  output: O,
  request: MessageInitShape<I>,
  options: grpc.CallOptions = {},
): Promise<MessageShape<O>> {
  const c = codec(input, output);
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest(path, c.serialize, c.deserialize, request, new grpc.Metadata(), options, (err, value) => {
      if (err) reject(err);
      else if (value === undefined) reject(new Error("no response"));
      else resolve(value);
    });
  });
}

/** Reads all messages of a grpc-js stream; resolves with them, or rejects with the status error and the messages seen. */
export function readAll<T>(stream: grpc.ClientReadableStream<T>): Promise<T[]> {
  return new Promise((resolve, reject) => {
    const out: T[] = [];
    stream.on("data", (m: T) => out.push(m));
    stream.on("error", (e: grpc.ServiceError) => reject(Object.assign(e, { received: out })));
    stream.on("end", () => resolve(out));
  });
}

const registry = createRegistry(ErrorInfoSchema, RetryInfoSchema);

/** The ErrorInfo and RetryInfo that a status carries in `grpc-status-details-bin`. */
export function statusDetails(err: grpc.ServiceError): { errorInfo?: ErrorInfo; retryInfo?: RetryInfo } {
  const raw = err.metadata?.get("grpc-status-details-bin")[0];
  if (!(raw instanceof Buffer)) return {};
  const status = fromBinary(StatusSchema, raw);
  const out: { errorInfo?: ErrorInfo; retryInfo?: RetryInfo } = {};
  for (const any of status.details) {
    const m = anyUnpack(any, registry);
    if (m?.$typeName === "google.rpc.ErrorInfo") out.errorInfo = m as ErrorInfo;
    if (m?.$typeName === "google.rpc.RetryInfo") out.retryInfo = m as RetryInfo;
  }
  return out;
}
