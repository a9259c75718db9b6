// A "null gateway": the same gRPC stack as the gateway (connect-node on
// HTTP/2, gzip accepted) answering Generate and Embed at once from memory,
// without any upstream call. Measuring it next to the gateway splits the
// added latency into what the gRPC stack costs and what the gateway's own
// work costs. Started by bench/main.ts: prints "listening on <url>".
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { compressionGzip, connectNodeAdapter } from "@connectrpc/connect-node";
import { DoneReason } from "../src/gen/ollama/gateway/v1/types_pb.js";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";

const VECTOR = Array.from({ length: 384 }, (_, i) => Math.sin(i) / 14);

const handler = connectNodeAdapter({
  acceptCompression: [compressionGzip],
  routes(router) {
    router.service(InferenceService, {
      async *generate(req) {
        const n = Math.max(1, Math.min(100_000, req.options?.numPredict ?? 1));
        for (let i = 0; i < n; i++) yield { text: i === 0 ? "Hello" : " world" };
        yield { done: true, doneReason: DoneReason.LENGTH, usage: { completionTokens: n, node: "null" } };
      },
      async *chat() {
        // not used by the benchmark
      },
      embed(req) {
        return { embeddings: req.inputs.map(() => ({ values: VECTOR })), usage: { node: "null" } };
      },
    });
  },
});

const server = http2.createServer({ settings: { maxConcurrentStreams: 1000, initialWindowSize: 1 << 20 } }, handler);
server.listen(Number(process.argv[2] ?? 0), "127.0.0.1", () => {
  process.stdout.write(`null gRPC server listening on http://127.0.0.1:${(server.address() as AddressInfo).port}\n`);
});
const stop = (): void => {
  server.close();
  setTimeout(() => process.exit(0), 200).unref();
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
