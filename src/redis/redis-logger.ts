/**
 * The part of a pino logger the Redis layer and its users need, so tests and callers can pass any
 * pino-compatible logger without the layer depending on observability/.
 */
export interface RedisLogger {
  info(obj: Record<string, unknown>, msg: string): void;
  warn(obj: Record<string, unknown>, msg: string): void;
}
