// `node --import tsx bench/stream-memory.ts [streams=1000] [node options...]`: where the memory
// of many concurrent slow streams goes (issue #5, scenario c). Starts a simulator (a token every
// 50 ms, 400 tokens) and the compiled gateway, holds N Generate streams open through it from this
// process, then reads the gateway's RSS and V8 heap spaces and writes a heap snapshot, which it
// summarises: self size by constructor, top 25. Not part of `npm run bench`: a profiling aid.
import { mkdirSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { Health } from "../src/gen/grpc/health/v1/health_pb.js";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { killAllChildren, prepareRuntime, startGatewayProcess, startSimulatorProcess } from "./processes.js";

interface HeapSnapshot {
  snapshot: { meta: { node_fields: string[]; node_types: [string[]] } };
  nodes: number[];
  strings: string[];
}

/** Self size per constructor (or node type for non-objects), largest first. */
function summarise(file: string, top: number): { name: string; mb: number; count: number }[] {
  const snap = JSON.parse(readFileSync(file, "utf8")) as HeapSnapshot;
  const fields = snap.snapshot.meta.node_fields;
  const types = snap.snapshot.meta.node_types[0];
  const width = fields.length;
  const typeAt = fields.indexOf("type");
  const nameAt = fields.indexOf("name");
  const sizeAt = fields.indexOf("self_size");
  const byName = new Map<string, { bytes: number; count: number }>();
  for (let i = 0; i < snap.nodes.length; i += width) {
    const type = types[snap.nodes[i + typeAt]!] ?? "?";
    const name =
      type === "object" || type === "closure" ? `${type}:${snap.strings[snap.nodes[i + nameAt]!] ?? "?"}` : type;
    const e = byName.get(name) ?? { bytes: 0, count: 0 };
    e.bytes += snap.nodes[i + sizeAt]!;
    e.count++;
    byName.set(name, e);
  }
  return [...byName]
    .map(([name, e]) => ({ name, mb: Math.round((e.bytes / 1e6) * 100) / 100, count: e.count }))
    .sort((a, b) => b.mb - a.mb)
    .slice(0, top);
}

function rssMb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) / 1000 : NaN;
}

async function main(): Promise<void> {
  const streams = Number(process.argv[2] ?? "1000");
  const nodeArgs = process.argv.slice(3);
  const dir = join(tmpdir(), `ogw-heap-${process.pid}`);
  mkdirSync(dir, { recursive: true });
  const runtime = prepareRuntime("compiled");
  const sim = await startSimulatorProcess(runtime, ["--token-ms", "50", "--num-parallel", String(streams + 10)]);
  const gw = await startGatewayProcess(
    runtime,
    {
      OLLAMA_URL: sim.url,
      OLLAMA_NUM_PARALLEL: String(streams + 10),
      UPSTREAM_CONNECTIONS: String(streams + 100),
      EMBED_CACHE: "off",
      LOG_LEVEL: "warn",
    },
    join(tmpdir(), `ogw-heap-${process.pid}.log`),
    ["--heapsnapshot-signal=SIGUSR2", `--diagnostic-dir=${dir}`, ...nodeArgs],
  );
  try {
    const idle = rssMb(gw.pid);
    const sessions = [0, 1, 2, 3].map(() => new Http2SessionManager(gw.url));
    const clients = sessions.map((s) =>
      createClient(InferenceService, createGrpcTransport({ baseUrl: gw.url, sessionManager: s })),
    );
    let open = 0;
    let failed = 0;
    const all = Array.from({ length: streams }, async (_, i) => {
      let first = true;
      try {
        for await (const _m of clients[i % clients.length]!.generate(
          { model: "llama3.2", prompt: `s${i}`, options: { numPredict: 400 } },
          { timeoutMs: 120_000 },
        )) {
          if (first) open++;
          first = false;
        }
      } catch {
        failed++; // counted, reported; the streams are cut on purpose at the end
      }
    });
    const until = Date.now() + 60_000;
    while (open < streams && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
    await new Promise((r) => setTimeout(r, 2000));
    const peak = rssMb(gw.pid);
    process.kill(gw.pid, "SIGUSR2");
    let file: string | undefined;
    for (let t = 0; t < 600 && file === undefined; t++) {
      await new Promise((r) => setTimeout(r, 100));
      try {
        file = readdirSync(dir).find((f) => f.endsWith(".heapsnapshot"));
      } catch {
        // not written yet
      }
    }
    // The snapshot is written synchronously: once the gateway answers again, the file is complete.
    const probe = new Http2SessionManager(gw.url);
    await createClient(Health, createGrpcTransport({ baseUrl: gw.url, sessionManager: probe })).check(
      { service: "" },
      { timeoutMs: 120_000 },
    );
    probe.abort();
    console.log(
      `${open}/${streams} streams open; gateway RSS idle ${idle.toFixed(1)} MB, with streams ${peak.toFixed(1)} MB, ${(((peak - idle) * 1000) / streams).toFixed(1)} KB per stream`,
    );
    if (file) {
      console.log("heap self size by constructor (top 25):");
      for (const r of summarise(join(dir, file), 25))
        console.log(`  ${r.mb.toFixed(2).padStart(8)} MB  ${String(r.count).padStart(8)}  ${r.name}`);
    }
    for (const s of sessions) s.abort();
    await Promise.all(all);
    console.log(`${failed} streams ended by the abort at the end`);
  } finally {
    await gw.stop(2000);
    await sim.stop(1000);
    rmSync(dir, { recursive: true, force: true });
  }
}

// Never leave the gateway and simulator behind: not on Ctrl-C, nor when stdout is closed early
// (e.g. piped into `head`, which made console.log throw EPIPE and skip the cleanup).
const bail = (): void => {
  killAllChildren();
  process.exit(1);
};
process.stdout.on("error", bail);
process.on("SIGINT", bail);
process.on("SIGTERM", bail);

main().then(
  () => process.exit(0),
  (e: unknown) => {
    console.error(e);
    killAllChildren();
    process.exit(1);
  },
);
