/**
 * Model specifications: what the simulator reports for each model (tags, show, ps) and how it
 * behaves (capabilities, context length, embedding size). Specs are partial; `resolveModelSpec`
 * fills plausible defaults so a test can declare `{ name: "foo", capabilities: ["completion"] }`.
 */
import { displayName, parseModelName } from "./model-name.js";
import { sha256Hex } from "./prng.js";

/** Ollama capability strings (`types/model`). */
export type Capability = "completion" | "tools" | "insert" | "vision" | "embedding" | "thinking" | "audio" | "image";

const ALL_CAPABILITIES: readonly Capability[] = [
  "completion",
  "tools",
  "insert",
  "vision",
  "embedding",
  "thinking",
  "audio",
  "image",
];

/** A model the simulator can serve or pull; every field but `name` is optional. */
export interface SimModelSpec {
  /** Model name as a user would type it (`llama3.2`, `qwen3:8b`); `:latest` is implied. */
  name: string;
  /** Capabilities; default inferred from the name (see `inferCapabilities`). */
  capabilities?: readonly Capability[];
  /** 64-hex manifest digest; default sha256 hex of the display name. */
  digest?: string;
  /** Bytes on disk. */
  size?: number;
  /** GGUF architecture used in `model_info` keys (`llama`, `qwen3`, `bert`…). */
  architecture?: string;
  family?: string;
  families?: readonly string[] | null;
  parameterSize?: string;
  quantizationLevel?: string;
  format?: string;
  /** Trained context length (`<arch>.context_length`); num_ctx is capped to it. */
  contextLength?: number;
  /** Hidden size; also the embedding vector length returned by /api/embed. */
  embeddingLength?: number;
  template?: string;
  license?: string;
  system?: string;
  /** Modelfile PARAMETERs, e.g. `{ stop: ["<|eot_id|>"], temperature: 0.6 }`. */
  parameters?: Readonly<Record<string, unknown>>;
  /** Extra simulated load time for this model in ms (added to the simulator's loadMs). */
  extraLoadMs?: number;
}

/** A spec with every field filled in. */
export interface ResolvedModel {
  readonly name: string;
  readonly capabilities: readonly Capability[];
  readonly digest: string;
  readonly size: number;
  readonly architecture: string;
  readonly family: string;
  readonly families: readonly string[] | null;
  readonly parameterSize: string;
  readonly parameterCount: number;
  readonly quantizationLevel: string;
  readonly format: string;
  readonly contextLength: number;
  readonly embeddingLength: number;
  readonly template: string;
  readonly license: string;
  readonly system: string;
  readonly parameters: Readonly<Record<string, unknown>>;
  readonly extraLoadMs: number;
  /** Bytes of KV cache per context token, used for the /api/ps `size`. */
  readonly kvBytesPerToken: number;
}

const LLAMA3_TEMPLATE = `<|start_header_id|>system<|end_header_id|>

Cutting Knowledge Date: December 2023

{{ if .System }}{{ .System }}{{ end }}<|eot_id|>{{ range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>

`;

const CHATML_TEMPLATE = `{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ if .Think }}<think>
{{ end }}`;

const PLAIN_TEMPLATE = "{{ .Prompt }}";

/** The catalog a simulator starts with when no `models` option is given. */
export function defaultCatalog(): SimModelSpec[] {
  return [
    {
      name: "llama3.2:latest",
      capabilities: ["completion", "tools"],
      size: 2019393189,
      architecture: "llama",
      family: "llama",
      families: ["llama"],
      parameterSize: "3.2B",
      quantizationLevel: "Q4_K_M",
      contextLength: 131072,
      embeddingLength: 3072,
      template: LLAMA3_TEMPLATE,
      license: "LLAMA 3.2 COMMUNITY LICENSE AGREEMENT\nLlama 3.2 Version Release Date: September 25, 2024",
      parameters: { stop: ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"] },
    },
    {
      name: "qwen3:latest",
      capabilities: ["completion", "tools", "thinking"],
      size: 5225376047,
      architecture: "qwen3",
      family: "qwen3",
      families: ["qwen3"],
      parameterSize: "8.2B",
      quantizationLevel: "Q4_K_M",
      contextLength: 40960,
      embeddingLength: 4096,
      template: CHATML_TEMPLATE,
      license: "Apache License\nVersion 2.0, January 2004\nhttp://www.apache.org/licenses/",
      parameters: { repeat_penalty: 1, stop: ["<|im_start|>", "<|im_end|>"], temperature: 0.6, top_k: 20, top_p: 0.95 },
    },
    {
      name: "all-minilm:latest",
      capabilities: ["embedding"],
      size: 45960996,
      architecture: "bert",
      family: "bert",
      families: ["bert"],
      parameterSize: "23M",
      quantizationLevel: "F16",
      contextLength: 512,
      embeddingLength: 384,
      template: PLAIN_TEMPLATE,
      license: "Apache License\nVersion 2.0, January 2004",
    },
    {
      name: "nomic-embed-text:latest",
      capabilities: ["embedding"],
      size: 274302450,
      architecture: "nomic-bert",
      family: "nomic-bert",
      families: ["nomic-bert"],
      parameterSize: "137M",
      quantizationLevel: "F16",
      contextLength: 2048,
      embeddingLength: 768,
      template: PLAIN_TEMPLATE,
      license: "Apache License\nVersion 2.0, January 2004",
      parameters: { num_ctx: 8192 },
    },
    {
      name: "llava:latest",
      capabilities: ["completion", "vision"],
      size: 4733363377,
      architecture: "llama",
      family: "llama",
      families: ["llama", "clip"],
      parameterSize: "7B",
      quantizationLevel: "Q4_0",
      contextLength: 32768,
      embeddingLength: 4096,
      template: "[INST] {{ if .System }}{{ .System }} {{ end }}{{ .Prompt }} [/INST]",
      license: "Apache License\nVersion 2.0, January 2004",
      parameters: { stop: ["[INST]", "[/INST]"] },
    },
  ];
}

/** Models `/api/pull` can fetch by default: the catalog plus a few extra well-known names. */
export function defaultRegistry(): SimModelSpec[] {
  return [
    ...defaultCatalog(),
    {
      name: "llama3.2:1b",
      capabilities: ["completion", "tools"],
      size: 1321098329,
      parameterSize: "1.2B",
      embeddingLength: 2048,
    },
    {
      name: "tinyllama:latest",
      capabilities: ["completion"],
      size: 637700138,
      parameterSize: "1B",
      contextLength: 2048,
      embeddingLength: 2048,
    },
    {
      name: "mistral:latest",
      capabilities: ["completion", "tools"],
      size: 4372824384,
      parameterSize: "7.2B",
      quantizationLevel: "Q4_0",
    },
    {
      name: "gemma3:latest",
      capabilities: ["completion", "vision"],
      size: 3338801804,
      architecture: "gemma3",
      parameterSize: "4.3B",
    },
    {
      name: "deepseek-r1:latest",
      capabilities: ["completion", "thinking"],
      size: 5225376047,
      architecture: "qwen3",
      parameterSize: "8.2B",
    },
    {
      name: "mxbai-embed-large:latest",
      capabilities: ["embedding"],
      size: 669615493,
      architecture: "bert",
      parameterSize: "334M",
      embeddingLength: 1024,
      contextLength: 512,
    },
    {
      name: "qwen2.5-coder:latest",
      capabilities: ["completion", "tools", "insert"],
      size: 4683087332,
      architecture: "qwen2",
      parameterSize: "7.6B",
    },
  ];
}

/**
 * Guesses capabilities from a well-known model name so `--models foo,bar` needs no extra flags:
 * embed/minilm/bge → embedding; qwen3/deepseek-r1/gpt-oss/magistral → thinking (+tools);
 * llava/vision/gemma3/moondream → vision; coder/starcoder/codellama → insert; llama3.x,
 * mistral, qwen2.5, command-r, granite… → tools. Everything that is not embedding-only completes.
 */
export function inferCapabilities(name: string): Capability[] {
  const n = name.toLowerCase();
  if (/(embed|minilm|bge-|^bge|e5-|gte-|snowflake-arctic-embed)/.test(n)) return ["embedding"];
  const caps: Capability[] = ["completion"];
  if (/(qwen3|deepseek-r1|gpt-oss|magistral|qwq|phi4-reasoning)/.test(n)) caps.push("tools", "thinking");
  else if (/(llama3\.[123]|mistral|qwen2\.5|qwen2|command-r|granite|firefunction|hermes|llama4|smollm2)/.test(n))
    caps.push("tools");
  if (/(coder|starcoder|codellama|codegemma|deepseek-coder)/.test(n)) caps.push("insert");
  if (/(llava|vision|gemma3|moondream|minicpm-v|bakllava|qwen2\.5vl|qwen3-vl)/.test(n)) caps.push("vision");
  return [...new Set(caps)];
}

/**
 * Parses a CLI model entry: `name` or `name=cap1+cap2` (e.g. `my-model:7b=completion+tools`).
 * Throws on unknown capability names so typos fail loudly.
 */
export function parseModelEntry(entry: string): SimModelSpec {
  const [rawName = "", caps] = entry.split("=", 2);
  const name = rawName.trim();
  if (name === "") throw new Error(`empty model name in ${JSON.stringify(entry)}`);
  if (caps === undefined) return { name };
  const list = caps
    .split("+")
    .map((c) => c.trim())
    .filter((c) => c !== "");
  for (const c of list) {
    if (!(ALL_CAPABILITIES as readonly string[]).includes(c)) {
      throw new Error(
        `unknown capability ${JSON.stringify(c)} for model ${name} (known: ${ALL_CAPABILITIES.join(", ")})`,
      );
    }
  }
  return { name, capabilities: list as Capability[] };
}

/** Fills defaults; throws if the name is not a valid Ollama model name. */
export function resolveModelSpec(spec: SimModelSpec): ResolvedModel {
  const parsed = parseModelName(spec.name);
  if (!parsed) throw new Error(`invalid model name ${JSON.stringify(spec.name)}`);
  const name = displayName(parsed);
  const capabilities = spec.capabilities ? [...spec.capabilities] : inferCapabilities(parsed.model);
  const embeddingOnly = capabilities.includes("embedding") && !capabilities.includes("completion");
  const architecture = spec.architecture ?? spec.family ?? guessArchitecture(parsed.model, embeddingOnly);
  const parameterSize = spec.parameterSize ?? (embeddingOnly ? "137M" : "3.2B");
  const parameterCount = parseParameterSize(parameterSize);
  const embeddingLength = spec.embeddingLength ?? (embeddingOnly ? 768 : 3072);
  return {
    name,
    capabilities,
    digest: spec.digest ?? sha256Hex(name),
    size: spec.size ?? Math.round(parameterCount * (embeddingOnly ? 2 : 0.6)),
    architecture,
    family: spec.family ?? architecture,
    families: spec.families === undefined ? [spec.family ?? architecture] : spec.families,
    parameterSize,
    parameterCount,
    quantizationLevel: spec.quantizationLevel ?? (embeddingOnly ? "F16" : "Q4_K_M"),
    format: spec.format ?? "gguf",
    contextLength: spec.contextLength ?? (embeddingOnly ? 2048 : 131072),
    embeddingLength,
    template: spec.template ?? (embeddingOnly ? PLAIN_TEMPLATE : LLAMA3_TEMPLATE),
    license: spec.license ?? "",
    system: spec.system ?? "",
    parameters: spec.parameters ?? {},
    extraLoadMs: spec.extraLoadMs ?? 0,
    kvBytesPerToken: embeddingOnly ? 2048 : Math.max(16384, embeddingLength * 36),
  };
}

function guessArchitecture(model: string, embeddingOnly: boolean): string {
  const m = model.toLowerCase();
  if (embeddingOnly) return m.includes("nomic") ? "nomic-bert" : "bert";
  const prefixes: ReadonlyArray<readonly [string, string]> = [
    ["qwen3", "qwen3"],
    ["qwen2", "qwen2"],
    ["deepseek-r1", "qwen3"],
    ["gemma3", "gemma3"],
    ["gemma", "gemma2"],
    ["phi", "phi3"],
    ["granite", "granite"],
  ];
  for (const [prefix, arch] of prefixes) if (m.startsWith(prefix)) return arch;
  return "llama";
}

function parseParameterSize(text: string): number {
  const match = /^([\d.]+)\s*([KMBT]?)/i.exec(text);
  if (!match) return 3e9;
  const value = Number(match[1]);
  const unit = (match[2] ?? "").toUpperCase();
  const scale = unit === "K" ? 1e3 : unit === "M" ? 1e6 : unit === "B" ? 1e9 : unit === "T" ? 1e12 : 1;
  return Math.round(value * scale);
}

/** Capability strings in the order Ollama lists them. */
export function sortCapabilities(caps: readonly Capability[]): Capability[] {
  return ALL_CAPABILITIES.filter((c) => caps.includes(c));
}
