// `npm run demo`: the gateway in front of the project's Ollama simulator, in
// one process, so the gateway can be tried without Ollama. Same environment
// variables as `npm start` (PORT, LOG_LEVEL, ...); SIM_PORT picks the
// simulator's port (default: a free one). Ctrl-C stops both.
import { loadConfig } from "../src/config/load-config.js";
import { startGateway } from "../src/gateway.js";
import { createLogger, flushLogger } from "../src/observability/logger.js";
import { startSimulator } from "../src/simulator/simulator.js";

const sim = await startSimulator({
  port: Number(process.env["SIM_PORT"] ?? 0),
  loadMs: 300,
  firstTokenMs: 40,
  tokenMs: 25,
});
const config = loadConfig({ ...process.env, OLLAMA_URL: sim.url, OLLAMA_URLS: "" });
const log = createLogger(config.logLevel);
const gateway = await startGateway(config, log);
const target = `http://127.0.0.1:${gateway.port}`;
process.stdout.write(
  `${[
    "",
    `Ollama simulator: ${sim.url}  (models: llama3.2, qwen3, all-minilm, nomic-embed-text, llava)`,
    `Gateway:          ${target}  (gRPC, gRPC-Web and Connect)`,
    "",
    "Try:",
    `  npx buf curl --list-methods ${target}`,
    `  npx buf curl --protocol grpc --http2-prior-knowledge -d '{"model":"llama3.2","prompt":"Why is the sky blue?"}' ${target}/ollama.gateway.v1.InferenceService/Generate`,
    `  npx buf curl --protocol grpc --http2-prior-knowledge -d '{"model":"qwen3","messages":[{"role":"ROLE_USER","content":"Hi"}]}' ${target}/ollama.gateway.v1.InferenceService/Chat`,
    `  npx buf curl --protocol grpc --http2-prior-knowledge -d '{"model":"all-minilm","inputs":["hello","world"]}' ${target}/ollama.gateway.v1.InferenceService/Embed`,
    `  curl -s -H 'content-type: application/json' -d '{"model":"all-minilm","inputs":["hi"]}' ${target}/ollama.gateway.v1.InferenceService/Embed`,
    "",
  ].join("\n")}\n`,
);

let stopping = false;
async function stop(): Promise<void> {
  if (stopping) return;
  stopping = true;
  await gateway.close();
  await sim.close();
  await flushLogger(log);
  process.exit(0);
}
process.on("SIGINT", () => void stop());
process.on("SIGTERM", () => void stop());
