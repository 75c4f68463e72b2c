/**
 * The local API Gateway: turns HTTP requests into API Gateway REST proxy
 * events and invokes the handlers as Lambda would (lib/local/lambda-runtime.ts:
 * the deployed bundles, in workers, stopped at their timeout), from the same
 * route table the CDK stack reads, behind the same authorizer code. Its own
 * answers (no route, no key, denied, throttled, too large, timed out) come
 * from the table the CDK configures the deployed gateway with
 * (lambdas/shared/gateway.ts), and it cuts every request at API Gateway's
 * integration timeout.
 */
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { APIGatewayProxyEvent, APIGatewayProxyResult, Context } from 'aws-lambda';
import { allows, decide, type Decision } from '../../lambdas/shared/authorize';
import { span } from '../../lambdas/shared/timing';
import {
  acceptsBinary,
  gatewayMaxPayloadBytes,
  isBinaryMediaType,
  integrationTimeoutSeconds,
  renderGatewayResponse,
  type GatewayResponseType,
} from '../../lambdas/shared/gateway';
import { routes, type HandlerName, type Route } from '../../lambdas/shared/routes';
import { LocalFunction, type InvokeOutcome } from './lambda-runtime';
const stage = 'local';
const arnPrefix = 'arn:aws:execute-api:local:000000000000:local';

type LambdaHandler = (event: APIGatewayProxyEvent, context: Context) => Promise<APIGatewayProxyResult>;

export interface LocalApi {
  url: string;
  /** Extra addresses served (e.g. the sandbox network's gateway). */
  urls: string[];
  /** The handlers behind the routes. */
  functions: LocalFunctions;
  /** Serves the API on one more address, same port (a host's sandbox network gateway). Idempotent. */
  serveOn(address: string): Promise<string>;
  close(): Promise<void>;
}

interface Match {
  route: Route;
  resourcePath: string;
  pathParameters: Record<string, string> | null;
}

function matchPath(path: string): { matches: Match[]; pathExists: boolean } {
  const segments = path.split('/').filter(Boolean);
  const matches: Match[] = [];
  for (const route of routes) {
    const parts = route.path.split('/').filter(Boolean);
    if (parts.length !== segments.length) continue;
    const params: Record<string, string> = {};
    let ok = true;
    parts.forEach((p, i) => {
      const seg = segments[i]!;
      if (p.startsWith('{') && p.endsWith('}')) {
        try {
          params[p.slice(1, -1)] = decodeURIComponent(seg);
        } catch {
          params[p.slice(1, -1)] = seg;
        }
      } else if (p !== seg) ok = false;
    });
    if (ok) matches.push({ route, resourcePath: route.path, pathParameters: Object.keys(params).length ? params : null });
  }
  return { matches, pathExists: matches.length > 0 };
}

/**
 * Writes an answer as API Gateway would: a base64 body (isBase64Encoded)
 * becomes bytes only when the request's first Accept type is one of the API's
 * binaryMediaTypes; otherwise the caller gets the base64 text itself.
 */
function send(res: ServerResponse, result: APIGatewayProxyResult, accept?: string): void {
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(result.headers ?? {})) headers[k] = String(v);
  res.writeHead(result.statusCode, headers);
  res.end(result.isBase64Encoded && acceptsBinary(accept) ? Buffer.from(result.body, 'base64') : result.body);
}

/** An answer the gateway makes itself, from the shared table. */
function gatewayAnswer(type: GatewayResponseType, fallback?: { status?: number; message?: string }): APIGatewayProxyResult {
  return renderGatewayResponse(type, fallback);
}

async function readBody(req: IncomingMessage): Promise<Buffer | 'too_large'> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > gatewayMaxPayloadBytes) return 'too_large';
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

/** API Gateway's authorizer result cache: one decision per key for `ttlMs`. */
class DecisionCache {
  private readonly entries = new Map<string, { decision: Decision; expires: number }>();
  constructor(
    private readonly ttlMs: number,
    private readonly authorize: typeof decide,
  ) {}
  async get(key: string | undefined, methodArn: string): Promise<Decision> {
    // Like API Gateway, the cache is keyed by the identity source (the key) only.
    if (this.ttlMs <= 0 || key === undefined) return this.authorize(key, methodArn);
    const hit = this.entries.get(key);
    if (hit && hit.expires > Date.now()) return hit.decision;
    const decision = await this.authorize(key, methodArn);
    if (this.entries.size > 10_000) this.entries.clear();
    this.entries.set(key, { decision, expires: Date.now() + this.ttlMs });
    return decision;
  }
}

/** A usage plan's throttle, per caller: a token bucket of `rate` per second with `burst`. */
class Throttle {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  constructor(
    private readonly rate: number,
    private readonly burst: number,
  ) {}
  /** Seconds to wait, or 0 when the request may go. */
  take(principal: string): number {
    if (this.rate <= 0) return 0;
    const now = Date.now();
    const b = this.buckets.get(principal) ?? { tokens: this.burst, at: now };
    b.tokens = Math.min(this.burst, b.tokens + ((now - b.at) / 1000) * this.rate);
    b.at = now;
    this.buckets.set(principal, b);
    if (b.tokens < 1) return Math.max(1, Math.ceil((1 - b.tokens) / this.rate));
    b.tokens -= 1;
    return 0;
  }
}

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
      functions.set(
        name,
        (f = new LocalFunction({ name, timeoutSeconds: o.timeoutSeconds, memoryMb: o.memoryMb, env, ...(output ? { output: (stream) => output(name, stream) } : {}) })),
      );
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
      if (!h) cache.set(name, (h = load(name)));
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

/** What API Gateway answers for what Lambda returned (a Lambda proxy integration). */
function proxyAnswer(outcome: InvokeOutcome): APIGatewayProxyResult {
  if (outcome.kind === 'timeout') return gatewayAnswer('INTEGRATION_FAILURE');
  if (outcome.kind === 'error') {
    // Lambda refused the event itself: API Gateway passes Lambda's 413 on, in its own words.
    if (outcome.errorType === 'RequestEntityTooLargeException') {
      return { statusCode: 413, headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ message: 'Request Too Long' }) };
    }
    return gatewayAnswer('INTEGRATION_FAILURE');
  }
  const r = outcome.payload as Partial<APIGatewayProxyResult> | null;
  if (!r || typeof r !== 'object' || typeof r.statusCode !== 'number') return gatewayAnswer('INTEGRATION_FAILURE');
  return { statusCode: r.statusCode, headers: r.headers ?? {}, body: typeof r.body === 'string' ? r.body : '', isBase64Encoded: r.isBase64Encoded === true };
}

export async function startLocalApi(o: {
  port: number;
  /** Authorizer result cache TTL, as the deployed API's. @default 300 */
  authorizerCacheSeconds?: number;
  /** Usage-plan throttle per tenant (requests per second, burst); 0 turns it off. @default 50, 100 */
  rateLimit?: number;
  burstLimit?: number;
  host?: string;
  /** More addresses to listen on (same port), e.g. the sandbox network gateway. */
  extraHosts?: string[];
  /** How handlers run. @default in-process modules from lambdas/ (tests of the gateway); the local stack passes bundledFunctions */
  functions?: LocalFunctions;
  /** Handlers for inProcessFunctions when `functions` is not given. */
  loadHandler?: (name: HandlerName) => Promise<LambdaHandler>;
  /** API Gateway's integration timeout. @default 29 */
  integrationTimeoutSeconds?: number;
  /** The authorizer's decision. @default the project's authorizer logic (lambdas/shared/authorize.ts) */
  authorize?: typeof decide;
}): Promise<LocalApi> {
  const functions =
    o.functions ??
    inProcessFunctions(
      o.loadHandler ?? (async (name: HandlerName) => ((await import(`../../lambdas/${name}.ts`)) as { handler: LambdaHandler }).handler),
    );
  const cutAfterMs = (o.integrationTimeoutSeconds ?? integrationTimeoutSeconds) * 1000;

  const decisions = new DecisionCache((o.authorizerCacheSeconds ?? 300) * 1000, o.authorize ?? decide);
  const throttle = new Throttle(o.rateLimit ?? 50, o.burstLimit ?? 100);

  const onRequest = async (req: IncomingMessage, res: ServerResponse) => {
    const requestId = randomUUID();
    const url = new URL(req.url ?? '/', 'http://local');
    const method = (req.method ?? 'GET').toUpperCase();
    const { matches } = matchPath(url.pathname);
    const match = matches.find((m) => m.route.method === method);
    if (!match) {
      await readBody(req).catch(() => undefined);
      // A REST API answers an unknown path and an unknown method on a known path alike.
      return send(res, gatewayAnswer('MISSING_AUTHENTICATION_TOKEN'));
    }
    const body = await readBody(req);
    if (body === 'too_large') {
      res.setHeader('Connection', 'close');
      return send(res, gatewayAnswer('REQUEST_TOO_LARGE'));
    }

    // Maps, not object literals: a caller's `__proto__` or `constructor` is just a name here.
    const headerValues = new Map<string, string[]>();
    for (let i = 0; i < req.rawHeaders.length; i += 2) {
      const k = req.rawHeaders[i]!;
      headerValues.set(k, [...(headerValues.get(k) ?? []), req.rawHeaders[i + 1]!]);
    }
    const queryValues = new Map<string, string[]>();
    for (const [k, v] of url.searchParams) queryValues.set(k, [...(queryValues.get(k) ?? []), v]);
    // fromEntries defines own properties, so those names cannot reach a prototype either.
    const headers: Record<string, string> = Object.fromEntries([...headerValues].map(([k, vs]) => [k, vs.at(-1)!]));
    const multiValueHeaders: Record<string, string[]> = Object.fromEntries(headerValues);
    const query: Record<string, string> = Object.fromEntries([...queryValues].map(([k, vs]) => [k, vs.at(-1)!]));
    const multiQuery: Record<string, string[]> = Object.fromEntries(queryValues);
    const methodArn = `${arnPrefix}/${stage}/${method}${url.pathname}`;

    // The authorizer, as API Gateway runs it before the integration.
    let authorizer: Record<string, unknown> | null = null;
    if (match.route.auth !== 'none') {
      const key = Object.entries(headers).find(([k]) => k.toLowerCase() === 'x-api-key')?.[1];
      let decision: Decision;
      try {
        decision = await span('gateway.authorizer', () => decisions.get(key, methodArn));
      } catch {
        // The authorizer Lambda failed (its table unreachable, say): API Gateway's AUTHORIZER_FAILURE.
        return send(res, gatewayAnswer('AUTHORIZER_FAILURE'));
      }
      if (decision.effect === 'unauthorized') return send(res, gatewayAnswer('UNAUTHORIZED'));
      if (decision.effect === 'deny' || !allows(decision.resources, methodArn)) return send(res, gatewayAnswer('ACCESS_DENIED'));
      if (throttle.take(decision.context.tenant_id) > 0) return send(res, gatewayAnswer('THROTTLED'));
      authorizer = { ...decision.context, principalId: decision.principalId };
    }

    // API Gateway's rule: a body is binary (base64 to the handler) when its Content-Type is one of the binary media types.
    const contentType = Object.entries(headers).find(([k]) => k.toLowerCase() === 'content-type')?.[1];
    const isText = body.length === 0 || !isBinaryMediaType(contentType);
    const event: APIGatewayProxyEvent = {
      resource: match.resourcePath,
      path: url.pathname,
      httpMethod: method,
      headers,
      multiValueHeaders,
      queryStringParameters: Object.keys(query).length ? query : null,
      multiValueQueryStringParameters: Object.keys(multiQuery).length ? multiQuery : null,
      pathParameters: match.pathParameters,
      stageVariables: null,
      body: body.length === 0 ? null : isText ? body.toString('utf8') : body.toString('base64'),
      isBase64Encoded: body.length > 0 && !isText,
      requestContext: {
        accountId: '000000000000',
        apiId: 'local',
        authorizer,
        protocol: 'HTTP/1.1',
        httpMethod: method,
        identity: { sourceIp: req.socket.remoteAddress ?? '' } as APIGatewayProxyEvent['requestContext']['identity'],
        path: `/${stage}${url.pathname}`,
        stage,
        requestId,
        requestTimeEpoch: Date.now(),
        resourceId: 'local',
        resourcePath: match.resourcePath,
      },
    };
    // API Gateway stops waiting at its integration timeout, whatever the function does after.
    let timer: NodeJS.Timeout | undefined;
    const cut = new Promise<'cut'>((resolve) => (timer = setTimeout(() => resolve('cut'), cutAfterMs)));
    try {
      const outcome = await Promise.race([span('lambda.invoke', () => functions.invoke(match.route.handler, event)), cut]);
      const accept = Object.entries(headers).find(([k]) => k.toLowerCase() === 'accept')?.[1];
      send(res, outcome === 'cut' ? gatewayAnswer('INTEGRATION_TIMEOUT') : proxyAnswer(outcome), accept);
    } finally {
      clearTimeout(timer);
    }
  };

  const servers: Server[] = [];
  const listen = (host: string, port: number) =>
    new Promise<Server>((resolve, reject) => {
      const server = createServer((req, res) => {
        span('gateway.request', () => onRequest(req, res)).catch(() => {
          // A fault of the gateway itself: what API Gateway would answer for its own failure.
          if (!res.headersSent) send(res, gatewayAnswer('DEFAULT_5XX', { status: 500, message: 'the gateway failed' }));
          else res.destroy();
        });
      });
      server.keepAliveTimeout = 5000;
      // Requests Node cannot parse (bad method or request line, headers too large) get the JSON error shape too.
      server.on('clientError', (err: NodeJS.ErrnoException, socket) => {
        if (!socket.writable) return void socket.destroy();
        const tooLarge = err.code === 'HPE_HEADER_OVERFLOW';
        const body = JSON.stringify({
          error: tooLarge
            ? { code: 'payload_too_large', message: 'request headers are too large' }
            : { code: 'validation_error', message: 'the request is not valid HTTP' },
        });
        socket.end(
          `HTTP/1.1 ${tooLarge ? '431 Request Header Fields Too Large' : '400 Bad Request'}\r\nContent-Type: application/json\r\n` +
            `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
        );
      });
      server.on('error', reject);
      server.listen(port, host, () => resolve(server));
    });
  const host = o.host ?? '127.0.0.1';
  servers.push(await listen(host, o.port));
  const port = (servers[0]!.address() as { port: number }).port;
  const urls: string[] = [];
  for (const extra of o.extraHosts ?? []) {
    const s = await listen(extra, port);
    servers.push(s);
    urls.push(`http://${extra}:${port}`);
  }
  return {
    url: `http://${host}:${port}`,
    urls,
    functions,
    async serveOn(address: string) {
      const url = `http://${address}:${port}`;
      if (!urls.includes(url)) {
        servers.push(await listen(address, port));
        urls.push(url);
      }
      return url;
    },
    close: async () => {
      await functions.close();
      await Promise.all(
        servers.map(
          (s) =>
            new Promise<void>((r) => {
              s.closeAllConnections();
              s.close(() => r());
            }),
        ),
      );
    },
  };
}
