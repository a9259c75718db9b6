import { createContextKey } from "@connectrpc/connect";
import type { ContextValues, HandlerContext } from "@connectrpc/connect";
import { permissionDenied } from "../errors/domain-errors.js";
import type { AuthIdentity } from "./auth-policy.js";

/**
 * Context key of the call's authenticated identity with its permissions, set by the
 * authentication hook (`pipeline/auth-hook.ts`) before the handler runs. Undefined while
 * authentication is off (and for health and open reflection): then nothing is checked.
 */
export const kAuthIdentity = createContextKey<AuthIdentity | undefined>(undefined, {
  description: "authenticated identity",
});

/**
 * Refuses the call with PERMISSION_DENIED (MODEL_NOT_ALLOWED) unless its principal may use
 * `model`. Handlers call it right after validating the request, where the model is known (the
 * pipeline's hooks run before the request is read). Nothing to check when authentication is off.
 */
export function authorizeModel(ctx: HandlerContext, model: string): void {
  const identity = ctx.values.get(kAuthIdentity);
  if (identity !== undefined && !identity.grants.modelAllowed(model)) {
    throw permissionDenied(identity.name, { kind: "model", model });
  }
}

/**
 * A filter for answers that list models (ListModels, ListRunningModels): keeps the models the
 * call's principal may use; undefined when everything may be shown (authentication off).
 */
export function modelFilter(values: ContextValues): ((model: string) => boolean) | undefined {
  const identity = values.get(kAuthIdentity);
  return identity === undefined ? undefined : (model) => identity.grants.modelAllowed(model);
}
