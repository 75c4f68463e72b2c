/**
 * What API Gateway and Lambda do on their own, in one place: the answers the
 * gateway makes without a handler (its "gateway responses") and the limits it
 * and Lambda enforce. The CDK stack configures the deployed API from these
 * values, and the local gateway answers and cuts requests from the same ones,
 * so a test on the local stack fails where the deployed API would.
 */

/** API Gateway REST's integration timeout (its default and, for regional APIs without a quota raise, its maximum). */
export const integrationTimeoutSeconds = 29;

/** API Gateway REST's request and response payload cap. */
export const gatewayMaxPayloadBytes = 10 * 1024 * 1024;

/** Lambda's synchronous invocation payload cap (request event and response), as Lambda counts it. */
export const lambdaMaxPayloadBytes = 6_291_556;

/**
 * Media types the REST API treats as binary (its `binaryMediaTypes`). API
 * Gateway decides by these alone: a request body whose Content-Type is one of
 * them reaches the handler base64-encoded (any other body arrives as UTF-8
 * text, and bytes that are not UTF-8 are lost), and a base64 answer goes back
 * as bytes only when the request's first Accept type is one of them (otherwise
 * the caller gets the base64 text). The CDK configures the API with this list
 * and the local gateway decides with it (isBinaryMediaType, acceptsBinary).
 */
export const binaryMediaTypes: readonly string[] = ['application/octet-stream'];

/** `type/subtype` of a header value, lower-cased, without parameters (`; charset=...`). */
function mediaTypeOf(value: string | undefined): string | undefined {
  const type = value?.split(';')[0]?.trim().toLowerCase();
  return type ? type : undefined;
}

/** An entry of binaryMediaTypes matches a type exactly, or through its `*` type or subtype; the header's own wildcards are literal. */
function matchesBinary(type: string | undefined, types: readonly string[]): boolean {
  if (!type) return false;
  return types.some((pattern) => {
    const [pMain, pSub] = pattern.toLowerCase().split('/');
    const [main, sub] = type.split('/');
    return (pMain === '*' || pMain === main) && (pSub === '*' || pSub === sub);
  });
}

/** Whether API Gateway passes a request body with this Content-Type to the handler as base64 (binary). */
export function isBinaryMediaType(contentType: string | undefined, types: readonly string[] = binaryMediaTypes): boolean {
  return matchesBinary(mediaTypeOf(contentType), types);
}

/** Whether API Gateway turns a base64 answer into bytes for a request with this Accept header (its first type decides). */
export function acceptsBinary(accept: string | undefined, types: readonly string[] = binaryMediaTypes): boolean {
  return matchesBinary(mediaTypeOf(accept?.split(',')[0]), types);
}

/**
 * The most bytes a file call carries in its body (a PUT) or its answer (a
 * GET): their base64 (4/3 of it, 5,592,408 characters) and the rest of the
 * event or answer fit Lambda's 6 MB payload. Larger files go through the
 * upload and download routes (presigned S3 URLs).
 */
export const filesInlineMaxBytes = 4 * 1024 * 1024;

/**
 * How long a handler may spend before answering: the integration timeout
 * minus a margin for the gateway, the authorizer and the answer's trip back.
 * Anything that could take longer answers 202 and is finished by the host,
 * the reaper or the next call.
 */
export const handlerBudgetSeconds = 25;

/** Gateway response types this API configures (API Gateway's names). */
export type GatewayResponseType =
  | 'UNAUTHORIZED'
  | 'ACCESS_DENIED'
  | 'INVALID_API_KEY'
  | 'MISSING_AUTHENTICATION_TOKEN'
  | 'RESOURCE_NOT_FOUND'
  | 'THROTTLED'
  | 'QUOTA_EXCEEDED'
  | 'REQUEST_TOO_LARGE'
  | 'UNSUPPORTED_MEDIA_TYPE'
  | 'BAD_REQUEST_PARAMETERS'
  | 'BAD_REQUEST_BODY'
  | 'AUTHORIZER_FAILURE'
  | 'AUTHORIZER_CONFIGURATION_ERROR'
  | 'INTEGRATION_FAILURE'
  | 'INTEGRATION_TIMEOUT'
  | 'DEFAULT_4XX'
  | 'DEFAULT_5XX';

export interface GatewayResponse {
  type: GatewayResponseType;
  /** HTTP status; `undefined` keeps the status API Gateway chose (the DEFAULT_* families). */
  status?: number;
  code: string;
  /** A fixed message, or `undefined` to pass the gateway's own message through. */
  message?: string;
  /** Static headers added to the answer (API Gateway can only add fixed values). */
  headers?: Record<string, string>;
}

/**
 * Answers API Gateway gives without reaching a handler, in the shape handlers
 * use: {"error":{"code","message"}}. Dependencies that are unavailable answer
 * 503 with Retry-After, like the handlers do.
 */
export const gatewayResponses: readonly GatewayResponse[] = [
  { type: 'UNAUTHORIZED', status: 401, code: 'missing_api_key', message: 'the X-API-Key header is required' },
  // A key that is unknown, revoked or expired, and a sandbox token on a route it may not call, look the same.
  { type: 'ACCESS_DENIED', status: 403, code: 'invalid_api_key', message: 'the API key is not valid, or may not call this route' },
  { type: 'INVALID_API_KEY', status: 403, code: 'invalid_api_key', message: 'the API key has no usage plan: ask the operator to attach one' },
  // REST APIs answer an unknown method or path with 403 "Missing Authentication Token".
  { type: 'MISSING_AUTHENTICATION_TOKEN', status: 404, code: 'not_found', message: 'no route for this method and path' },
  { type: 'RESOURCE_NOT_FOUND', status: 404, code: 'not_found', message: 'no route for this method and path' },
  { type: 'THROTTLED', status: 429, code: 'too_many_requests', message: 'request rate limit exceeded: retry with backoff', headers: { 'Retry-After': '1' } },
  { type: 'QUOTA_EXCEEDED', status: 429, code: 'quota_exceeded', message: "this key's daily request quota is used up", headers: { 'Retry-After': '3600' } },
  { type: 'REQUEST_TOO_LARGE', status: 413, code: 'payload_too_large', message: 'request body too large' },
  { type: 'UNSUPPORTED_MEDIA_TYPE', status: 415, code: 'unsupported_media_type', message: 'send JSON (Content-Type: application/json)' },
  { type: 'BAD_REQUEST_PARAMETERS', status: 400, code: 'validation_error' },
  { type: 'BAD_REQUEST_BODY', status: 400, code: 'validation_error' },
  // The authorizer fails when its table cannot be read: a dependency that is down, so retry.
  {
    type: 'AUTHORIZER_FAILURE',
    status: 503,
    code: 'service_unavailable',
    message: 'the authorizer could not check the key right now: retry shortly',
    headers: { 'Retry-After': '2' },
  },
  {
    type: 'AUTHORIZER_CONFIGURATION_ERROR',
    status: 503,
    code: 'service_unavailable',
    message: 'the authorizer could not check the key right now: retry shortly',
    headers: { 'Retry-After': '2' },
  },
  { type: 'INTEGRATION_FAILURE', status: 502, code: 'internal_error', message: 'the handler failed: retry, and report it if it persists' },
  {
    type: 'INTEGRATION_TIMEOUT',
    status: 504,
    code: 'gateway_timeout',
    message: `the request took longer than API Gateway's ${integrationTimeoutSeconds} s limit; long work answers 202 and is followed with GET`,
  },
  { type: 'DEFAULT_4XX', code: 'request_rejected' },
  { type: 'DEFAULT_5XX', code: 'internal_error' },
];

/** The configured answer for a response type. */
function gatewayResponse(type: GatewayResponseType): GatewayResponse {
  const found = gatewayResponses.find((r) => r.type === type);
  if (!found) throw new Error(`no gateway response configured for ${type}`);
  return found;
}

/** The body template API Gateway renders ($context.error.messageString is already a quoted JSON string). */
export function gatewayResponseTemplate(r: GatewayResponse): string {
  const message = r.message === undefined ? '$context.error.messageString' : JSON.stringify(r.message);
  return `{"error":{"code":${JSON.stringify(r.code)},"message":${message}}}`;
}

/**
 * The answer as API Gateway would render it, for the local gateway. `status`
 * and `message` stand in for what API Gateway itself would pick where the
 * table leaves them open.
 */
export function renderGatewayResponse(
  type: GatewayResponseType,
  fallback: { status?: number; message?: string } = {},
): { statusCode: number; headers: Record<string, string>; body: string } {
  const r = gatewayResponse(type);
  const statusCode = r.status ?? fallback.status;
  if (statusCode === undefined) throw new Error(`gateway response ${type} needs a status`);
  const message = r.message ?? fallback.message ?? 'request rejected';
  return {
    statusCode,
    headers: { 'Content-Type': 'application/json', ...r.headers },
    body: JSON.stringify({ error: { code: r.code, message } }),
  };
}
