/**
 * The out-of-process control API under /_sim/ (benchmarks run the simulator as a separate
 * process): read stats and state, add/list/clear faults, reset. Not counted in stats, never
 * affected by faults.
 *
 *   GET    /_sim/stats    → SimulatorStats as JSON
 *   GET    /_sim/state    → { loaded: [...], installed: [...], faults: [...], pending_loads, vram_bytes }
 *   GET    /_sim/faults   → armed faults (times/remaining Infinity shown as null)
 *   POST   /_sim/faults   → body: one fault (see faults.ts; "times": null = forever) → 201 {"id"}
 *   DELETE /_sim/faults   → disarm all → 200 {"cleared": n}
 *   POST   /_sim/reset    → clear stats and faults (loaded models stay) → 200 {}
 */
import type { FaultInjector } from "./faults.js";
import type { Exchange } from "./http-exchange.js";
import type { SimContext } from "./sim-context.js";
import { formatLocal, msToNs } from "./timestamps.js";

/** Dependencies of the admin API beyond the shared context. */
export interface AdminDeps {
  readonly faults: FaultInjector;
  readonly reset: () => void;
}

/** Handles a /_sim/ request; always answers. */
export async function handleAdmin(ex: Exchange, ctx: SimContext, deps: AdminDeps): Promise<void> {
  const route = `${ex.method} ${ex.path}`;
  switch (route) {
    case "GET /_sim/stats":
      return ex.sendJson(200, ctx.stats);
    case "GET /_sim/state":
      return ex.sendJson(200, {
        loaded: ctx.scheduler.loaded().map((r) => ({
          name: r.name,
          digest: r.model.digest,
          num_ctx: r.numCtx,
          num_parallel: r.numParallel,
          ref_count: r.refCount,
          busy_slots: r.busySlots,
          loading: r.loading,
          size: r.size,
          size_vram: r.sizeVram,
          expires_at: formatLocal(msToNs(r.expiresAt)),
        })),
        installed: ctx.store.list().map((m) => m.display),
        faults: deps.faults.list(),
        pending_loads: ctx.stats.pendingLoads,
        vram_bytes: ctx.config.vramBytes,
      });
    case "GET /_sim/faults":
      return ex.sendJson(200, { faults: deps.faults.list() });
    case "POST /_sim/faults": {
      let input: unknown;
      try {
        input = JSON.parse(ex.body.toString("utf8"));
      } catch {
        return ex.sendError(400, "fault body must be JSON");
      }
      try {
        const id = deps.faults.add(input as Parameters<FaultInjector["add"]>[0]);
        return ex.sendJson(201, { id });
      } catch (error) {
        return ex.sendError(400, error instanceof Error ? error.message : String(error));
      }
    }
    case "DELETE /_sim/faults": {
      const cleared = deps.faults.list().length;
      deps.faults.clear();
      return ex.sendJson(200, { cleared });
    }
    case "POST /_sim/reset":
      deps.reset();
      return ex.sendJson(200, {});
    default:
      return ex.sendError(404, `unknown simulator admin route ${route}`);
  }
}
