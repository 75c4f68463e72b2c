/**
 * API Gateway REQUEST authorizer: validates X-API-Key (tenant API keys and
 * per-sandbox tokens) and returns the tenant in the context. API Gateway
 * caches the answer per key, so the policy covers every route the key may call.
 */
import type { APIGatewayAuthorizerResult, APIGatewayRequestAuthorizerEvent } from 'aws-lambda';
import { decide } from './shared/authorize';
import { logger } from './shared/logger';
import { lambdaEntry } from './shared/observability';

async function authorize(event: APIGatewayRequestAuthorizerEvent): Promise<APIGatewayAuthorizerResult> {
  const headers = Object.fromEntries(Object.entries(event.headers ?? {}).map(([k, v]) => [k.toLowerCase(), v]));
  const decision = await decide(headers['x-api-key'] ?? undefined, event.methodArn);
  // Throwing 'Unauthorized' is how a Lambda authorizer makes API Gateway answer 401.
  if (decision.effect === 'unauthorized') throw new Error('Unauthorized');
  if (decision.effect === 'deny') {
    logger.info('authorizer: denied', { methodArn: event.methodArn });
    return { principalId: 'anonymous', policyDocument: policy('Deny', [event.methodArn]) };
  }
  return {
    principalId: decision.principalId,
    policyDocument: policy('Allow', decision.resources),
    context: decision.context,
    ...(decision.usageIdentifierKey ? { usageIdentifierKey: decision.usageIdentifierKey } : {}),
  };
}

export const handler = lambdaEntry(authorize);

function policy(effect: 'Allow' | 'Deny', resources: string[]) {
  return { Version: '2012-10-17', Statement: [{ Action: 'execute-api:Invoke', Effect: effect, Resource: resources }] };
}
