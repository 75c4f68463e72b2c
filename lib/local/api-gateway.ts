/**
 * The local API Gateway: turns HTTP requests into API Gateway REST proxy
 * events and calls the same handler modules the Lambdas run, from the same
 * route table the CDK stack reads, behind the same authorizer code.
 */
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { APIGatewayProxyEvent, APIGatewayProxyResult, Context } from 'aws-lambda';
import { allows, decide, type Decision } from '../../lambdas/shared/authorize';
import { errorResponse } from '../../lambdas/shared/http';
import { ApiError } from '../../lambdas/shared/errors';
import { routes, type HandlerName, type Route } from '../../lambdas/shared/routes';

/** API Gateway's own payload cap; the handlers enforce the API's smaller one. */
const gatewayMaxBody = 10 * 1024 * 1024;
const stage = 'local';
const arnPrefix = 'arn:aws:execute-api:local:000000000000:local';

type LambdaHandler = (event: APIGatewayProxyEvent, context: Context) => Promise<APIGatewayProxyResult>;

export interface LocalApi {
  url: string;
  /** Extra addresses served (e.g. the sandbox network's gateway). */
  urls: string[];
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

function send(res: ServerResponse, result: APIGatewayProxyResult): void {
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(result.headers ?? {})) headers[k] = String(v);
  res.writeHead(result.statusCode, headers);
  res.end(result.isBase64Encoded ? Buffer.from(result.body, 'base64') : result.body);
}

function gatewayError(status: number, code: ConstructorParameters<typeof ApiError>[1], message: string): APIGatewayProxyResult {
  return errorResponse(new ApiError(status, code, message));
}

async function readBody(req: IncomingMessage): Promise<Buffer | 'too_large'> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > gatewayMaxBody) return 'too_large';
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

function lambdaContext(name: string, requestId: string): Context {
  return {
    callbackWaitsForEmptyEventLoop: true,
    functionName: name,
    functionVersion: '$LATEST',
    invokedFunctionArn: `arn:aws:lambda:local:000000000000:function:${name}`,
    memoryLimitInMB: '512',
    awsRequestId: requestId,
    logGroupName: `/aws/lambda/${name}`,
    logStreamName: 'local',
    getRemainingTimeInMillis: () => 900_000,
    done: () => undefined,
    fail: () => undefined,
    succeed: () => undefined,
  };
}

/** API Gateway's authorizer result cache: one decision per key for `ttlMs`. */
class DecisionCache {
  private readonly entries = new Map<string, { decision: Decision; expires: number }>();
  constructor(private readonly ttlMs: number) {}
  async get(key: string | undefined, methodArn: string): Promise<Decision> {
    // Like API Gateway, the cache is keyed by the identity source (the key) only.
    if (this.ttlMs <= 0 || key === undefined) return decide(key, methodArn);
    const hit = this.entries.get(key);
    if (hit && hit.expires > Date.now()) return hit.decision;
    const decision = await decide(key, methodArn);
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
  loadHandler?: (name: HandlerName) => Promise<LambdaHandler>;
}): Promise<LocalApi> {
  const cache = new Map<HandlerName, Promise<LambdaHandler>>();
  const load =
    o.loadHandler ??
    (async (name: HandlerName) => ((await import(`../../lambdas/${name}.ts`)) as { handler: LambdaHandler }).handler);
  const handlerFor = (name: HandlerName) => {
    let h = cache.get(name);
    if (!h) cache.set(name, (h = load(name)));
    return h;
  };

  const decisions = new DecisionCache((o.authorizerCacheSeconds ?? 300) * 1000);
  const throttle = new Throttle(o.rateLimit ?? 50, o.burstLimit ?? 100);

  const onRequest = async (req: IncomingMessage, res: ServerResponse) => {
    const requestId = randomUUID();
    const url = new URL(req.url ?? '/', 'http://local');
    const method = (req.method ?? 'GET').toUpperCase();
    const { matches, pathExists } = matchPath(url.pathname);
    const match = matches.find((m) => m.route.method === method);
    if (!match) {
      await readBody(req).catch(() => undefined);
      if (pathExists) {
        const allowed = matches.map((m) => m.route.method).join(', ');
        return send(res, { ...gatewayError(405, 'method_not_allowed', `${method} is not allowed on ${url.pathname}; use ${allowed}`) });
      }
      return send(res, gatewayError(404, 'not_found', `no route for ${method} ${url.pathname}`));
    }
    const body = await readBody(req);
    if (body === 'too_large') {
      res.setHeader('Connection', 'close');
      return send(res, gatewayError(413, 'payload_too_large', `request body exceeds ${gatewayMaxBody} bytes`));
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
      try {
        const decision = await decisions.get(key, methodArn);
        if (decision.effect === 'unauthorized') return send(res, gatewayError(401, 'missing_api_key', 'the X-API-Key header is required'));
        if (decision.effect === 'deny') return send(res, gatewayError(403, 'invalid_api_key', 'the API key is not valid'));
        if (!allows(decision.resources, methodArn)) {
          return send(res, gatewayError(403, 'forbidden', 'this key may not call this route'));
        }
        const wait = throttle.take(decision.context.tenant_id);
        if (wait > 0) {
          return send(res, errorResponse(new ApiError(429, 'too_many_requests', 'request rate over the limit for this tenant; slow down', { 'Retry-After': String(wait) })));
        }
        authorizer = { ...decision.context, principalId: decision.principalId };
      } catch (err) {
        return send(res, errorResponse(err, requestId));
      }
    }

    const isText = body.length === 0 || !body.includes(0);
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
    try {
      const handler = await handlerFor(match.route.handler);
      send(res, await handler(event, lambdaContext(match.route.handler, requestId)));
    } catch (err) {
      // What API Gateway does when the integration fails: a 5xx, in our error shape.
      send(res, errorResponse(err, requestId));
    }
  };

  const servers: Server[] = [];
  const listen = (host: string, port: number) =>
    new Promise<Server>((resolve, reject) => {
      const server = createServer((req, res) => {
        onRequest(req, res).catch((err) => {
          if (!res.headersSent) send(res, errorResponse(err));
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
    close: async () => {
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
