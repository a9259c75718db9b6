import { Health } from "../gen/grpc/health/v1/health_pb.js";
import { ServerReflection as ServerReflectionV1 } from "../gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ServerReflectionV1alpha } from "../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { GatewayService } from "../gen/ollama/gateway/v1/gateway_pb.js";

/**
 * Which of the pipeline's checks a service's calls skip. One table for every hook that exempts
 * calls, so "which calls are exempt from what" is answered in one place.
 */
export interface Exemptions {
  /** Not counted against `MAX_CONCURRENT_RPCS`, so never refused by it. */
  readonly cap: boolean;
  // Authentication adds its column here (e.g. `auth: boolean`), decided per service in the
  // same table: health probes will stay open, the others are to be decided with it.
}

const NONE: Exemptions = { cap: false };

const BY_SERVICE: ReadonlyMap<string, Exemptions> = new Map<string, Exemptions>([
  // Probes must answer on a saturated gateway, or an orchestrator restarts a replica for being busy.
  [Health.typeName, { cap: true }],
  // Tooling (grpcurl, buf curl) must still list the services of a saturated gateway.
  [ServerReflectionV1.typeName, { cap: true }],
  [ServerReflectionV1alpha.typeName, { cap: true }],
  // The status RPC is how an operator sees the saturation (it reports the active calls).
  [GatewayService.typeName, { cap: true }],
]);

/** What calls of `service` (a fully qualified type name) are exempt from; nothing for services not listed. */
export function exemptionsOf(service: string): Exemptions {
  return BY_SERVICE.get(service) ?? NONE;
}
