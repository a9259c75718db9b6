/**
 * POST /api/chat, following Ollama's ChatHandler order of checks: decode → top_logprobs → model
 * name → installed? → unload shortcut → thinking/capabilities (chat, tools) → options → schedule
 * → load shortcut → format → stream (thinking, content or one tool-call chunk, then done).
 */
import { runCompletion } from "./completion-run.js";
import { ApiError } from "./errors.js";
import { decodeBody, STRUCTS } from "./go-json.js";
import { parseKeepAlive } from "./go-duration.js";
import { CHAT_KEYS, orderKeys } from "./json-order.js";
import { fullName, parseModelName } from "./model-name.js";
import {
  checkPromptFits,
  checkTopLogprobs,
  parseFormat,
  parseThink,
  parseTools,
  wantsThinking,
} from "./request-fields.js";
import { resolveRequestOptions } from "./request-options.js";
import { since, stringField, type Handler } from "./sim-context.js";
import { countWords, planCompletion, type ToolCall } from "./text-model.js";
import { formatUtc } from "./timestamps.js";

/** The assistant message inside a chat response. */
interface ChatMessage {
  role: string;
  content: string;
  thinking?: string;
  tool_calls?: ToolCall[];
}

/** A chat response object (chunk or final). */
type ChatChunk = Record<string, unknown> & { message: ChatMessage };

/** Handles POST /api/chat. */
export const handleChat: Handler = async (ex, ctx) => {
  const body = decodeBody(ex.body, STRUCTS.chat);
  const keepAliveMs = parseKeepAlive(body.keep_alive);
  let think = parseThink(body.think);
  checkTopLogprobs(body.top_logprobs);

  const requested = stringField(body, "model");
  const name = parseModelName(requested);
  if (!name) throw new ApiError(400, requested === "" ? "model is required" : "invalid model name");
  const installed = ctx.store.find(name);
  if (!installed) throw new ApiError(404, `model '${requested}' not found`);
  const spec = installed.spec;

  const messages = (Array.isArray(body.messages) ? body.messages : []).filter(
    (m): m is Record<string, unknown> => typeof m === "object" && m !== null,
  );
  if (messages.length === 0 && keepAliveMs === 0) {
    ctx.scheduler.expire(spec);
    ex.sendJson(200, {
      model: requested,
      created_at: formatUtc(),
      message: { role: "assistant", content: "" },
      done_reason: "unload",
      done: true,
    });
    return;
  }

  const tools = parseTools(body.tools);
  const caps = spec.capabilities;
  if (caps.includes("thinking")) think ??= true;
  else if (wantsThinking(think)) throw new ApiError(400, `${JSON.stringify(requested)} does not support thinking`);
  if (!caps.includes("completion")) throw new ApiError(400, `${JSON.stringify(requested)} does not support chat`);
  if (Array.isArray(body.tools) && body.tools.length > 0 && !caps.includes("tools")) {
    throw new ApiError(400, `${fullName(installed.name)} does not support tools`);
  }

  const options = resolveRequestOptions(body.options, spec, ctx.config.defaultNumCtx);
  const lease = await ctx.scheduler.acquire({
    model: spec,
    name: installed.display,
    options: options.runner,
    keepAliveMs,
    signal: ex.signal,
  });
  const loadNs = since(ex.startedAt);

  if (messages.length === 0) {
    lease.release();
    ex.sendJson(200, {
      model: requested,
      created_at: formatUtc(),
      message: { role: "assistant", content: "" },
      done_reason: "load",
      done: true,
    });
    return;
  }

  let format: unknown;
  try {
    format = parseFormat(body.format);
  } catch (error) {
    lease.release();
    throw error;
  }

  const last = messages[messages.length - 1] ?? {};
  const text = (m: Record<string, unknown>): string => (typeof m.content === "string" ? m.content : "");
  const role = (m: Record<string, unknown>): string => (typeof m.role === "string" ? m.role.toLowerCase() : "");
  const images = messages.reduce((n, m) => n + (Array.isArray(m.images) ? m.images.length : 0), 0);
  const plan = planCompletion({
    model: spec.digest,
    prompt: JSON.stringify([
      messages.map((m) => [role(m), text(m), m.tool_calls ?? null, m.tool_name ?? null]),
      tools.map((t) => t.name),
    ]),
    lastMessage: text(last),
    lastRole: role(last),
    tools,
    think: think ?? false,
    numPredict: options.numPredict,
    stop: options.stop,
    seed: options.seed,
    format,
  });
  const promptTokens = Math.max(
    1,
    messages.reduce((n, m) => n + countWords(text(m)) + 1, 0) + (caps.includes("vision") ? images * 576 : 0),
  );

  try {
    checkPromptFits(body.shift, promptTokens, options.runner.numCtx);
  } catch (error) {
    lease.release();
    throw error;
  }

  await runCompletion<ChatChunk>({
    ex,
    ctx,
    lease,
    plan,
    loadNs,
    promptTokens,
    stream: body.stream !== false,
    chunk: (part) => ({
      model: requested,
      created_at: formatUtc(),
      message: message(part.content, part.thinking, part.toolCalls ? [...part.toolCalls] : undefined),
      done: false,
    }),
    final: (doneReason, metrics) => ({
      model: requested,
      created_at: formatUtc(),
      message: { role: "assistant", content: "" },
      done_reason: doneReason,
      done: true,
      ...metrics,
    }),
    merge: (acc, chunk) => {
      const content = (acc?.message.content ?? "") + chunk.message.content;
      const thinking = (acc?.message.thinking ?? "") + (chunk.message.thinking ?? "");
      const calls = [...(acc?.message.tool_calls ?? []), ...(chunk.message.tool_calls ?? [])];
      return orderKeys(
        { ...chunk, message: message(content, thinking, calls.length > 0 ? calls : undefined) },
        CHAT_KEYS,
      );
    },
  });
};

function message(content: string, thinking: string, toolCalls: ToolCall[] | undefined): ChatMessage {
  const m: ChatMessage = { role: "assistant", content };
  if (thinking !== "") m.thinking = thinking;
  if (toolCalls && toolCalls.length > 0) m.tool_calls = toolCalls;
  return m;
}
