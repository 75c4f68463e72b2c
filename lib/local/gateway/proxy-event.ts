/**
 * The event a Lambda proxy integration hands a handler, built from an HTTP
 * request as API Gateway builds it (REST API, payload format 1.0): pure, so
 * what a handler sees locally is decided and tested in one place.
 */
import type { APIGatewayProxyEvent } from 'aws-lambda';
import { isBinaryMediaType } from '../../../lambdas/shared/gateway';
import type { RouteMatch } from './routing';

const stage = 'local';
const arnPrefix = 'arn:aws:execute-api:local:000000000000:local';

/** The execute-api ARN the authorizer's policy is checked against. */
export function methodArn(method: string, path: string): string {
  return `${arnPrefix}/${stage}/${method}${path}`;
}

/** A header's value by name, whatever its case (the last one when repeated, as `headers` keeps it). */
export function headerValue(headers: Readonly<Record<string, string | undefined>>, name: string): string | undefined {
  const lower = name.toLowerCase();
  return Object.entries(headers).find(([k]) => k.toLowerCase() === lower)?.[1];
}

/** Headers and query parameters as API Gateway passes them: the last value of each, and all values. */
export interface RequestValues {
  headers: Record<string, string>;
  multiValueHeaders: Record<string, string[]>;
  query: Record<string, string>;
  multiQuery: Record<string, string[]>;
}

export function requestValues(rawHeaders: readonly string[], searchParams: URLSearchParams): RequestValues {
  // Maps, not object literals: a caller's `__proto__` or `constructor` is just a name here.
  const headerValues = new Map<string, string[]>();
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const k = rawHeaders[i]!;
    headerValues.set(k, [...(headerValues.get(k) ?? []), rawHeaders[i + 1]!]);
  }
  const queryValues = new Map<string, string[]>();
  for (const [k, v] of searchParams) queryValues.set(k, [...(queryValues.get(k) ?? []), v]);
  // fromEntries defines own properties, so those names cannot reach a prototype either.
  return {
    headers: Object.fromEntries([...headerValues].map(([k, vs]) => [k, vs.at(-1)!])),
    multiValueHeaders: Object.fromEntries(headerValues),
    query: Object.fromEntries([...queryValues].map(([k, vs]) => [k, vs.at(-1)!])),
    multiQuery: Object.fromEntries(queryValues),
  };
}

export interface ProxyRequest {
  method: string;
  url: URL;
  values: RequestValues;
  body: Buffer;
  match: RouteMatch;
  /** The authorizer's context and principal, or null on a route without auth. */
  authorizer: Record<string, unknown> | null;
  sourceIp: string;
  requestId: string;
  requestTimeEpoch: number;
}

export function proxyEvent(r: ProxyRequest): APIGatewayProxyEvent {
  const { headers, multiValueHeaders, query, multiQuery } = r.values;
  // API Gateway's rule: a body is binary (base64 to the handler) when its Content-Type is one of the binary media types.
  const isText = r.body.length === 0 || !isBinaryMediaType(headerValue(headers, 'content-type'));
  return {
    resource: r.match.resourcePath,
    path: r.url.pathname,
    httpMethod: r.method,
    headers,
    multiValueHeaders,
    queryStringParameters: Object.keys(query).length ? query : null,
    multiValueQueryStringParameters: Object.keys(multiQuery).length ? multiQuery : null,
    pathParameters: r.match.pathParameters,
    stageVariables: null,
    body: r.body.length === 0 ? null : isText ? r.body.toString('utf8') : r.body.toString('base64'),
    isBase64Encoded: r.body.length > 0 && !isText,
    requestContext: {
      accountId: '000000000000',
      apiId: 'local',
      authorizer: r.authorizer,
      protocol: 'HTTP/1.1',
      httpMethod: r.method,
      identity: { sourceIp: r.sourceIp } as APIGatewayProxyEvent['requestContext']['identity'],
      path: `/${stage}${r.url.pathname}`,
      stage,
      requestId: r.requestId,
      requestTimeEpoch: r.requestTimeEpoch,
      resourceId: 'local',
      resourcePath: r.match.resourcePath,
    },
  };
}
