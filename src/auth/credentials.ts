/** What a call presents in its headers. */
export type PresentedCredential =
  | { readonly kind: "none" }
  /** A header was there but is not a credential we read (another scheme, empty). */
  | { readonly kind: "malformed" }
  | { readonly kind: "bearer"; readonly value: string; readonly looksLikeJwt: boolean };

const NONE: PresentedCredential = { kind: "none" };
const MALFORMED: PresentedCredential = { kind: "malformed" };

/**
 * The credential of a call, from `authorization: Bearer <x>` (the scheme case-insensitive), else
 * `x-api-key: <x>`. `looksLikeJwt`: three base64url parts, the first starting `eyJ` (a JSON
 * header), which an API key never does (they start `ogw_`). Pure: no lookup, no decoding.
 */
export function presentedCredential(headers: Headers): PresentedCredential {
  const authorization = headers.get("authorization");
  let value: string | undefined;
  if (authorization !== null) {
    const space = authorization.indexOf(" ");
    if (space <= 0 || authorization.slice(0, space).toLowerCase() !== "bearer") return MALFORMED;
    value = authorization.slice(space + 1).trim();
  } else {
    const apiKey = headers.get("x-api-key");
    if (apiKey === null) return NONE;
    value = apiKey.trim();
  }
  if (value === "") return MALFORMED;
  return { kind: "bearer", value, looksLikeJwt: looksLikeJwt(value) };
}

function looksLikeJwt(value: string): boolean {
  if (!value.startsWith("eyJ")) return false;
  const first = value.indexOf(".");
  const second = first < 0 ? -1 : value.indexOf(".", first + 1);
  return second > first + 1 && value.indexOf(".", second + 1) < 0;
}
