/**
 * What sharing slots between the workers of one gateway costs per call (README, "Several
 * replicas"): a real node:cluster primary keeping the slot table and one worker taking and giving
 * back slots through `createIpcSlotGate` over the real IPC channel, as a gateway worker does for
 * every request (WORKERS > 1, no Redis). Reports µs per acquire+release at each concurrency, with
 * enough slots that every acquire is granted (the uncontended cost every call pays), and with one
 * slot placed as the scheduler places it (`handoff`): each release travels with the next acquire,
 * so this is one round trip from one holder to the next.
 *
 *   node --import tsx bench/ipc-slot-gate.ts [calls per run, default 20000] [runs, default 5] [granted-only]
 */
import cluster from "node:cluster";
import { performance } from "node:perf_hooks";
import { answerSlotRequest, createIpcSlotGate, isSlotRequest } from "../src/routing/ipc-slot-gate.js";
import type { IpcChannel } from "../src/routing/ipc-slot-gate.js";
import { createSlotTable } from "../src/routing/slot-table.js";

const calls = Number(process.argv[2] ?? 20_000);
const runs = Number(process.argv[3] ?? 5);
/** `granted-only`: skip the one-slot runs (to compare the CPU time of the whole run with the protocol before). */
const grantedOnly = process.argv[4] === "granted-only";
const CONCURRENCY = [1, 16];

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
};

if (cluster.isPrimary) {
  // The primary's side, as `cluster-primary.ts` runs it.
  const table = createSlotTable();
  const worker = cluster.fork();
  // (Also runs against the protocol before the shared admission order, where the answer was one message.)
  const deliver = (out: unknown): void => {
    if (Array.isArray(out)) for (const o of out as { message: object }[]) worker.send(o.message);
    else if (out !== undefined) worker.send(out as object);
  };
  worker.on("message", (m: unknown) => {
    if (isSlotRequest(m)) deliver(answerSlotRequest(table, worker.id, m));
    else if (typeof m === "object" && m !== null && "report" in m) {
      console.log((m as { report: string }).report);
      worker.kill();
    }
  });
  worker.on("exit", () => process.exit(0));
} else {
  const gate = createIpcSlotGate({ channel: process as unknown as IpcChannel, timeoutMs: 60_000 });
  /** Runs `n` acquire+release pairs, `c` at a time, with `c` slots (all granted); µs per pair (wall time / n). */
  const run = async (n: number, c: number): Promise<number> => {
    let next = 0;
    const one = async (): Promise<void> => {
      for (; next < n; next++) {
        const slot = await gate.tryAcquire("n0", "m", c, { priority: 0, enqueuedAt: next });
        if (slot === undefined) throw new Error("refused with a free slot");
        await slot.release();
      }
    };
    const started = performance.now();
    await Promise.all(Array.from({ length: c }, one));
    return ((performance.now() - started) * 1000) / n;
  };
  /**
   * `n` calls through one slot, as the scheduler places them: one placement at a time, the next
   * asked for in the same tick as the previous release (so the two travel as one message), a
   * refused one placed again when the primary hands it the slot (`onFree`). µs per call.
   */
  const handoff = (n: number): Promise<number> =>
    new Promise((resolve) => {
      let done = 0;
      let placing = false;
      const started = performance.now();
      const pump = (): void => {
        if (placing || done >= n) return;
        placing = true;
        void gate.tryAcquire("n0", "m", 1, { priority: 0, enqueuedAt: done }).then((slot) => {
          placing = false;
          if (slot === undefined) return; // handed over later: onFree pumps
          void slot.release();
          if (++done === n) resolve(((performance.now() - started) * 1000) / n);
          else pump();
        });
      };
      gate.onFree?.(pump);
      pump();
    });
  const lines: string[] = [`acquire+release over IPC, ${calls} calls per run, median of ${runs} runs (µs per call)`];
  await run(2_000, 4); // warm-up
  for (const c of CONCURRENCY) {
    const free: number[] = [];
    for (let r = 0; r < runs; r++) free.push(await run(calls, c));
    lines.push(`c=${c} granted: ${median(free).toFixed(1)} µs  (runs: ${free.map((x) => x.toFixed(1)).join(", ")})`);
  }
  const handoffs: number[] = [];
  if (grantedOnly || !("onFree" in gate)) {
    // Before the shared admission order a refused acquire was retried on a timer: nothing to time here.
    process.send?.({ report: lines.join("\n") });
    await new Promise(() => undefined);
  }
  for (let r = 0; r < runs; r++) handoffs.push(await handoff(calls));
  lines.push(
    `one slot, release + next acquire as one message: ${median(handoffs).toFixed(1)} µs  (runs: ${handoffs.map((x) => x.toFixed(1)).join(", ")})`,
  );
  process.send?.({ report: lines.join("\n") });
}
