import {
  compressionGzip,
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";
import type { Transport } from "@connectrpc/connect";

/** A named way to reach the gateway, so one test body runs over every protocol. */
export interface NamedTransport {
  /** e.g. "gRPC (h2c)". */
  name: string;
  /** Builds the transport for a base URL. */
  make(baseUrl: string): Transport;
}

/**
 * The protocols the gateway serves on its one port: gRPC over HTTP/2, and
 * gRPC-Web and Connect over HTTP/1.1 (what browsers and curl use) and over
 * HTTP/2. Plain gRPC calls of Generate, Chat and Embed take the gateway's fast
 * path; gzip-compressed gRPC requests are served by connect-node, so both
 * gRPC servers run every test.
 */
export const TRANSPORTS: NamedTransport[] = [
  { name: "gRPC over HTTP/2", make: (baseUrl) => createGrpcTransport({ baseUrl }) },
  { name: "gRPC-Web over HTTP/1.1", make: (baseUrl) => createGrpcWebTransport({ baseUrl, httpVersion: "1.1" }) },
  { name: "Connect over HTTP/1.1", make: (baseUrl) => createConnectTransport({ baseUrl, httpVersion: "1.1" }) },
  { name: "Connect over HTTP/2", make: (baseUrl) => createConnectTransport({ baseUrl, httpVersion: "2" }) },
  {
    name: "gRPC over HTTP/2, gzip requests",
    make: (baseUrl) => createGrpcTransport({ baseUrl, sendCompression: compressionGzip, compressMinBytes: 0 }),
  },
];
