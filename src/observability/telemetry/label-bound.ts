/** The label value every value past the bound (or not known to be real) is counted under. */
export const OTHER_LABEL = "other";

/**
 * Bounds the distinct values of one metric label (models, principals), so a client cannot create
 * series without end by sending made-up names (README, "Operating it", Metrics). A value gets its
 * own label once it is *admitted*; at most `max` values ever are, the first come; every other
 * value is counted as `other`. With `admitOnSight` any value is admitted when first labelled
 * (principals: authentication already vouched for them); without it only `admit` does
 * (models: admitted once the fleet served, queued or loaded them, so a mistyped name never
 * takes a slot). The empty value (no model, no principal) stays empty.
 */
export interface LabelBound {
  /** Marks `value` as real: it gets its own label if fewer than `max` values have one. */
  admit(value: string): void;
  /** The label to count `value` under: itself when admitted, else `other` ("" stays ""). */
  label(value: string): string;
  /** Values admitted so far. */
  readonly size: number;
  /** The admitted values, in the order they were admitted. */
  values(): IterableIterator<string>;
}

/** Creates a bound of `max` distinct values (at least 1). */
export function createLabelBound(max: number, options: { admitOnSight: boolean }): LabelBound {
  const admitted = new Set<string>();
  const admit = (value: string): void => {
    if (value !== "" && value !== OTHER_LABEL && admitted.size < max) admitted.add(value);
  };
  return {
    admit,
    label(value) {
      if (value === "" || admitted.has(value)) return value;
      if (options.admitOnSight) {
        admit(value);
        if (admitted.has(value)) return value;
      }
      return OTHER_LABEL;
    },
    get size() {
      return admitted.size;
    },
    values: () => admitted.values(),
  };
}

/**
 * Memoises a pure string function (model-name canonicalisation) for label lookups on the hot
 * path, keeping at most `max` entries: past that, values are computed each time instead of
 * remembered, so made-up names cannot grow it.
 */
export function memoised(fn: (value: string) => string, max: number): (value: string) => string {
  const memo = new Map<string, string>();
  return (value) => {
    let out = memo.get(value);
    if (out === undefined) {
      out = fn(value);
      if (memo.size < max) memo.set(value, out);
    }
    return out;
  };
}
