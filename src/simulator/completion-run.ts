/**
 * The streaming pipeline shared by /api/generate and /api/chat: wait for a parallel slot,
 * simulate prompt evaluation, emit one chunk per token with the configured pacing, then the
 * final chunk with metrics. Stops at once when the client disconnects or a fault ends the
 * response, freeing the slot and counting tokens only up to that point.
 */
import { sleep } from "./abortable.js";
import { isAbortError } from "./errors.js";
import { createSink } from "./http-exchange.js";
import type { Exchange } from "./http-exchange.js";
import type { RunnerLease } from "./scheduler.js";
import { metrics, since, type Metrics, type SimContext } from "./sim-context.js";
import { bump } from "./stats.js";
import type { CompletionPlan, ToolCall } from "./text-model.js";

/** One piece of model output. */
export interface OutputPart {
  readonly content: string;
  readonly thinking: string;
  readonly toolCalls?: readonly ToolCall[];
}

/** Everything a completion run needs; `chunk`/`final`/`merge` give the endpoint's JSON shapes. */
export interface CompletionRun<T extends object> {
  readonly ex: Exchange;
  readonly ctx: SimContext;
  /** Released by the run when it ends, however it ends. */
  readonly lease: RunnerLease;
  readonly plan: CompletionPlan;
  /** Handler start → runner obtained (includes queueing and loading), in ns. */
  readonly loadNs: bigint;
  readonly promptTokens: number;
  readonly stream: boolean;
  chunk(part: OutputPart): T;
  final(doneReason: string, metrics: Metrics): T;
  merge(accumulated: T | undefined, chunk: T): T;
}

/** Runs a planned completion to the end (or until cancelled). */
export async function runCompletion<T extends object>(run: CompletionRun<T>): Promise<void> {
  const { ex, ctx, lease, plan } = run;
  const { stats, config } = ctx;
  const model = lease.runner.name;
  const sink = createSink(ex, run.stream, run.merge);
  let releaseSlot: (() => void) | undefined;
  try {
    releaseSlot = await lease.acquireSlot(ex.signal);
    bump(stats.inFlight, model);
    stats.maxInFlight[model] = Math.max(stats.maxInFlight[model] ?? 0, stats.inFlight[model] ?? 0);

    const promptStart = process.hrtime.bigint();
    await sleep(config.firstTokenMs, ex.signal);
    const promptEval = since(promptStart);
    const evalStart = process.hrtime.bigint();
    let evalCount = 0;
    let first = true;

    const emit = async (part: OutputPart, tokens: number): Promise<boolean> => {
      if (!first) await sleep(config.tokenMs, ex.signal);
      first = false;
      if (!(await sink.push(run.chunk(part), false))) return false;
      evalCount += tokens;
      ex.tokens += tokens;
      stats.tokensEmitted += tokens;
      return true;
    };

    for (const thinking of plan.thinking) {
      if (!(await emit({ content: "", thinking }, 1))) return;
    }
    for (const content of plan.content) {
      if (!(await emit({ content, thinking: "" }, 1))) return;
    }
    if (plan.toolCalls.length > 0) {
      if (!(await emit({ content: "", thinking: "", toolCalls: plan.toolCalls }, plan.toolCallTokens))) return;
    }
    const done = run.final(
      plan.doneReason,
      metrics({
        total: since(ex.startedAt),
        load: run.loadNs,
        promptEvalCount: run.promptTokens,
        promptEval,
        evalCount,
        evalDuration: since(evalStart),
      }),
    );
    if (await sink.push(done, true)) stats.completed++;
  } catch (error) {
    if (!isAbortError(error)) throw error;
  } finally {
    if (releaseSlot) {
      releaseSlot();
      bump(stats.inFlight, model, -1);
    }
    lease.release();
  }
}
