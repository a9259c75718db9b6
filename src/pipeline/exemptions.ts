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
  /**
   * Authentication and permissions: "open" never asks for credentials; "open-unless-restricted"
   * asks only when `AUTH_REFLECTION=authenticated` (and then checks no method permission);
   * "required" authenticates every call and checks its method permission.
   */
  readonly auth: "open" | "open-unless-restricted" | "required";
}

const NONE: Exemptions = { cap: false, auth: "required" };

const BY_SERVICE: ReadonlyMap<string, Exemptions> = new Map<string, Exemptions>([
  // Probes must answer on a saturated gateway, or an orchestrator restarts a replica for being
  // busy; and probes (the kubelet's grpc probe) carry no credentials.
  [Health.typeName, { cap: true, auth: "open" }],
  // Tooling (grpcurl, buf curl) must still list the services of a saturated gateway. The
  // contract is public (the protos are), so listing it is open unless the operator says not.
  [ServerReflectionV1.typeName, { cap: true, auth: "open-unless-restricted" }],
  [ServerReflectionV1alpha.typeName, { cap: true, auth: "open-unless-restricted" }],
  // The status RPC is how an operator sees the saturation (it reports the active calls); it
  // shows the fleet, so it needs its own grant (`status`).
  [GatewayService.typeName, { cap: true, auth: "required" }],
]);

/** What calls of `service` (a fully qualified type name) are exempt from; nothing for services not listed. */
export function exemptionsOf(service: string): Exemptions {
  return BY_SERVICE.get(service) ?? NONE;
}
