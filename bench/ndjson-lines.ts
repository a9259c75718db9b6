// The load generators' NDJSON reader for the "direct" baselines: what a lean
// client of Ollama does, so the baseline is not handicapped by a slow parser.

/** Parses an NDJSON body as it arrives: splits on 0x0A in the raw bytes, JSON.parse per line. */
export async function* ndjson(body: AsyncIterable<Buffer>): AsyncGenerator<Record<string, unknown>> {
  let rest: Buffer | undefined;
  for await (const raw of body) {
    const chunk: Buffer = rest ? Buffer.concat([rest, raw]) : raw;
    rest = undefined;
    let start = 0;
    for (let nl = chunk.indexOf(0x0a); nl !== -1; nl = chunk.indexOf(0x0a, start)) {
      if (nl > start) yield JSON.parse(chunk.toString("utf8", start, nl)) as Record<string, unknown>;
      start = nl + 1;
    }
    if (start < chunk.length) rest = chunk.subarray(start);
  }
  if (rest && rest.toString("utf8").trim() !== "") yield JSON.parse(rest.toString("utf8")) as Record<string, unknown>;
}
