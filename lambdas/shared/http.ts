/**
 * The API handler wrapper: middy with body parsing, validation helpers and
 * error mapping, so every handler is parse -> one domain call -> response,
 * and every failure is the JSON error shape with the status that fits.
 */
import middy from '@middy/core';
import type { APIGatewayProxyEvent, APIGatewayProxyResult, Context } from 'aws-lambda';
import type * as z from 'zod/mini';
import { ApiError, StillInProgress } from './errors';
import { logger } from './logger';
import { emitMetrics } from './metrics';
import { observability } from './observability';
import { maxBodyBytes, routes } from './routes';
import { dependencyDown } from './dependencies';
import { withCallDeadline } from './clients/deadline';
import { handlerBudgetSeconds, integrationTimeoutSeconds } from './gateway';
// The path ids are checked with plain patterns: the zod schemas (schemas.ts) would load zod into handlers that parse no body.
import { commandIdPattern, sandboxIdPattern } from '../../contract/ids';
import { span } from './timing';

/** Who is calling, as the authorizer established it. */
export interface Principal {
  tenantId: string;
  kind: 'api-key' | 'sandbox-token';
  /** For a sandbox token: the one sandbox it may signal. */
  sandboxId?: string;
  keyId?: string;
}

export interface ApiRequest {
  event: APIGatewayProxyEvent;
  principal: Principal;
  /** Parsed JSON body, `undefined` when the body is empty (and on routes that take bytes: see rawBody). */
  body: unknown;
  /**
   * Binary routes: the body's bytes, and whether API Gateway passed them as
   * binary (base64, their Content-Type is one of binaryMediaTypes) or as text.
   */
  rawBody(): { bytes: Buffer; binary: boolean };
  query: Record<string, string>;
  header(name: string): string | undefined;
  /** The `{id}` path parameter, validated; 404 when it cannot be a sandbox id. */
  sandboxId(): string;
  /** The `{command_id}` path parameter, validated; 404 when it cannot be a command id. */
  commandId(): string;
  /**
   * Epoch ms by which the handler must answer: within the handler budget and
   * before the function's own timeout. Work that takes longer answers 202.
   */
  deadline: number;
}

export interface ApiResult {
  status: number;
  body?: unknown;
  headers?: Record<string, string>;
  /** Bytes to answer instead of JSON (base64 in the proxy answer; API Gateway decodes them for an Accept in binaryMediaTypes). */
  binary?: Buffer;
}

const jsonHeaders = { 'Content-Type': 'application/json' };

function json(status: number, body: unknown, headers: Record<string, string> = {}): APIGatewayProxyResult {
  return { statusCode: status, headers: { ...jsonHeaders, ...headers }, body: JSON.stringify(body) };
}

/** Validates `value` with `schema`; a failure is a 400 naming the field. */
export function parse<S extends z.ZodMiniType>(schema: S, value: unknown, where = 'body'): z.output<S> {
  const out = schema.safeParse(value);
  if (out.success) return out.data;
  const issue = out.error.issues[0]!;
  const field = issue.path.length ? issue.path.map(String).join('.') : where;
  const message =
    issue.code === 'unrecognized_keys'
      ? `${field === where ? '' : field + ': '}unknown field${issue.keys.length > 1 ? 's' : ''} ${issue.keys.join(', ')}`
      : `${field}: ${issue.message}`;
  throw new ApiError(400, 'validation_error', message);
}

function readBody(event: APIGatewayProxyEvent): unknown {
  if (event.body === null || event.body === undefined || event.body === '') return undefined;
  const raw = event.isBase64Encoded ? Buffer.from(event.body, 'base64') : Buffer.from(event.body, 'utf8');
  if (raw.byteLength > maxBodyBytes) {
    throw new ApiError(413, 'payload_too_large', `request body is ${raw.byteLength} bytes; the limit is ${maxBodyBytes}`);
  }
  const text = raw.toString('utf8');
  if (text.trim() === '') return undefined;
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new ApiError(400, 'invalid_json', `request body is not valid JSON: ${(err as Error).message}`);
  }
}

function takesBytes(event: APIGatewayProxyEvent): boolean {
  return routes.some((r) => r.body === 'bytes' && r.path === event.resource && r.method === event.httpMethod);
}

function principalOf(event: APIGatewayProxyEvent): Principal | undefined {
  const ctx = event.requestContext?.authorizer as Record<string, unknown> | null | undefined;
  const tenantId = ctx?.tenant_id;
  if (typeof tenantId !== 'string' || tenantId === '') return undefined;
  const kind = ctx?.principal_kind === 'sandbox-token' ? 'sandbox-token' : 'api-key';
  return {
    tenantId,
    kind,
    ...(typeof ctx?.sandbox_id === 'string' && ctx.sandbox_id ? { sandboxId: ctx.sandbox_id } : {}),
    ...(typeof ctx?.key_id === 'string' ? { keyId: ctx.key_id } : {}),
  };
}

function toRequest(event: APIGatewayProxyEvent, principal: Principal, context: Context | undefined): ApiRequest {
  const headers = new Map(Object.entries(event.headers ?? {}).map(([k, v]) => [k.toLowerCase(), v ?? '']));
  return {
    event,
    principal,
    // A route that takes bytes (the route table says so) never has them parsed, or capped, as JSON.
    body: takesBytes(event) ? undefined : readBody(event),
    rawBody: () => ({
      bytes: event.body ? Buffer.from(event.body, event.isBase64Encoded ? 'base64' : 'utf8') : Buffer.alloc(0),
      binary: event.isBase64Encoded === true,
    }),
    query: Object.fromEntries(Object.entries(event.queryStringParameters ?? {}).map(([k, v]) => [k, v ?? ''])),
    header: (name) => headers.get(name.toLowerCase()),
    sandboxId: () => {
      const id = event.pathParameters?.id;
      if (!id || !sandboxIdPattern.test(id)) throw new ApiError(404, 'not_found', `sandbox ${String(id).slice(0, 64)} not found`);
      return id;
    },
    commandId: () => {
      const id = event.pathParameters?.command_id;
      if (!id || !commandIdPattern.test(id)) throw new ApiError(404, 'not_found', `command ${String(id).slice(0, 64)} not found`);
      return id;
    },
    deadline: handlerDeadline(context, event.requestContext?.requestTimeEpoch),
  };
}

/** Leave this much of the function's time for answering. */
const answerMarginMs = 2_000;

function handlerDeadline(context: Context | undefined, requestTimeEpoch?: number): number {
  const now = Date.now();
  const budget = handlerBudgetSeconds * 1000;
  const remaining = context?.getRemainingTimeInMillis?.();
  const deadline = now + (typeof remaining === 'number' && remaining > 0 ? Math.min(budget, remaining - answerMarginMs) : budget);
  // The gateway's clock started at the request, before a cold start (a burst starts many): answer within its limit.
  if (typeof requestTimeEpoch !== 'number' || requestTimeEpoch <= 0 || requestTimeEpoch > now) return deadline;
  return Math.min(deadline, requestTimeEpoch + (integrationTimeoutSeconds - gatewayReserveSeconds) * 1000);
}

/** What the gateway's own limit keeps back from a handler that started late: the answer's trip back, with room. */
const gatewayReserveSeconds = 4;

/** Maps any error to the JSON error response; only unexpected ones are 500s. */
function errorResponse(err: unknown, requestId?: string): APIGatewayProxyResult {
  if (err instanceof ApiError) return json(err.status, err.toBody(), err.headers);
  if (err instanceof StillInProgress) return json(202, err.body);
  const down = dependencyDown(err);
  if (down) {
    logger.warn('a dependency is unavailable', { err, requestId, dependency: down });
    return json(
      503,
      {
        error: {
          code: 'service_unavailable',
          // A call cut at the request's deadline says so (the time may have gone elsewhere); others name the service.
          message: `${(err as Error).name === 'DeadlineExceeded' ? (err as Error).message : `${down} is unavailable right now`}; retry shortly${requestId ? ` (request ${requestId})` : ''}`,
        },
      },
      { 'Retry-After': '2' },
    );
  }
  logger.error('unhandled error', { err, requestId });
  return json(500, { error: { code: 'internal_error', message: `internal error${requestId ? ` (request ${requestId})` : ''}` } });
}

type Fn = (req: ApiRequest, context: Context) => Promise<ApiResult>;

/** The error code of an answer (`{"error": {"code"}}`), for the ApiErrors metric. */
function errorCodeOf(response: APIGatewayProxyResult): string | undefined {
  if (response.statusCode < 400) return undefined;
  try {
    const code = (JSON.parse(response.body) as { error?: { code?: unknown } }).error?.code;
    return typeof code === 'string' ? code : `http_${response.statusCode}`;
  } catch {
    return `http_${response.statusCode}`;
  }
}

/**
 * Wraps an API handler: the Powertools middlewares (observability.ts), the
 * sandbox id on every log line of a request that names one, every error
 * answered as the JSON error shape and counted by its code.
 *
 * @example export const handler = apiHandler(async (req) => ({ status: 200, body: { ok: true } }));
 */
export function apiHandler(fn: Fn, options: { auth?: 'required' | 'none' } = {}) {
  return middy<APIGatewayProxyEvent, APIGatewayProxyResult>()
    .use(observability())
    .use({
      before: async (request) => {
        // Only an id that can be one (never caller text of any length) goes on the lines.
        const id = request.event.pathParameters?.id;
        if (id && sandboxIdPattern.test(id)) logger.appendKeys({ sandbox_id: id });
      },
      // Registered after the metrics middleware, so this runs first on the way out and its metric is in the flush.
      after: async (request) => {
        const code = request.response ? errorCodeOf(request.response) : undefined;
        if (code) emitMetrics({ Code: code }, { ApiErrors: 1 });
      },
      onError: async (request) => {
        request.response = errorResponse(request.error, request.context?.awsRequestId);
        const code = errorCodeOf(request.response);
        if (code) emitMetrics({ Code: code }, { ApiErrors: 1 });
      },
    })
    .handler(async (event, context) => {
      let principal = principalOf(event);
      if (!principal) {
        if (options.auth !== 'none') throw new ApiError(401, 'missing_api_key', 'the X-API-Key header is required');
        principal = { tenantId: '', kind: 'api-key' };
      }
      const req = toRequest(event, principal, context);
      // Every AWS call of the request ends by its deadline: a hung dependency is a 503 in time, not a 504.
      const result = await withCallDeadline(req.deadline, () => span('handler', () => fn(req, context)));
      if (result.binary) {
        return {
          statusCode: result.status,
          headers: { 'Content-Type': 'application/octet-stream', ...result.headers },
          body: result.binary.toString('base64'),
          isBase64Encoded: true,
        };
      }
      if (result.body === undefined) return { statusCode: result.status, headers: { ...result.headers }, body: '' };
      return json(result.status, result.body, result.headers);
    });
}
