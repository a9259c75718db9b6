/**
 * Ollama's metadata answers (/api/tags, /api/show, /api/ps), parsed
 * defensively: optional fields may be missing on older servers, and a
 * malformed entry is skipped rather than failing the whole list.
 */

/** `details` of a model, as in /api/tags, /api/show and /api/ps. */
export interface OllamaDetails {
  format: string;
  family: string;
  families: string[];
  parameterSize: string;
  quantizationLevel: string;
  parentModel: string;
  contextLength: number;
  embeddingLength: number;
}

/** One installed model from /api/tags. */
export interface OllamaTag {
  /** Name with tag as the node lists it. */
  name: string;
  /** 64-hex manifest digest. */
  digest: string;
  size: number;
  modifiedAt: string;
  details: OllamaDetails;
  capabilities: string[];
}

/** One loaded model from /api/ps. */
export interface OllamaRunning {
  name: string;
  digest: string;
  size: number;
  sizeVram: number;
  expiresAt: string;
  contextLength: number;
  details: OllamaDetails;
}

/** The /api/show answer, with the fields the gateway exposes. */
export interface OllamaShow {
  license: string;
  modelfile: string;
  parameters: string;
  template: string;
  system: string;
  details: OllamaDetails;
  modelInfo: Record<string, unknown>;
  capabilities: string[];
  modifiedAt: string;
}

/** Parses /api/tags. */
export function parseTags(raw: unknown): OllamaTag[] {
  return list(raw, "models").flatMap((m) => {
    const name = str(m["name"]) || str(m["model"]);
    if (name === "") return [];
    return [
      {
        name,
        digest: str(m["digest"]).replace(/^sha256:/, ""),
        size: num(m["size"]),
        modifiedAt: str(m["modified_at"]),
        details: details(m["details"]),
        capabilities: strings(m["capabilities"]),
      },
    ];
  });
}

/** Parses /api/ps. */
export function parsePs(raw: unknown): OllamaRunning[] {
  return list(raw, "models").flatMap((m) => {
    const name = str(m["name"]) || str(m["model"]);
    if (name === "") return [];
    return [
      {
        name,
        digest: str(m["digest"]).replace(/^sha256:/, ""),
        size: num(m["size"]),
        sizeVram: num(m["size_vram"]),
        expiresAt: str(m["expires_at"]),
        contextLength: num(m["context_length"]),
        details: details(m["details"]),
      },
    ];
  });
}

/** Parses /api/show. */
export function parseShow(raw: unknown): OllamaShow {
  const m = obj(raw);
  return {
    license: Array.isArray(m["license"]) ? strings(m["license"]).join("\n") : str(m["license"]),
    modelfile: str(m["modelfile"]),
    parameters: str(m["parameters"]),
    template: str(m["template"]),
    system: str(m["system"]),
    details: details(m["details"]),
    modelInfo: obj(m["model_info"]),
    capabilities: strings(m["capabilities"]),
    modifiedAt: str(m["modified_at"]),
  };
}

function details(raw: unknown): OllamaDetails {
  const d = obj(raw);
  return {
    format: str(d["format"]),
    family: str(d["family"]),
    families: strings(d["families"]),
    parameterSize: str(d["parameter_size"]),
    quantizationLevel: str(d["quantization_level"]),
    parentModel: str(d["parent_model"]),
    contextLength: num(d["context_length"]),
    embeddingLength: num(d["embedding_length"]),
  };
}

function list(raw: unknown, key: string): Record<string, unknown>[] {
  const v = obj(raw)[key];
  return Array.isArray(v) ? v.filter(isObj) : [];
}

function obj(v: unknown): Record<string, unknown> {
  return isObj(v) ? v : {};
}

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function str(v: unknown): string {
  return typeof v === "string" ? v : "";
}

function num(v: unknown): number {
  return typeof v === "number" && Number.isFinite(v) ? v : 0;
}

function strings(v: unknown): string[] {
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === "string") : [];
}
