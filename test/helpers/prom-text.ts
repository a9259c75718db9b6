// Reads the Prometheus text exposition format, so specs can check a /metrics page series by
// series without a Prometheus server (the Prometheus spec checks the same through a real one).

/** One sample: metric name (with _bucket/_sum/_count suffixes), labels and value. */
export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** A parsed page: its samples and the `# TYPE` of each metric family. */
export interface PromPage {
  samples: Sample[];
  types: Map<string, string>;
  /** Samples named `name` whose labels include every pair of `labels`. */
  find(name: string, labels?: Record<string, string>): Sample[];
  /** The sum of the values of `find(name, labels)` (0 when none). */
  sum(name: string, labels?: Record<string, string>): number;
}

function parseLabels(text: string): Record<string, string> {
  const labels: Record<string, string> = {};
  const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
  for (let m = re.exec(text); m !== null; m = re.exec(text)) {
    labels[m[1]!] = m[2]!.replace(/\\n/g, "\n").replace(/\\"/g, '"').replace(/\\\\/g, "\\");
  }
  return labels;
}

function parseValue(text: string): number {
  if (text === "+Inf") return Number.POSITIVE_INFINITY;
  if (text === "-Inf") return Number.NEGATIVE_INFINITY;
  return Number(text);
}

/** Parses a page of the text format (version 0.0.4). */
export function parsePromText(text: string): PromPage {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "") continue;
    if (line.startsWith("#")) {
      const m = /^# TYPE (\S+) (\S+)/.exec(line);
      if (m) types.set(m[1]!, m[2]!);
      continue;
    }
    const brace = line.indexOf("{");
    const space = line.lastIndexOf(" ");
    if (brace !== -1 && brace < space) {
      const close = line.lastIndexOf("}");
      samples.push({
        name: line.slice(0, brace),
        labels: parseLabels(line.slice(brace + 1, close)),
        value: parseValue(
          line
            .slice(close + 1)
            .trim()
            .split(" ")[0]!,
        ),
      });
    } else {
      const [name, value] = line.split(/\s+/);
      samples.push({ name: name!, labels: {}, value: parseValue(value!) });
    }
  }
  const find = (name: string, labels: Record<string, string> = {}): Sample[] =>
    samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  return {
    samples,
    types,
    find,
    sum: (name, labels) => find(name, labels).reduce((n, s) => n + s.value, 0),
  };
}

/** Fetches and parses a /metrics page. */
export async function scrape(url: string): Promise<PromPage> {
  const res = await fetch(url);
  if (res.status !== 200) throw new Error(`GET ${url}: ${res.status} ${await res.text()}`);
  return parsePromText(await res.text());
}
