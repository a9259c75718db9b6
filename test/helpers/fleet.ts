import { createClient, ConnectError } from "@connectrpc/connect";
import type { Client } from "@connectrpc/connect";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { InferenceService } from "../../src/gen/ollama/gateway/v1/inference_pb.js";
import type {
  GenerateRequest,
  GenerateRequestSchema,
  GenerateResponse,
} from "../../src/gen/ollama/gateway/v1/inference_pb.js";
import { GatewayService } from "../../src/gen/ollama/gateway/v1/gateway_pb.js";
import { ErrorInfoSchema } from "../../src/gen/google/rpc/error_details_pb.js";
import { startSimulator } from "../../src/simulator/simulator.js";
import type { Simulator, SimulatorOptions } from "../../src/simulator/simulator.js";
import { startTestGateway } from "./test-gateway.js";
import type { TestGateway } from "./test-gateway.js";
import { TRANSPORTS } from "./transports.js";

// A fleet of in-process simulators behind one in-process gateway, for the routing specs.

/** Simulators behind one gateway, with clients for it. */
export interface Fleet {
  sims: Simulator[];
  gw: TestGateway;
  client: Client<typeof InferenceService>;
  status: Client<typeof GatewayService>;
  close(): Promise<void>;
}

/** Simulators named n0, n1, ... behind one gateway. */
export async function fleet(
  count: number,
  sim: SimulatorOptions,
  env: Record<string, string> = {},
  parallel = 1,
  maxLoaded = 1,
): Promise<Fleet> {
  const sims = await Promise.all(
    Array.from({ length: count }, () => startSimulator({ numParallel: parallel, maxLoadedModels: maxLoaded, ...sim })),
  );
  const gw = await startTestGateway({
    OLLAMA_URLS: sims.map((s, i) => `n${i}=${s.url}`).join(","),
    OLLAMA_NUM_PARALLEL: String(parallel),
    OLLAMA_MAX_LOADED_MODELS: String(maxLoaded),
    CACHE_PS_TTL_MS: "200",
    ...env,
  });
  return {
    sims,
    gw,
    client: createClient(InferenceService, TRANSPORTS[0]!.make(gw.url)),
    status: createClient(GatewayService, TRANSPORTS[0]!.make(gw.url)),
    async close() {
      await gw.close();
      await Promise.all(sims.map((s) => s.close().catch(() => undefined)));
    },
  };
}

/** A Generate request as plain fields. */
export type GenerateInit = MessageInitShape<typeof GenerateRequestSchema>;

/** Runs one Generate to its end: the messages, and the error it ended with, if any. */
export async function run(
  client: Client<typeof InferenceService>,
  req: GenerateInit,
  options: Parameters<Client<typeof InferenceService>["generate"]>[1] = {},
): Promise<{ messages: GenerateResponse[]; error?: ConnectError; node?: string }> {
  const messages: GenerateResponse[] = [];
  try {
    for await (const m of client.generate(req as GenerateRequest, options)) messages.push(m);
    return { messages, node: messages.at(-1)?.usage?.node };
  } catch (e) {
    return { messages, error: ConnectError.from(e) };
  }
}

/** Model loads counted by the simulators. */
export const loads = (sims: Simulator[]): number => sims.reduce((n, s) => n + s.stats.loadsTotal, 0);
/** The ErrorInfo reason of an error. */
export const reason = (e?: ConnectError): string | undefined => e?.findDetails(ErrorInfoSchema)[0]?.reason;
