/**
 * Errors the simulator turns into Ollama-shaped HTTP answers.
 */

/** Ollama's exact queue-full text (note the two spaces after the period). */
export const SERVER_BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded";

/**
 * Ollama's text for a prompt that does not fit the context when context shift is disabled
 * (ollama-api.md §4 gives the start; the rest is the current server's wording).
 */
export const PROMPT_TOO_LONG_MESSAGE =
  "the prompt is longer than the context length currently available to the model; " +
  "shorten the prompt, adjust the context length in settings, or use a model with a longer context length";

/**
 * An error with the HTTP status Ollama would answer with; handlers throw it and the router
 * renders it as `{"error": message}` so every route reports errors the same way.
 */
export class ApiError extends Error {
  override readonly name = "ApiError";
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** True for the rejection reason of an aborted signal or any DOM-style AbortError. */
export function isAbortError(error: unknown): boolean {
  return error instanceof Error && (error.name === "AbortError" || error.name === "TimeoutError");
}

/** Builds the AbortError used when a client goes away, so callers can tell it from real failures. */
export function abortError(message = "request canceled"): Error {
  const error = new Error(message);
  error.name = "AbortError";
  return error;
}
