/**
 * What every function is wrapped in, once, through middy: Powertools Logger
 * (the request id and the function on every line; keys a handler appends are
 * reset after each invocation), Metrics (EMF; the cold-start metric), and
 * Tracer (a segment per invocation, errors as metadata). API handlers get it
 * from `apiHandler` (http.ts); the reaper and the authorizer use it directly.
 *
 * @example export const handler = lambdaEntry(run);
 */
import middy from '@middy/core';
import type { Context } from 'aws-lambda';
import { injectLambdaContext } from '@aws-lambda-powertools/logger/middleware';
import { logMetrics } from '@aws-lambda-powertools/metrics/middleware';
import { captureLambdaHandler } from '@aws-lambda-powertools/tracer/middleware';
import { logger } from './logger';
import { metrics } from './metrics';
import { captureClientsWith } from './clients/capture';
import { captureClient, tracer } from './tracer';

// Every AWS SDK client a function makes is traced (clients/capture.ts).
captureClientsWith(captureClient);

/**
 * The Powertools middlewares in the order that ties every line and metric to
 * its invocation: context first (before runs in order), metrics flushed and
 * the segment closed last (after and onError run in reverse).
 */
export function observability(): middy.MiddlewareObj[] {
  return [
    injectLambdaContext(logger, { resetKeys: true }) as middy.MiddlewareObj,
    logMetrics(metrics, { captureColdStartMetric: true }) as middy.MiddlewareObj,
    // Responses hold sandbox records and command output: never copied into traces.
    captureLambdaHandler(tracer, { captureResponse: false }) as middy.MiddlewareObj,
  ];
}

/** What a caller outside Lambda (a test calling the handler) gets as its context. */
function standInContext(): Context {
  return {
    callbackWaitsForEmptyEventLoop: true,
    functionName: process.env.AWS_LAMBDA_FUNCTION_NAME ?? 'local',
    functionVersion: '$LATEST',
    invokedFunctionArn: 'arn:aws:lambda:local:000000000000:function:local',
    memoryLimitInMB: '0',
    awsRequestId: 'local',
    logGroupName: 'local',
    logStreamName: 'local',
    getRemainingTimeInMillis: () => 60_000,
    done: () => undefined,
    fail: () => undefined,
    succeed: () => undefined,
  };
}

/**
 * A function's entry point: `fn` wrapped in the Powertools middlewares. Lambda
 * passes the context; a caller outside Lambda may leave it out.
 *
 * @example export const handler = lambdaEntry(async (event) => ({ ok: true }));
 */
export function lambdaEntry<E, R>(fn: (event: E, context: Context) => Promise<R>): (event: E, context?: Context) => Promise<R> {
  const wrapped = middy(fn).use(observability());
  return (event, context) => wrapped(event, context ?? standInContext());
}
