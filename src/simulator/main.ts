/**
 * Standalone Ollama simulator: `npm run sim -- [flags]` or
 * `node --import tsx src/simulator/main.ts --port 11434 --models llama3.2,qwen3,all-minilm`.
 * Prints the URL, serves until SIGINT/SIGTERM, then closes cleanly (a second signal forces exit).
 *
 * Flags and environment (flags win; see `--help`):
 *   --host <addr>             SIM_HOST, or the host part of OLLAMA_HOST   (default 127.0.0.1)
 *   --port <n>                SIM_PORT, or the port part of OLLAMA_HOST   (default 11434)
 *   --load-ms <ms>            SIM_LOAD_MS                                 (default 500)
 *   --first-token-ms <ms>     SIM_FIRST_TOKEN_MS                          (default 0)
 *   --token-ms <ms>           SIM_TOKEN_MS                                (default 0)
 *   --models <a,b=caps,…>     SIM_MODELS     (capabilities inferred from well-known names, or name=cap+cap)
 *   --num-parallel <n>        OLLAMA_NUM_PARALLEL                         (default 1)
 *   --max-loaded-models <n>   OLLAMA_MAX_LOADED_MODELS                    (default 3)
 *   --max-queue <n>           OLLAMA_MAX_QUEUE                            (default 512)
 *   --keep-alive <dur>        OLLAMA_KEEP_ALIVE  (Go duration or seconds; negative = forever; default 5m)
 *   --num-ctx <n>             OLLAMA_CONTEXT_LENGTH                       (default 4096)
 *   --pull-ms <ms>            SIM_PULL_MS                                 (default 30)
 *   --version <semver>        SIM_VERSION                                 (default 0.12.6)
 *   --fault <spec>            SIM_FAULTS     (repeatable, adds to SIM_FAULTS; kind[,field=value...] or JSON, see faults.ts)
 * Admin API for out-of-process control: GET /_sim/stats, GET /_sim/state, GET|POST|DELETE /_sim/faults,
 * POST /_sim/reset (see route-admin.ts).
 */
import { CLI_USAGE, parseCliArgs } from "./options.js";
import { startSimulator } from "./simulator.js";

async function main(): Promise<void> {
  let parsed;
  try {
    parsed = parseCliArgs(process.argv.slice(2), process.env);
  } catch (error) {
    process.stderr.write(`ollama-simulator: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exitCode = 2;
    return;
  }
  if (parsed.help) {
    process.stdout.write(CLI_USAGE);
    return;
  }
  const sim = await startSimulator(parsed.options);
  const models = (parsed.options.models ?? []).map((m) => m.name);
  process.stdout.write(
    `Ollama simulator listening on ${sim.url} (version ${sim.options.version}; ` +
      `models: ${models.length > 0 ? models.join(", ") : "default catalog"}; ` +
      `load ${sim.options.loadMs} ms, parallel ${sim.options.numParallel}, max loaded ${sim.options.maxLoadedModels}, ` +
      (sim.options.vramBytes > 0 ? `vram ${sim.options.vramBytes} bytes, ` : "") +
      `max queue ${sim.options.maxQueue}` +
      (sim.options.faults.length > 0 ? `; faults armed: ${sim.options.faults.map((f) => f.kind).join(", ")}` : "") +
      ")\n",
  );
  let stopping = false;
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) {
      process.stderr.write(`ollama-simulator: ${signal} again, exiting now\n`);
      process.exit(1);
    }
    stopping = true;
    process.stdout.write(`ollama-simulator: ${signal} received, shutting down\n`);
    sim.close().then(
      () => {
        process.exitCode = 0;
      },
      (error: unknown) => {
        process.stderr.write(`ollama-simulator: close failed: ${String(error)}\n`);
        process.exitCode = 1;
      },
    );
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
}

main().catch((error: unknown) => {
  process.stderr.write(
    `ollama-simulator: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
  );
  process.exitCode = 1;
});
