import { pino } from "pino";
import type { DestinationStream, Logger } from "pino";

/** The gateway's logger type (pino), re-exported so other files need not know the library. */
export type { Logger };

/** Log lines are written out in batches of about this many bytes... */
const LOG_BUFFER_BYTES = 4096;
/** ...or at least this often, so a quiet gateway's lines are never held back long. */
const LOG_FLUSH_MS = 200;

/**
 * A JSON logger, on stdout unless a destination is given (tests capture
 * lines). Asynchronous, batched writes keep logging off the request path: one
 * write per ~4 KB of lines instead of one per line (the benchmark profile
 * showed a write per RPC line at ~5% of the gateway's CPU), and at most
 * 200 ms late on a quiet gateway; `flushLogger` drains them on shutdown.
 */
export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: "ollama-grpc-gateway", pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    destination ?? pino.destination({ dest: 1, sync: false, minLength: LOG_BUFFER_BYTES, periodicFlush: LOG_FLUSH_MS }),
  );
}

/** Writes out buffered log lines (call before exiting). */
export function flushLogger(log: Logger): Promise<void> {
  return new Promise((resolve) => log.flush(() => resolve()));
}
