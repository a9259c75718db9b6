/**
 * Splits NDJSON bytes into parsed objects, one array per chunk pushed: the objects that had
 * arrived by the time the reader asked. When the reader keeps up, that is one object per
 * array; when it falls behind (a slow client), the array holds everything buffered meanwhile,
 * so the caller can coalesce it into one message instead of queueing many tiny ones.
 *
 * Works on raw Buffers: splits on byte 0x0A (which never occurs inside a multi-byte UTF-8
 * sequence, so no decoder state is needed). An unfinished line is kept as a list of chunks and
 * joined once, when its end arrives, so a long line costs linear time. A line longer than
 * `maxLineBytes`, or one that is not a JSON object, throws `NdjsonError` instead of growing
 * memory without bound. Blank lines are skipped. A last line without `\n` is parsed by `end`,
 * which also covers Ollama's single-object (non-stream) answers.
 *
 * Synchronous on purpose: the streaming relay calls it once per upstream read, with no promise
 * or generator per line.
 */
export interface NdjsonSplitter {
  /** The complete lines of `chunk` (and of what was pending before it), parsed. */
  push(chunk: Buffer): Record<string, unknown>[];
  /** The unterminated last line, parsed (empty when there is none). */
  end(): Record<string, unknown>[];
}

/** Creates a splitter for one response body. */
export function createNdjsonSplitter(maxLineBytes: number): NdjsonSplitter {
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  return {
    push(chunk) {
      const batch: Record<string, unknown>[] = [];
      let start = 0;
      let nl = chunk.indexOf(0x0a);
      while (nl !== -1) {
        if (pendingBytes > 0) {
          pending.push(chunk.subarray(start, nl));
          const line = Buffer.concat(pending, pendingBytes + nl - start);
          pending = [];
          pendingBytes = 0;
          if (line.length > maxLineBytes) throw tooLong(maxLineBytes);
          if (line.length > 0) batch.push(parseLine(line, 0, line.length));
        } else if (nl > start) {
          if (nl - start > maxLineBytes) throw tooLong(maxLineBytes);
          batch.push(parseLine(chunk, start, nl));
        }
        start = nl + 1;
        nl = chunk.indexOf(0x0a, start);
      }
      if (start < chunk.length) {
        pending.push(start === 0 ? chunk : chunk.subarray(start));
        pendingBytes += chunk.length - start;
        if (pendingBytes > maxLineBytes) throw tooLong(maxLineBytes);
      }
      return batch;
    },
    end() {
      if (pendingBytes === 0) return [];
      const line = Buffer.concat(pending, pendingBytes);
      pending = [];
      pendingBytes = 0;
      return line.toString("utf8").trim() === "" ? [] : [parseLine(line, 0, line.length)];
    },
  };
}

function parseLine(buf: Buffer, start: number, end: number): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(buf.toString("utf8", start, end));
  } catch {
    throw new NdjsonError("a line is not valid JSON");
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new NdjsonError("a line is not a JSON object");
  }
  return value as Record<string, unknown>;
}

function tooLong(max: number): NdjsonError {
  return new NdjsonError(`a line is longer than ${max} bytes`);
}

/** The upstream sent bytes that are not NDJSON objects within the limits. */
export class NdjsonError extends Error {
  override readonly name = "NdjsonError";
}
