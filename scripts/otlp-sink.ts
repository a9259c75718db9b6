// A do-nothing OTLP/HTTP receiver for measuring what tracing costs the gateway (README,
// "Tracing"): it accepts every export request (200, empty response) and counts requests and
// bytes, without decoding them, so it takes as little CPU as a collector on another machine would
// take from this one. Prints its totals when stopped (SIGINT/SIGTERM).
//
//   node --import tsx scripts/otlp-sink.ts [--port 4318]
//   npm run bench -- --scenario a --gateway-env OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 \
//     --gateway-env OTEL_TRACES_SAMPLER=traceidratio --gateway-env OTEL_TRACES_SAMPLER_ARG=0.1
import { createServer } from "node:http";
import { parseArgs } from "node:util";

const { values } = parseArgs({ options: { port: { type: "string", default: "4318" } } });
let requests = 0;
let bytes = 0;
const server = createServer((req, res) => {
  req.on("data", (chunk: Buffer) => {
    bytes += chunk.length;
  });
  req.on("end", () => {
    requests++;
    res.writeHead(200, { "content-type": "application/x-protobuf" }).end();
  });
});
server.listen(Number(values.port), "127.0.0.1", () => {
  process.stdout.write(`otlp sink listening on http://127.0.0.1:${values.port}\n`);
});
const stop = (): void => {
  process.stdout.write(`otlp sink: ${requests} export requests, ${bytes} bytes\n`);
  server.close();
  server.closeAllConnections();
};
process.once("SIGINT", stop);
process.once("SIGTERM", stop);
