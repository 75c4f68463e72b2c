/**
 * Where each AWS SDK client is handed to X-Ray (Powertools Tracer's
 * `captureAWSv3Client`), without the clients importing the tracer: loading
 * the X-Ray SDK installs an async hook with a destroy callback (cls-hooked)
 * that then costs every promise of the process. Lambda functions register the
 * capture once, with their middlewares (lambdas/shared/observability.ts);
 * everything else that makes clients (the host daemon, the local stack's own
 * process, scripts) never loads X-Ray and gets its clients untouched.
 */
type Capture = <T>(client: T) => T;

let capture: Capture | undefined;

/** Clients made from now on go through `fn` (observability.ts calls it when a function loads). */
export function captureClientsWith(fn: Capture): void {
  capture = fn;
}

/** The client, traced when this process registered a capture. */
export function traced<T>(client: T): T {
  return capture ? capture(client) : client;
}
