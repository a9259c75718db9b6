/**
 * The installed models (what /api/tags lists): lookup is case-insensitive on the fully-qualified
 * name; pull, copy and delete change the set at run time.
 */
import { resolveModelSpec, type ResolvedModel, type SimModelSpec } from "./catalog.js";
import { displayName, nameKey, parseModelName, type ModelName } from "./model-name.js";

/** One installed model. */
export interface InstalledModel {
  readonly name: ModelName;
  /** Display form (`llama3.2:latest`): the `name`/`model` field of /api/tags. */
  readonly display: string;
  readonly spec: ResolvedModel;
  /** Epoch milliseconds of the last pull/copy. */
  readonly modifiedAt: number;
}

/** Mutable set of installed models. */
export interface ModelStore {
  /** Finds a model by raw name (case-insensitive, `:latest` default); undefined if absent or invalid. */
  find(name: string | ModelName): InstalledModel | undefined;
  /** Installed models, most recently modified first. */
  list(): InstalledModel[];
  /** Installs or replaces a model under `name`, stamping it modified now (or at `modifiedAt`). */
  install(name: ModelName, spec: ResolvedModel, modifiedAt?: number): InstalledModel;
  /** Removes a model; false if it was not installed. */
  remove(name: ModelName): boolean;
}

/** Builds a store from specs; earlier specs get newer timestamps so the listing order is stable. */
export function createModelStore(specs: readonly SimModelSpec[], now = Date.now()): ModelStore {
  const models = new Map<string, InstalledModel>();
  const store: ModelStore = {
    find(name) {
      const parsed = typeof name === "string" ? parseModelName(name) : name;
      return parsed ? models.get(nameKey(parsed)) : undefined;
    },
    list() {
      return [...models.values()].sort((a, b) => b.modifiedAt - a.modifiedAt);
    },
    install(name, spec, modifiedAt = Date.now()) {
      const entry: InstalledModel = { name, display: displayName(name), spec, modifiedAt };
      models.set(nameKey(name), entry);
      return entry;
    },
    remove(name) {
      return models.delete(nameKey(name));
    },
  };
  specs.forEach((raw, index) => {
    const spec = resolveModelSpec(raw);
    const name = parseModelName(spec.name);
    if (name) store.install(name, spec, now - index * 3_600_000);
  });
  return store;
}
