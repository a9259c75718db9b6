import { createContextKey } from "@connectrpc/connect";
import type { ContextValues } from "@connectrpc/connect";

/**
 * Who is calling, as established by the authentication hook. Only its name ever reaches logs,
 * metrics and rate-limit keys: never a credential or a part of one.
 */
export interface Principal {
  /** Stable name (an API key's name, a JWT's principal claim, a certificate's subject or SPIFFE ID). */
  readonly name: string;
  /** How it was established; "anonymous" when authentication is off. */
  readonly via: "api-key" | "jwt" | "mtls" | "anonymous";
}

/**
 * Context key of the call's principal, set by the authentication hook before the hooks after it
 * (permissions, rate limits) and the handler read it. Undefined while authentication is off.
 */
export const kPrincipal = createContextKey<Principal | undefined>(undefined, { description: "principal" });

/** The call's principal, or undefined when authentication is off. */
export function principalOf(values: ContextValues): Principal | undefined {
  return values.get(kPrincipal);
}
