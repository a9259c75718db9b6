/**
 * Public entry point of the Ollama simulator: import from here in tests and tools.
 */
export { startSimulator, type Simulator } from "./simulator.js";
export {
  resolveOptions,
  parseCliArgs,
  parseBytes,
  CLI_USAGE,
  type SimulatorOptions,
  type ResolvedSimulatorOptions,
} from "./options.js";
export {
  defaultCatalog,
  defaultRegistry,
  inferCapabilities,
  parseModelEntry,
  resolveModelSpec,
  type Capability,
  type ResolvedModel,
  type SimModelSpec,
} from "./catalog.js";
export {
  parseFault,
  parseFaultSpecs,
  type ActiveFault,
  type Fault,
  type FaultInjector,
  type FaultKind,
  type FaultScope,
} from "./faults.js";
export type { SimulatorStats } from "./stats.js";
export type {
  DisconnectEvent,
  LoadEvent,
  RequestEvent,
  SimulatorEventMap,
  SimulatorEvents,
  UnloadEvent,
  UnloadReason,
} from "./events.js";
export type { LoadedRunner } from "./scheduler.js";
export { PROMPT_TOO_LONG_MESSAGE, SERVER_BUSY_MESSAGE } from "./errors.js";
export { cosine } from "./embedding.js";
