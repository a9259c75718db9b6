import type { DescMethod } from "@bufbuild/protobuf";
import type { AuthIdentity } from "../auth/auth-policy.js";
import type { Authenticator } from "../auth/authenticator.js";
import { kAuthIdentity } from "../auth/authorize.js";
import { kTlsSocket } from "../auth/client-certificate.js";
import { permissionDenied } from "../errors/domain-errors.js";
import { parsePriority } from "../services/inference-service.js";
import type { Call } from "./call.js";
import { exemptionsOf } from "./exemptions.js";
import type { CallHook, WaitingCallHook } from "./pipeline.js";
import { kPrincipal } from "./principal.js";

/**
 * Authentication (hook 3): who calls. Sets the call's principal (`kPrincipal`, for rate limits
 * and handlers), its identity with permissions (`kAuthIdentity`, for `authorizeModel`) and the
 * log line's principal name; refuses with UNAUTHENTICATED otherwise. Health is never checked;
 * reflection only when `AUTH_REFLECTION=authenticated` (the exemptions table). Synchronous but
 * for a token seen for the first time, which waits for its verification.
 */
export function authenticationHook(auth: Authenticator): WaitingCallHook {
  const admit = (call: Call, identity: AuthIdentity): undefined => {
    call.values.set(kAuthIdentity, identity);
    // The identity has the Principal's shape (name, via): one object per principal, none per call.
    call.values.set(kPrincipal, identity);
    call.info.principal = identity.name;
    return undefined;
  };
  return {
    begin(call) {
      const rule = exemptionsOf(call.method.parent.typeName).auth;
      if (rule === "open" || (rule === "open-unless-restricted" && !auth.restrictReflection)) return undefined;
      const identity = auth.authenticate(call.requestHeader, call.values.get(kTlsSocket));
      if (identity instanceof Promise) return identity.then((id) => admit(call, id));
      return admit(call, identity);
    },
  };
}

/**
 * Permissions (hook 4): may the authenticated principal call this method, with this
 * `x-priority`? PERMISSION_DENIED (METHOD_NOT_ALLOWED, PRIORITY_NOT_ALLOWED) otherwise. The
 * model is checked by the handlers (`authorizeModel`), which know it. Calls without an identity
 * (authentication off, health, open reflection) and restricted reflection (authentication only)
 * are not checked.
 */
export function permissionsHook(): CallHook {
  const paths = new Map<DescMethod, string>();
  return {
    begin(call) {
      const identity = call.values.get(kAuthIdentity);
      if (identity === undefined) return undefined;
      if (exemptionsOf(call.method.parent.typeName).auth !== "required") return undefined;
      let path = paths.get(call.method);
      if (path === undefined) {
        path = `${call.method.parent.typeName}/${call.method.name}`;
        paths.set(call.method, path);
      }
      if (!identity.grants.methodAllowed(path)) {
        throw permissionDenied(identity.name, { kind: "method", method: call.method.name });
      }
      const header = call.requestHeader.get("x-priority");
      if (header !== null) {
        const priority = parsePriority(header);
        if (priority > identity.grants.maxPriority) {
          throw permissionDenied(identity.name, {
            kind: "priority",
            priority,
            maxPriority: identity.grants.maxPriority,
          });
        }
      }
      return undefined;
    },
  };
}
