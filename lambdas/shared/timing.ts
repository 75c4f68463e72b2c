/**
 * Timing spans for `npm run bench`'s per-stage breakdown. Off unless
 * SANDBOX_TIMINGS_FILE names a file; off, `span(name, fn)` is `fn()` and
 * nothing else (one cached boolean test). On, every finished span appends one
 * JSON line `{"n": "<role> <name>", "ms": duration, "t": end (epoch ms), "s": scope?}` to that file, from
 * whichever process ran it (handler worker, gateway, SSM endpoint, host
 * daemon): the bench reads the lines an operation produced and sums them.
 *
 * `scope` separates background work (a daemon's heartbeat, the warm pool's
 * refill) from the request being measured; it uses AsyncLocalStorage only
 * when timings are on.
 *
 * @example
 *   const item = await span('ddb.GetItem', () => client.send(new GetCommand(...)));
 */
import { appendFileSync } from 'node:fs';
import { AsyncLocalStorage } from 'node:async_hooks';
import { performance } from 'node:perf_hooks';

let file: string | null | undefined;
/** Which part of the system this process is (SANDBOX_TIMINGS_ROLE: handler, host, ...): both a handler and a host call DynamoDB. */
let role: string | undefined;
let scopes: AsyncLocalStorage<string> | undefined;

/** True when spans are being recorded (SANDBOX_TIMINGS_FILE is set). Read once per process. */
export function timingsOn(): boolean {
  if (file === undefined) {
    file = process.env.SANDBOX_TIMINGS_FILE || null;
    role = process.env.SANDBOX_TIMINGS_ROLE || undefined;
  }
  return file !== null;
}

/** Records a span that was measured elsewhere (e.g. a child process's run). */
export function recordSpan(name: string, ms: number): void {
  if (!timingsOn()) return;
  const scope = scopes?.getStore();
  try {
    appendFileSync(file!, JSON.stringify({ n: role ? `${role} ${name}` : name, ms, t: Date.now(), ...(scope ? { s: scope } : {}) }) + '\n');
  } catch {
    // A benchmark aid must never fail the work it measures.
  }
}

/** Runs `fn`, recording how long its promise took under `name` when timings are on. */
export function span<T>(name: string, fn: () => Promise<T>): Promise<T> {
  if (!timingsOn()) return fn();
  const started = performance.now();
  return fn().finally(() => recordSpan(name, performance.now() - started));
}

/** Runs `fn` with its spans marked as `scope` (background work the bench leaves out of a request's breakdown). */
export function inScope<T>(scope: string, fn: () => T): T {
  if (!timingsOn()) return fn();
  scopes ??= new AsyncLocalStorage<string>();
  return scopes.run(scope, fn);
}

/**
 * An AWS SDK v3 middleware that records each call as `<prefix>.<Command>`
 * (e.g. ddb.TransactWriteItems); added only when timings are on.
 */
export function timeSdkClient(client: { middlewareStack: { add: (mw: never, opts: never) => void } }, prefix: string): void {
  if (!timingsOn()) return;
  const middleware = (next: (args: unknown) => Promise<unknown>, context: { commandName?: string }) => (args: unknown) =>
    span(`${prefix}.${(context.commandName ?? 'call').replace(/Command$/, '')}`, () => next(args));
  client.middlewareStack.add(middleware as never, { step: 'initialize', name: `timing-${prefix}` } as never);
}
