// A load-generator process for the fleet benchmark (bench/fleet.ts starts
// it; never inside the gateway). It replays one open-loop schedule: every
// request is sent at its scheduled time whether or not earlier ones have
// finished, with a deadline, and its outcome is recorded. Two targets:
// - "gateway": the connect gRPC client over HTTP/2 (one session);
// - "round-robin": request i straight to simulator i mod n over HTTP/1.1
//   (undici, a connection per outstanding request, NDJSON parsed line by
//   line), like nginx or a simple-shuffle router in front of the nodes;
// - "least-connections": the same, to the simulator with the fewest requests
//   outstanding from here (ties in turn), like nginx `least_conn`.
import { monitorEventLoopDelay } from "node:perf_hooks";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { durationMs } from "@bufbuild/protobuf/wkt";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { Pool } from "undici";
import { ErrorInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";
import { InferenceService } from "../src/gen/ollama/gateway/v1/inference_pb.js";
import { ThinkMode } from "../src/gen/ollama/gateway/v1/types_pb.js";
import { ndjson } from "./ndjson-lines.js";
import type {
  FailureClass,
  FleetJob,
  FleetLoadResult,
  FleetReplyMessage,
  FleetRequest,
  FleetRunMessage,
  RequestRecord,
} from "./fleet-protocol.js";

/** What a successful call reports. */
interface Outcome {
  ttftMs: number;
  tokens: number;
  node?: string;
  gatewayQueueMs?: number;
  upstreamLoadMs?: number;
}

/** A failure already classified. */
class Classified extends Error {
  constructor(
    readonly failure: FailureClass,
    readonly detail: string,
    readonly expectedWaitMs?: number,
  ) {
    super(detail);
  }
}

/** One target: send a request, let go of connections. */
interface Side {
  call(r: FleetRequest, t0: number): Promise<Outcome>;
  close(): Promise<void>;
}

function short(s: string): string {
  return s.replace(/\s+/g, " ").slice(0, 160);
}

function gatewaySide(job: FleetJob): Side {
  const url = job.urls[0]!;
  const session = new Http2SessionManager(url);
  const client = createClient(InferenceService, createGrpcTransport({ baseUrl: url, sessionManager: session }));
  return {
    async call(r, t0) {
      let ttftMs = -1;
      let done: Outcome | undefined;
      try {
        const stream = client.generate(
          {
            model: r.model,
            prompt: r.prompt,
            options: { numPredict: r.numPredict },
            think: r.thinkOff ? ThinkMode.OFF : ThinkMode.UNSPECIFIED,
          },
          { timeoutMs: job.deadlineMs },
        );
        for await (const m of stream) {
          if (ttftMs < 0 && m.text !== "") ttftMs = performance.now() - t0;
          if (m.done) {
            const u = m.usage;
            done = {
              ttftMs,
              tokens: u?.completionTokens ?? 0,
              node: u?.node,
              gatewayQueueMs: u?.queueDuration ? durationMs(u.queueDuration) : undefined,
              upstreamLoadMs: u?.loadDuration ? durationMs(u.loadDuration) : undefined,
            };
          }
        }
      } catch (e) {
        const ce = ConnectError.from(e);
        const info = ce.findDetails(ErrorInfoSchema)[0];
        const reason = info?.reason;
        const detail = short(`${Code[ce.code]}${reason ? ` ${reason}` : ""}: ${ce.rawMessage}`);
        const expected = Number(info?.metadata["expected_wait_ms"]);
        if (ce.code === Code.ResourceExhausted)
          throw new Classified("resource_exhausted", detail, Number.isFinite(expected) ? expected : undefined);
        if (ce.code === Code.DeadlineExceeded) throw new Classified("timeout", detail);
        if (ce.code === Code.Unavailable) throw new Classified("unavailable", detail);
        throw new Classified("other", detail);
      }
      if (done === undefined) throw new Classified("other", "stream ended without its final message");
      return done;
    },
    close() {
      session.abort();
      return Promise.resolve();
    },
  };
}

function isTimeout(e: unknown, signal: AbortSignal): boolean {
  return signal.aborted || (e instanceof Error && (e.name === "TimeoutError" || e.name === "AbortError"));
}

/** Which node each request goes to when the load generator talks to the nodes itself. */
interface Picker {
  /** The node for request `r`. */
  pick(r: FleetRequest): number;
  /** Request sent to `node` ended. */
  done(node: number): void;
}

/** Request i to node i mod n. */
function roundRobin(n: number): Picker {
  return { pick: (r) => r.i % n, done: () => undefined };
}

/** The node with the fewest outstanding requests; among those, the next one after the last pick. */
function leastConnections(n: number): Picker {
  const outstanding = new Array<number>(n).fill(0);
  let last = -1;
  return {
    pick() {
      let best = -1;
      for (let k = 1; k <= n; k++) {
        const i = (last + k) % n;
        if (best === -1 || outstanding[i]! < outstanding[best]!) best = i;
      }
      last = best;
      outstanding[best]!++;
      return best;
    },
    done(node) {
      outstanding[node]!--;
    },
  };
}

function directSide(job: FleetJob, picker: Picker): Side {
  // A connection per outstanding request, as a proxy opens them; never a client-side queue.
  const pools = job.urls.map(
    (u) => new Pool(u, { connections: 4096, pipelining: 1, headersTimeout: 0, bodyTimeout: 0 }),
  );
  const headers = { "content-type": "application/json" };
  return {
    async call(r, t0) {
      const nodeIndex = picker.pick(r);
      const pool = pools[nodeIndex]!;
      const signal = AbortSignal.timeout(job.deadlineMs);
      const body = JSON.stringify({
        model: r.model,
        prompt: r.prompt,
        options: { num_predict: r.numPredict },
        stream: true,
        ...(r.thinkOff ? { think: false } : {}),
      });
      let ttftMs = -1;
      try {
        const res = await pool.request({ method: "POST", path: "/api/generate", body, headers, signal });
        if (res.statusCode !== 200) {
          const text = await res.body.text();
          if (res.statusCode === 503) throw new Classified("busy_503", short(`HTTP 503: ${text}`));
          throw new Classified("other", short(`HTTP ${res.statusCode}: ${text}`));
        }
        let done: Outcome | undefined;
        try {
          for await (const obj of ndjson(res.body as AsyncIterable<Buffer>)) {
            if (typeof obj["error"] === "string") throw new Classified("other", short(`stream error: ${obj["error"]}`));
            if (ttftMs < 0 && typeof obj["response"] === "string" && obj["response"] !== "")
              ttftMs = performance.now() - t0;
            if (obj["done"] === true) {
              const load = obj["load_duration"];
              done = {
                ttftMs,
                tokens: typeof obj["eval_count"] === "number" ? obj["eval_count"] : 0,
                node: `n${nodeIndex}`,
                upstreamLoadMs: typeof load === "number" ? load / 1e6 : undefined,
              };
            }
          }
        } finally {
          if (!res.body.destroyed) res.body.destroy();
        }
        if (done === undefined) throw new Classified("other", "stream ended without its final line");
        return done;
      } catch (e) {
        if (e instanceof Classified) throw e;
        if (isTimeout(e, signal)) throw new Classified("timeout", `deadline of ${job.deadlineMs} ms passed`);
        throw new Classified("other", short(e instanceof Error ? `${e.name}: ${e.message}` : String(e)));
      } finally {
        picker.done(nodeIndex);
      }
    },
    async close() {
      await Promise.all(pools.map((p) => p.destroy()));
    },
  };
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
}

async function run(job: FleetJob): Promise<FleetLoadResult> {
  const side =
    job.target === "gateway"
      ? gatewaySide(job)
      : directSide(job, job.target === "round-robin" ? roundRobin(job.urls.length) : leastConnections(job.urls.length));
  const loop = monitorEventLoopDelay({ resolution: 5 });
  const cpu0 = process.cpuUsage();
  const records: RequestRecord[] = new Array<RequestRecord>(job.schedule.length);
  const inflight: Promise<void>[] = [];
  let maxSendLagMs = 0;
  loop.enable();
  const t0 = performance.now();
  try {
    // Open loop: one pass over the schedule, each request sent at its time and not awaited here.
    for (const r of job.schedule) {
      const wait = r.atMs - (performance.now() - t0);
      if (wait > 1) await sleep(wait);
      const sent = performance.now();
      const startMs = sent - t0;
      maxSendLagMs = Math.max(maxSendLagMs, startMs - r.atMs);
      inflight.push(
        side.call(r, sent).then(
          (o) => {
            records[r.i] = { i: r.i, model: r.model, startMs, endMs: performance.now() - t0, ok: true, ...o };
          },
          (e: unknown) => {
            const c = e instanceof Classified ? e : new Classified("other", short(String(e)));
            records[r.i] = {
              i: r.i,
              model: r.model,
              startMs,
              endMs: performance.now() - t0,
              ok: false,
              ttftMs: -1,
              tokens: 0,
              failure: c.failure,
              detail: c.detail,
              ...(c.expectedWaitMs !== undefined ? { expectedWaitMs: c.expectedWaitMs } : {}),
            };
          },
        ),
      );
    }
    // Every call has a deadline, so this ends within deadlineMs of the last send.
    await Promise.all(inflight);
  } finally {
    loop.disable();
    await side.close();
  }
  const cpu = process.cpuUsage(cpu0);
  return {
    records,
    elapsedMs: performance.now() - t0,
    maxSendLagMs,
    cpuMs: (cpu.user + cpu.system) / 1000,
    loopDelay: { p50: loop.percentile(50) / 1e6, p99: loop.percentile(99) / 1e6, max: loop.max / 1e6 },
  };
}

function reply(msg: FleetReplyMessage): void {
  process.send?.(msg);
}

if (process.send === undefined) {
  process.stderr.write("bench/fleet-load.ts is started by bench/fleet.ts (it needs an IPC channel)\n");
  process.exit(2);
}
// The parent went away: nothing left to report to.
process.on("disconnect", () => process.exit(0));
process.on("message", (raw: unknown) => {
  const msg = raw as FleetRunMessage;
  if (msg.type !== "run") return;
  void run(msg.job).then(
    (result) => reply({ type: "result", result }),
    (e: unknown) =>
      reply({
        type: "failed",
        message: `${msg.job.label}: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`,
      }),
  );
});
reply({ type: "ready" });
