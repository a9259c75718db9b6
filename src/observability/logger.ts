import { pino } from "pino";
import type { DestinationStream, Logger } from "pino";

/** The gateway's logger type (pino), re-exported so other files need not know the library. */
export type { Logger };

/**
 * A JSON logger, on stdout unless a destination is given (tests capture
 * lines). Asynchronous writes (batched while one is in flight) keep logging
 * off the request path without delaying lines on a quiet gateway;
 * `flushLogger` drains them on shutdown.
 */
export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: "ollama-grpc-gateway", pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    destination ?? pino.destination({ dest: 1, sync: false }),
  );
}

/** Writes out buffered log lines (call before exiting). */
export function flushLogger(log: Logger): Promise<void> {
  return new Promise((resolve) => log.flush(() => resolve()));
}
