/**
 * POST /api/push: Ollama's push progress (`retrieving manifest`, `pushing <12hex>` with
 * digest/total/completed, `pushing manifest`, `success`) for an installed model, over `pullMs`.
 * Nothing is uploaded anywhere; the point is a faithful stream for clients and gateways.
 */
import { sleep } from "./abortable.js";
import { ApiError, isAbortError } from "./errors.js";
import { decodeBody, STRUCTS } from "./go-json.js";
import { createSink } from "./http-exchange.js";
import { parseModelName } from "./model-name.js";
import { sha256Hex } from "./prng.js";
import { stringField, type Handler } from "./sim-context.js";

/** One progress object. */
interface Progress {
  status: string;
  digest?: string;
  total?: number;
  completed?: number;
}

/** Handles POST /api/push. */
export const handlePush: Handler = async (ex, ctx) => {
  const body = decodeBody(ex.body, STRUCTS.push);
  const requested = stringField(body, "model") || stringField(body, "name");
  if (requested === "") throw new ApiError(400, "model is required");
  const sink = createSink<Progress>(ex, body.stream !== false, (_acc, chunk) => chunk);
  const name = parseModelName(requested);
  const installed = name ? ctx.store.find(name) : undefined;
  const stepMs = ctx.config.pullMs / 4;
  try {
    if (!(await sink.push({ status: "retrieving manifest" }, false))) return;
    await sleep(stepMs, ex.signal);
    if (!installed || !name) {
      const path = name ? `${name.host}/${name.namespace}/${name.model}/${name.tag}` : requested;
      sink.fail(`open /root/.ollama/models/manifests/${path}: no such file or directory`, 500);
      return;
    }
    const digest = sha256Hex(`${installed.spec.digest}:model`);
    const status = `pushing ${digest.slice(0, 12)}`;
    const total = installed.spec.size;
    if (!(await sink.push({ status, digest: `sha256:${digest}`, total }, false))) return;
    await sleep(stepMs, ex.signal);
    if (!(await sink.push({ status, digest: `sha256:${digest}`, total, completed: total }, false))) return;
    if (!(await sink.push({ status: "pushing manifest" }, false))) return;
    await sleep(stepMs, ex.signal);
    await sink.push({ status: "success" }, true);
  } catch (error) {
    if (!isAbortError(error)) throw error;
  }
};
