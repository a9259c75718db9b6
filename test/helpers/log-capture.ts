import { Writable } from "node:stream";
import { createLogger } from "../../src/observability/logger.js";
import type { Logger } from "../../src/observability/logger.js";

/** A logger whose JSON lines are kept in memory, so tests can read what the gateway logged. */
export interface LogCapture {
  /** The logger to hand to the gateway. */
  log: Logger;
  /** Every line logged so far, parsed. */
  lines: Record<string, unknown>[];
  /** Lines whose `msg` is `msg`. */
  find(msg: string): Record<string, unknown>[];
}

/** Creates a logger that records instead of printing (LOG_TO_STDOUT=1 also prints, for debugging). */
export function captureLogs(level = "debug"): LogCapture {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString("utf8").split("\n")) {
        if (line.trim() === "") continue;
        lines.push(JSON.parse(line) as Record<string, unknown>);
        if (process.env["LOG_TO_STDOUT"] === "1") process.stdout.write(`${line}\n`);
      }
      cb();
    },
  });
  return {
    log: createLogger(level, stream),
    lines,
    find: (msg) => lines.filter((l) => l["msg"] === msg),
  };
}
