/**
 * X-Ray tracing (Powertools Tracer): the handler's segment comes from
 * `captureLambdaHandler` (lambdas/shared/observability.ts), and every AWS SDK
 * client a function makes is captured (`captureClient`, registered there for
 * lambdas/shared/clients/), so a trace shows each DynamoDB, SSM, S3 and
 * EventBridge call of a request. Only the functions import this module
 * (clients/capture.ts says why); outside Lambda the tracer is off anyway.
 */
import { Tracer } from '@aws-lambda-powertools/tracer';
import { serviceName } from './logger';

export const tracer = new Tracer({ serviceName });

/** The client, with its calls traced when tracing is on. */
export function captureClient<T>(client: T): T {
  return tracer.isTracingEnabled() ? tracer.captureAWSv3Client(client) : client;
}
