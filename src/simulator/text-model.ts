/**
 * The simulated language model: a deterministic function from (model, prompt, seed, options)
 * to thinking tokens, content tokens and tool calls. Same input ⇒ same output, so tests can
 * assert exact text; different prompts give different text.
 *
 * Rules (kept simple on purpose):
 * - Content is English-looking word tokens (" the", " quick"…), one token per stream chunk;
 *   natural length 8–40 tokens (`done_reason: "stop"`).
 * - `options.num_predict` ≥ 0 makes the model produce exactly that many tokens in total
 *   (thinking + content) and report `done_reason: "length"`, so tests can ask for long streams.
 * - `options.stop` cuts the content before the first stop string (`done_reason: "stop"`).
 * - Thinking models emit 6–20 thinking tokens first unless `think` is false (levels scale it).
 * - Tools: if the last message is from the user and mentions a tool's function name (or the name
 *   with `_` read as spaces, case-insensitive), the answer is one call to the first such tool,
 *   with arguments built from its JSON schema (strings: a word from the prompt, numbers: 1,
 *   booleans: true, enums: the first value).
 * - `format: "json"` or a JSON schema makes the content a JSON document.
 */
import { createRng, fnv1a, type Rng } from "./prng.js";

/** `think` after validation. */
export type ThinkSetting = boolean | "low" | "medium" | "high" | "max";

/** A tool offered by the request (`tools[].function`). */
export interface ToolSpec {
  readonly name: string;
  readonly parameters: unknown;
}

/** A tool call as Ollama returns it. */
export interface ToolCall {
  readonly id: string;
  readonly function: { readonly index: number; readonly name: string; readonly arguments: Record<string, unknown> };
}

/** Everything that determines the output. */
export interface CompletionInput {
  /** Stable model identity (digest or canonical name). */
  readonly model: string;
  /** Text the output is derived from (rendered prompt or serialized messages). */
  readonly prompt: string;
  /** Text of the last message (for tool matching and argument words). */
  readonly lastMessage: string;
  /** Role of the last message ("user" for generate). */
  readonly lastRole: string;
  readonly tools: readonly ToolSpec[];
  /** Whether to think (already defaulted: true for thinking models when absent). */
  readonly think: ThinkSetting;
  readonly numPredict: number | undefined;
  readonly stop: readonly string[];
  readonly seed: number | undefined;
  /** `"json"`, a JSON-schema object, or undefined. */
  readonly format: unknown;
}

/** The tokens a completion will stream. */
export interface CompletionPlan {
  readonly thinking: readonly string[];
  readonly content: readonly string[];
  readonly toolCalls: readonly ToolCall[];
  readonly doneReason: "stop" | "length";
  /** Tokens the tool-call chunk accounts for in eval_count. */
  readonly toolCallTokens: number;
}

const WORDS = [
  "the",
  "a",
  "model",
  "answer",
  "question",
  "simple",
  "quick",
  "brown",
  "fox",
  "jumps",
  "over",
  "lazy",
  "dog",
  "data",
  "server",
  "stream",
  "token",
  "response",
  "request",
  "system",
  "local",
  "network",
  "value",
  "result",
  "first",
  "second",
  "next",
  "small",
  "large",
  "fast",
  "careful",
  "clear",
  "useful",
  "common",
  "good",
  "new",
  "is",
  "are",
  "was",
  "can",
  "will",
  "should",
  "might",
  "helps",
  "shows",
  "makes",
  "takes",
  "gives",
  "finds",
  "uses",
  "runs",
  "reads",
  "writes",
  "returns",
  "keeps",
  "starts",
  "ends",
  "works",
  "and",
  "or",
  "but",
  "so",
  "because",
  "when",
  "while",
  "with",
  "without",
  "for",
  "from",
  "into",
  "about",
  "between",
  "after",
  "before",
  "this",
  "that",
  "these",
  "each",
  "every",
  "some",
  "many",
  "most",
  "other",
  "same",
  "different",
  "example",
  "idea",
  "process",
  "method",
  "reason",
  "way",
  "time",
  "part",
  "point",
  "case",
  "step",
  "word",
  "line",
  "text",
  "context",
  "memory",
  "cache",
  "queue",
  "slot",
  "node",
  "gateway",
  "client",
  "user",
  "world",
  "river",
  "mountain",
  "light",
  "sound",
  "color",
  "number",
  "story",
  "garden",
  "window",
  "table",
  "book",
  "letter",
  "journey",
];

const THINK_WORDS = [
  "the",
  "user",
  "wants",
  "asks",
  "about",
  "maybe",
  "first",
  "check",
  "consider",
  "whether",
  "answer",
  "should",
  "be",
  "short",
  "clear",
  "and",
  "then",
  "explain",
  "details",
  "so",
  "I",
  "need",
  "to",
  "think",
  "carefully",
  "what",
  "they",
  "mean",
  "here",
  "probably",
  "simple",
  "response",
  "works",
  "best",
];

const STOPWORDS = new Set([
  "a",
  "an",
  "the",
  "is",
  "are",
  "was",
  "be",
  "to",
  "of",
  "in",
  "on",
  "at",
  "for",
  "and",
  "or",
  "with",
  "what",
  "whats",
  "what's",
  "how",
  "please",
  "can",
  "could",
  "you",
  "me",
  "my",
  "i",
  "it",
  "use",
  "call",
  "using",
  "tool",
  "function",
  "tell",
  "give",
  "get",
  "show",
  "find",
  "now",
  "today",
  "do",
  "does",
  "is",
  "like",
  "about",
]);

/** Whitespace-separated words in a text (the simulator's notion of tokens for prompt counts). */
export function countWords(text: string): number {
  const trimmed = text.trim();
  return trimmed === "" ? 0 : trimmed.split(/\s+/).length;
}

/** Deterministic token ids for `context` arrays. */
export function tokenIds(text: string): number[] {
  const trimmed = text.trim();
  if (trimmed === "") return [];
  return trimmed.split(/\s+/).map((word) => 100 + (fnv1a(word) % 128_000));
}

/** Plans a completion. Pure and deterministic. */
export function planCompletion(input: CompletionInput): CompletionPlan {
  const rng = createRng("completion", input.model, input.prompt, input.seed ?? null);
  const words = createRng("words", input.model, input.prompt, input.seed ?? null);
  const budget = input.numPredict;
  const thinking =
    input.think === false
      ? []
      : thinkingTokens(createRng("thinking", input.model, input.prompt, input.seed ?? null), input.think);
  if (budget !== undefined && thinking.length > budget) {
    return { thinking: thinking.slice(0, budget), content: [], toolCalls: [], doneReason: "length", toolCallTokens: 0 };
  }
  const remaining = budget === undefined ? undefined : budget - thinking.length;

  const tool = pickTool(input);
  if (tool) {
    const call: ToolCall = {
      id: `call_${idChars(rng, 8)}`,
      function: {
        index: 0,
        name: tool.name,
        arguments: buildValue(tool.parameters, argumentWords(input), rng) as Record<string, unknown>,
      },
    };
    const tokens = Math.max(1, Math.ceil(JSON.stringify(call.function).length / 4));
    return { thinking, content: [], toolCalls: [call], doneReason: "stop", toolCallTokens: tokens };
  }

  let content: string[];
  let doneReason: "stop" | "length" = "stop";
  if (input.format !== undefined) {
    content = jsonTokens(JSON.stringify(formatDocument(input.format, rng)));
    if (remaining !== undefined && content.length > remaining) {
      content = content.slice(0, remaining);
      doneReason = "length";
    }
  } else if (remaining !== undefined) {
    content = proseTokens(words, remaining, false);
    doneReason = "length";
  } else {
    content = proseTokens(words, rng.int(8, 40), true);
  }

  const cut = applyStop(content, input.stop);
  if (cut) {
    content = cut;
    doneReason = "stop";
  }
  return { thinking, content, toolCalls: [], doneReason, toolCallTokens: 0 };
}

function thinkingTokens(rng: Rng, think: ThinkSetting): string[] {
  const scale = think === "low" ? 0.5 : think === "high" ? 1.5 : think === "max" ? 2 : 1;
  const count = Math.max(4, Math.round(rng.int(6, 20) * scale));
  const tokens = ["Okay", ",", " the", " user"];
  while (tokens.length < count) tokens.push(` ${rng.pick(THINK_WORDS)}`);
  tokens.length = count;
  tokens[tokens.length - 1] = `${tokens[tokens.length - 1] ?? ""}.`.replace(/\.\.$/, ".");
  return tokens;
}

/**
 * Word tokens. Token i depends only on the seed and i, so a shorter answer (num_predict) is a
 * prefix of a longer one; only a natural end (`finished`) closes the last sentence with a period.
 */
function proseTokens(rng: Rng, count: number, finished: boolean): string[] {
  const tokens: string[] = [];
  let sentenceLeft = rng.int(5, 12);
  let capitalize = true;
  for (let i = 0; i < count; i++) {
    let word = rng.pick(WORDS);
    if (capitalize) word = word.charAt(0).toUpperCase() + word.slice(1);
    capitalize = false;
    sentenceLeft--;
    if (sentenceLeft === 0) {
      const comma = rng.next() < 0.15;
      word += comma ? "," : ".";
      capitalize = !comma;
      sentenceLeft = rng.int(5, 12);
    }
    tokens.push(i === 0 ? word : ` ${word}`);
  }
  const last = tokens.length - 1;
  if (finished && last >= 0) tokens[last] = `${(tokens[last] ?? "").replace(/[.,]$/, "")}.`;
  return tokens;
}

/** Cuts tokens before the first stop string; undefined when no stop string occurs. */
function applyStop(tokens: readonly string[], stops: readonly string[]): string[] | undefined {
  if (stops.length === 0) return undefined;
  const text = tokens.join("");
  let at = -1;
  for (const stop of stops) {
    const i = text.indexOf(stop);
    if (i >= 0 && (at < 0 || i < at)) at = i;
  }
  if (at < 0) return undefined;
  const out: string[] = [];
  let used = 0;
  for (const token of tokens) {
    if (used + token.length <= at) {
      out.push(token);
      used += token.length;
      continue;
    }
    const partial = token.slice(0, at - used);
    if (partial !== "") out.push(partial);
    break;
  }
  return out;
}

function pickTool(input: CompletionInput): ToolSpec | undefined {
  if (input.tools.length === 0 || input.lastRole !== "user") return undefined;
  const text = input.lastMessage.toLowerCase();
  return input.tools.find((tool) => {
    const name = tool.name.toLowerCase();
    return name !== "" && (text.includes(name) || text.includes(name.replace(/_/g, " ")));
  });
}

function argumentWords(input: CompletionInput): string[] {
  const toolNames = new Set(input.tools.map((t) => t.name.toLowerCase()));
  const words = input.lastMessage
    .split(/\s+/)
    .map((w) => w.replace(/^[^\p{L}\p{N}]+|[^\p{L}\p{N}]+$/gu, ""))
    .filter((w) => w !== "" && !toolNames.has(w.toLowerCase()) && !STOPWORDS.has(w.toLowerCase()));
  const capitalized = words.filter((w, i) => i > 0 && /^\p{Lu}/u.test(w));
  return capitalized.length > 0 ? capitalized : words;
}

/** Builds a value that satisfies a (simple) JSON schema, deterministically. */
function buildValue(schema: unknown, words: readonly string[], rng: Rng): unknown {
  const s = typeof schema === "object" && schema !== null ? (schema as Record<string, unknown>) : {};
  if (Array.isArray(s.enum) && s.enum.length > 0) return s.enum[0];
  const type = Array.isArray(s.type) ? s.type.find((t) => t !== "null") : s.type;
  const properties =
    typeof s.properties === "object" && s.properties !== null ? (s.properties as Record<string, unknown>) : undefined;
  if (type === "object" || (type === undefined && properties)) {
    const out: Record<string, unknown> = {};
    if (!properties) return out;
    const required = Array.isArray(s.required) ? s.required.filter((r): r is string => typeof r === "string") : [];
    const keys =
      required.length > 0 ? Object.keys(properties).filter((k) => required.includes(k)) : Object.keys(properties);
    for (const key of required) if (!keys.includes(key)) keys.push(key);
    for (const key of keys) out[key] = buildValue(properties[key], words, rng);
    return out;
  }
  switch (type) {
    case "integer":
    case "number":
      return 1;
    case "boolean":
      return true;
    case "array":
      return [];
    case "null":
      return null;
    default:
      return words.length > 0 ? (words[words.length - 1] ?? "example") : "example";
  }
}

function formatDocument(format: unknown, rng: Rng): unknown {
  if (typeof format === "object" && format !== null) {
    const words = proseTokens(rng, 6, false).map((t) => t.trim().replace(/[.,]$/, ""));
    return buildValue(format, words, rng);
  }
  return { response: proseTokens(rng, rng.int(5, 12), true).join("") };
}

function jsonTokens(text: string): string[] {
  return text.match(/[A-Za-z0-9_]+|\s+|[^A-Za-z0-9_\s]/g) ?? [];
}

function idChars(rng: Rng, count: number): string {
  const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789";
  let out = "";
  for (let i = 0; i < count; i++) out += alphabet.charAt(rng.int(0, alphabet.length - 1));
  return out;
}
