/**
 * How the local gateway runs a route's handler: as Lambda does (the deployed
 * bundles, in workers, stopped at their timeout) for the local stack, or in
 * this process for tests of the gateway itself. The gateway sees only
 * `LocalFunctions`, so either can stand behind it.
 */
import { randomUUID } from 'node:crypto';
import type { APIGatewayProxyEvent, APIGatewayProxyResult, Context } from 'aws-lambda';
import type { HandlerName } from '../../../lambdas/shared/routes';
import { LocalFunction, type InvokeOutcome } from '../lambda-runtime';

export type LambdaHandler = (event: APIGatewayProxyEvent, context: Context) => Promise<APIGatewayProxyResult>;

/** How the local gateway runs a route's handler. */
export interface LocalFunctions {
  invoke(name: HandlerName, event: APIGatewayProxyEvent): Promise<InvokeOutcome>;
  /** Like UpdateFunctionConfiguration on every function: fresh environments with this environment. */
  updateEnvironment(env: Record<string, string | undefined>): Promise<void>;
  close(): Promise<void>;
}

/** The handlers as Lambda runs them: their bundles, in workers, with their timeout and memory. */
export function bundledFunctions(o: {
  timeoutSeconds: number;
  memoryMb: number;
  env: Record<string, string | undefined>;
  /** Each function's output, line by line (the local stack reads metrics from it). @default this process's output */
  output?: (name: HandlerName, stream: 'stdout' | 'stderr') => (chunk: Buffer | string) => void;
}): LocalFunctions {
  const functions = new Map<HandlerName, LocalFunction>();
  let env = o.env;
  const fn = (name: HandlerName) => {
    let f = functions.get(name);
    const output = o.output;
    if (!f) {
      f = new LocalFunction({
        name,
        timeoutSeconds: o.timeoutSeconds,
        memoryMb: o.memoryMb,
        env,
        ...(output ? { output: (stream) => output(name, stream) } : {}),
      });
      functions.set(name, f);
    }
    return f;
  };
  return {
    invoke: (name, event) => fn(name).invoke(event),
    async updateEnvironment(next) {
      env = next;
      await Promise.all([...functions.values()].map((f) => f.updateEnvironment(next)));
    },
    async close() {
      await Promise.all([...functions.values()].map((f) => f.close()));
    },
  };
}

/**
 * Handlers called in this process (tests of the gateway itself, with handlers
 * of their own): no worker, and an invocation past `timeoutSeconds` is only
 * abandoned, not stopped.
 */
export function inProcessFunctions(load: (name: HandlerName) => Promise<LambdaHandler>, timeoutSeconds = 29): LocalFunctions {
  const cache = new Map<HandlerName, Promise<LambdaHandler>>();
  return {
    async invoke(name, event) {
      let h = cache.get(name);
      if (!h) {
        h = load(name);
        cache.set(name, h);
      }
      const handler = await h;
      const deadline = Date.now() + timeoutSeconds * 1000;
      const context = {
        functionName: name,
        awsRequestId: randomUUID(),
        getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
      } as Context;
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<InvokeOutcome>((resolve) => (timer = setTimeout(() => resolve({ kind: 'timeout' }), timeoutSeconds * 1000)));
      const run = handler(event, context).then(
        (payload): InvokeOutcome => ({ kind: 'ok', payload }),
        (err: Error): InvokeOutcome => ({ kind: 'error', errorType: err?.name ?? 'Error', errorMessage: err?.message ?? String(err) }),
      );
      try {
        return await Promise.race([run, timeout]);
      } finally {
        clearTimeout(timer);
      }
    },
    async updateEnvironment() {
      cache.clear();
    },
    async close() {},
  };
}
