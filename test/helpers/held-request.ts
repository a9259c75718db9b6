import { run } from "./fleet.js";
import type { Fleet, GenerateInit } from "./fleet.js";

// A request that holds its node's slot for exactly as long as a test wants, so routing specs can
// build a queue behind it and release it when they are ready, instead of guessing with sleeps.

/** A Generate stalled by the simulator that received it. */
export interface HeldRequest {
  /** Index in `fleet.sims` of the simulator (node) holding it. */
  sim: number;
  /** Cancels it (the client goes away), which frees its slot; resolves once the call has ended. */
  release(): Promise<void>;
}

/** The `prompt` of a Generate body as the simulator received it. */
function promptOf(body: Buffer | undefined): unknown {
  try {
    return (JSON.parse(body?.toString("utf8") ?? "{}") as { prompt?: unknown }).prompt;
  } catch {
    return undefined;
  }
}

/**
 * Sends `init` (its prompt must be unique in the test) so that whichever simulator receives it
 * stalls it before answering; resolves once it has reached that simulator, so it holds a slot.
 * Only one request at a time may be held this way per fleet while others are being sent.
 */
export async function holdSlot(f: Fleet, init: GenerateInit): Promise<HeldRequest> {
  const ids = f.sims.map((s) => s.faults.add({ kind: "stall", ms: 10 * 60_000, path: "/api/generate", times: 1 }));
  const listening = new AbortController();
  const reached = f.sims.map((s, i) =>
    s.events
      .next("request", {
        filter: (e) => e.path === "/api/generate" && promptOf(e.body) === init.prompt,
        signal: listening.signal,
      })
      .then(() => i),
  );
  const client = new AbortController();
  const call = run(f.client, init, { signal: client.signal });
  const endedFirst = call.then((r): number => {
    throw new Error(`the held request ended before reaching a node: ${r.error?.message ?? "no error"}`);
  });
  try {
    const sim = await Promise.race([...reached, endedFirst]);
    // The stall stays armed only where it caught the request.
    f.sims.forEach((s, i) => {
      if (i !== sim) s.faults.remove(ids[i]!);
    });
    return {
      sim,
      async release() {
        client.abort();
        await call;
      },
    };
  } finally {
    for (const p of [...reached, endedFirst]) p.catch(() => undefined);
    listening.abort();
  }
}
