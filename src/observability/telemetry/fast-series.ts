import type { Aggregator, Registry } from "prom-client";

/**
 * Counters and histograms for the per-call path, registered in a prom-client Registry like any
 * other metric (same text format, same cluster aggregation) but cheaper to update: a series is a
 * plain object resolved once and kept by the caller, and updating it is an addition (and, for a
 * histogram, a bucket search), where prom-client's own children hash their label set on every
 * `inc` and `observe`. The gateway counts several series per call (README, "Operating it"), so
 * this is what keeps metrics within their share of the per-call CPU.
 */

/** One counter series. */
export interface CounterSeries {
  /** Adds `value` (default 1); must not be negative. */
  inc(value?: number): void;
}

/** One histogram series. */
export interface HistogramSeries {
  /** Records one observation. */
  observe(value: number): void;
}

/** A counter family: one series per combination of label values. */
export interface FastCounter {
  /** The series of these label values (in `labelNames` order), created at first use. */
  series(...values: string[]): CounterSeries;
}

/** A histogram family. */
export interface FastHistogram {
  /** The series of these label values (in `labelNames` order), created at first use. */
  series(...values: string[]): HistogramSeries;
}

/** What a family is registered with. */
export interface FamilyOptions {
  registry: Registry;
  name: string;
  help: string;
  labelNames: readonly string[];
  /** How node:cluster workers' values combine. @default "sum" */
  aggregator?: Aggregator;
}

interface MetricValue {
  labels: Record<string, string | number>;
  value: number;
  metricName?: string;
}

function labelsOf(names: readonly string[], values: readonly string[]): Record<string, string> {
  if (values.length !== names.length) {
    throw new Error(`expected ${names.length} label values (${names.join(", ")}), got ${values.length}`);
  }
  const labels: Record<string, string> = {};
  names.forEach((n, i) => {
    labels[n] = values[i]!;
  });
  return labels;
}

/** A key for a combination of label values (values never contain NUL). */
const keyOf = (values: readonly string[]): string => values.join("\u0000");

/** Registers a counter family. */
export function fastCounter(options: FamilyOptions): FastCounter {
  const all = new Map<string, { labels: Record<string, string>; value: number }>();
  options.registry.registerMetric({
    name: options.name,
    help: options.help,
    type: "counter",
    aggregator: options.aggregator ?? "sum",
    collect: () => undefined,
    get: async () => ({
      name: options.name,
      help: options.help,
      type: "counter",
      aggregator: options.aggregator ?? "sum",
      values: [...all.values()].map((s): MetricValue => ({ labels: s.labels, value: s.value })),
    }),
    reset: () => {
      for (const s of all.values()) s.value = 0;
    },
  } as unknown as Parameters<Registry["registerMetric"]>[0]);
  return {
    series(...values) {
      const key = keyOf(values);
      let s = all.get(key);
      if (s === undefined) {
        const created = { labels: labelsOf(options.labelNames, values), value: 0 };
        all.set(key, created);
        s = created;
      }
      const state = s;
      return {
        inc(value = 1) {
          state.value += value;
        },
      };
    },
  };
}

/** Registers a histogram family with these bucket upper bounds (ascending; +Inf is added). */
export function fastHistogram(options: FamilyOptions & { buckets: readonly number[] }): FastHistogram {
  const bounds = [...options.buckets];
  for (let i = 1; i < bounds.length; i++) {
    if (!(bounds[i]! > bounds[i - 1]!)) throw new Error(`${options.name}: buckets must ascend`);
  }
  interface State {
    labels: Record<string, string>;
    /** Observations per bucket, not cumulative; the last one is +Inf. */
    counts: Float64Array;
    sum: number;
    count: number;
  }
  const all = new Map<string, State>();
  const values = (): MetricValue[] => {
    const out: MetricValue[] = [];
    const bucket = `${options.name}_bucket`;
    for (const s of all.values()) {
      let acc = 0;
      bounds.forEach((le, i) => {
        acc += s.counts[i]!;
        out.push({ metricName: bucket, labels: { ...s.labels, le }, value: acc });
      });
      out.push({ metricName: bucket, labels: { ...s.labels, le: "+Inf" }, value: s.count });
      out.push({ metricName: `${options.name}_sum`, labels: s.labels, value: s.sum });
      out.push({ metricName: `${options.name}_count`, labels: s.labels, value: s.count });
    }
    return out;
  };
  options.registry.registerMetric({
    name: options.name,
    help: options.help,
    type: "histogram",
    aggregator: options.aggregator ?? "sum",
    collect: () => undefined,
    get: async () => ({
      name: options.name,
      help: options.help,
      type: "histogram",
      aggregator: options.aggregator ?? "sum",
      values: values(),
    }),
    reset: () => {
      for (const s of all.values()) {
        s.counts.fill(0);
        s.sum = 0;
        s.count = 0;
      }
    },
  } as unknown as Parameters<Registry["registerMetric"]>[0]);
  return {
    series(...labelValues) {
      const key = keyOf(labelValues);
      let s = all.get(key);
      if (s === undefined) {
        const created: State = {
          labels: labelsOf(options.labelNames, labelValues),
          counts: new Float64Array(bounds.length + 1),
          sum: 0,
          count: 0,
        };
        all.set(key, created);
        s = created;
      }
      const state = s;
      return {
        observe(value) {
          if (!Number.isFinite(value)) return;
          let i = 0;
          while (i < bounds.length && value > bounds[i]!) i++;
          state.counts[i]++;
          state.sum += value;
          state.count++;
        },
      };
    },
  };
}
