/**
 * X-Ray tracing (Powertools Tracer): the handler's segment comes from
 * `captureLambdaHandler` (lambdas/shared/observability.ts) and every AWS SDK
 * client is captured where it is made (lambdas/shared/clients/), so a trace
 * shows each DynamoDB, SSM, S3 and EventBridge call of a request. Outside
 * Lambda (the host daemon, the local stack) the tracer is off and `traced`
 * hands the client back untouched.
 */
import { Tracer } from '@aws-lambda-powertools/tracer';
import { serviceName } from './logger';

export const tracer = new Tracer({ serviceName });

/** The client, with its calls traced when tracing is on. */
export function traced<T>(client: T): T {
  return tracer.isTracingEnabled() ? tracer.captureAWSv3Client(client) : client;
}
