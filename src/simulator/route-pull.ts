/**
 * POST /api/pull: streams Ollama's progress lines (`pulling manifest`, `pulling <12hex>` with
 * digest/total/completed, `verifying sha256 digest`, `writing manifest`, `success`) over
 * `pullMs`, then installs the model. Unknown models fail after `pulling manifest` with an NDJSON
 * error line, like a real registry miss. A client disconnect cancels the pull.
 */
import { sleep } from "./abortable.js";
import type { ResolvedModel } from "./catalog.js";
import { ApiError, isAbortError } from "./errors.js";
import { decodeBody, STRUCTS } from "./go-json.js";
import { createSink } from "./http-exchange.js";
import { nameKey, parseModelName } from "./model-name.js";
import { sha256Hex } from "./prng.js";
import { stringField, type Handler } from "./sim-context.js";

/** One progress object. */
interface Progress {
  status: string;
  digest?: string;
  total?: number;
  completed?: number;
}

/** Handles POST /api/pull. */
export const handlePull: Handler = async (ex, ctx) => {
  const body = decodeBody(ex.body, STRUCTS.pull);
  const requested = stringField(body, "model") || stringField(body, "name");
  const name = parseModelName(requested);
  if (!name) throw new ApiError(400, "invalid model name");
  const sink = createSink<Progress>(ex, body.stream !== false, (_acc, chunk) => chunk);
  const spec = ctx.registry.get(nameKey(name));
  const layers = spec ? layersOf(spec) : [];
  const present = ctx.store.find(name) !== undefined;
  const stepMs = ctx.config.pullMs / Math.max(1, 3 + layers.length * (present ? 1 : 3));
  try {
    if (!(await sink.push({ status: "pulling manifest" }, false))) return;
    await sleep(stepMs, ex.signal);
    if (!spec) {
      sink.fail("pull model manifest: file does not exist", 500);
      return;
    }
    for (const layer of layers) {
      const status = `pulling ${layer.digest.slice(0, 12)}`;
      const digest = `sha256:${layer.digest}`;
      if (present) {
        if (!(await sink.push({ status, digest, total: layer.size, completed: layer.size }, false))) return;
        continue;
      }
      if (!(await sink.push({ status, digest, total: layer.size }, false))) return;
      for (const fraction of [0.4, 1]) {
        await sleep(stepMs, ex.signal);
        const completed = Math.round(layer.size * fraction);
        if (completed === 0) continue;
        if (!(await sink.push({ status, digest, total: layer.size, completed }, false))) return;
      }
    }
    if (!(await sink.push({ status: "verifying sha256 digest" }, false))) return;
    await sleep(stepMs, ex.signal);
    if (!(await sink.push({ status: "writing manifest" }, false))) return;
    const target = parseModelName(spec.name) ?? name;
    ctx.store.install(ctx.store.find(target)?.name ?? target, spec);
    await sink.push({ status: "success" }, true);
  } catch (error) {
    if (!isAbortError(error)) throw error;
  }
};

function layersOf(spec: ResolvedModel): Array<{ digest: string; size: number }> {
  const texts: Array<[string, string]> = [
    ["template", spec.template],
    ["license", spec.license],
    ["system", spec.system],
    ["params", Object.keys(spec.parameters).length > 0 ? JSON.stringify(spec.parameters) : ""],
  ];
  const small = texts
    .filter(([, text]) => text !== "")
    .map(([kind, text]) => ({ digest: sha256Hex(`${spec.digest}:${kind}`), size: Buffer.byteLength(text) }));
  const projector = spec.capabilities.includes("vision")
    ? [{ digest: sha256Hex(`${spec.digest}:projector`), size: 624_434_368 }]
    : [];
  const used = [...small, ...projector].reduce((n, l) => n + l.size, 0);
  return [{ digest: sha256Hex(`${spec.digest}:model`), size: Math.max(1, spec.size - used) }, ...projector, ...small];
}
