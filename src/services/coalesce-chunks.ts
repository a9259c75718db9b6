import type { OllamaChunk } from "./ollama-response.js";

/**
 * Merges the consecutive in-progress chunks of one batch into a single
 * chunk (text, thinking and tool calls concatenated in order), keeping the
 * final `done` chunk separate. A batch holds more than one chunk only when
 * the client reads slower than Ollama writes; then it gets one message with
 * everything pending instead of a queue of thousands of one-token messages.
 */
export function coalesceChunks(batch: OllamaChunk[]): OllamaChunk[] {
  if (batch.length <= 1) return batch;
  const out: OllamaChunk[] = [];
  let acc: OllamaChunk | undefined;
  for (const chunk of batch) {
    if (chunk["done"] === true) {
      if (acc) out.push(acc);
      acc = undefined;
      out.push(chunk);
    } else if (acc === undefined) {
      acc = copy(chunk);
    } else {
      appendText(acc, chunk, "response");
      appendText(acc, chunk, "thinking");
      const m = chunk["message"];
      if (isObject(m)) {
        const am = isObject(acc["message"]) ? acc["message"] : (acc["message"] = {});
        appendText(am, m, "content");
        appendText(am, m, "thinking");
        if (Array.isArray(m["tool_calls"])) {
          am["tool_calls"] = [...(Array.isArray(am["tool_calls"]) ? am["tool_calls"] : []), ...m["tool_calls"]];
        }
      }
    }
  }
  if (acc) out.push(acc);
  return out;
}

function copy(chunk: OllamaChunk): OllamaChunk {
  const m = chunk["message"];
  return isObject(m) ? { ...chunk, message: { ...m } } : { ...chunk };
}

function appendText(into: Record<string, unknown>, from: Record<string, unknown>, key: string): void {
  const add = from[key];
  if (typeof add !== "string" || add === "") return;
  const have = into[key];
  into[key] = typeof have === "string" ? have + add : add;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
