/**
 * The local API Gateway: turns HTTP requests into API Gateway REST proxy
 * events and invokes the handlers as Lambda would (lib/local/lambda-runtime.ts:
 * the deployed bundles, in workers, stopped at their timeout), from the same
 * route table the CDK stack reads, behind the same authorizer code. Its own
 * answers (no route, no key, denied, throttled, too large, timed out) come
 * from the table the CDK configures the deployed gateway with
 * (lambdas/shared/gateway.ts), and it cuts every request at API Gateway's
 * integration timeout.
 *
 * The pieces, in lib/local/gateway/: routing (which route), authorization
 * (the authorizer cache and what a decision lets through), throttle (usage
 * plans), proxy-event (what a handler receives), responses (what leaves),
 * functions (how handlers run). This module is the HTTP servers and the order
 * of those steps.
 */
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { decide, type Decision } from '../../lambdas/shared/authorize';
import { integrationTimeoutSeconds, renderGatewayResponse } from '../../lambdas/shared/gateway';
import type { HandlerName } from '../../lambdas/shared/routes';
import { span } from '../../lambdas/shared/timing';
import { admit, DecisionCache } from './gateway/authorization';
import { inProcessFunctions, type LambdaHandler, type LocalFunctions } from './gateway/functions';
import { headerValue, methodArn, proxyEvent, requestValues } from './gateway/proxy-event';
import { proxyAnswer, readBody, send, unparsableRequestAnswer } from './gateway/responses';
import { matchRoute } from './gateway/routing';
import { Throttle } from './gateway/throttle';

// The local stack picks how handlers run; it reaches the choices through this module.
export { bundledFunctions, type LocalFunctions } from './gateway/functions';

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
    inProcessFunctions(o.loadHandler ?? (async (name: HandlerName) => ((await import(`../../lambdas/${name}.ts`)) as { handler: LambdaHandler }).handler));
  const cutAfterMs = (o.integrationTimeoutSeconds ?? integrationTimeoutSeconds) * 1000;

  const decisions = new DecisionCache((o.authorizerCacheSeconds ?? 300) * 1000, o.authorize ?? decide);
  const throttle = new Throttle(o.rateLimit ?? 50, o.burstLimit ?? 100);

  const onRequest = async (req: IncomingMessage, res: ServerResponse) => {
    const requestId = randomUUID();
    const url = new URL(req.url ?? '/', 'http://local');
    const method = (req.method ?? 'GET').toUpperCase();
    const match = matchRoute(method, url.pathname);
    if (!match) {
      await readBody(req).catch(() => undefined);
      // A REST API answers an unknown path and an unknown method on a known path alike.
      return send(res, renderGatewayResponse('MISSING_AUTHENTICATION_TOKEN'));
    }
    const body = await readBody(req);
    if (body === 'too_large') {
      res.setHeader('Connection', 'close');
      return send(res, renderGatewayResponse('REQUEST_TOO_LARGE'));
    }
    const values = requestValues(req.rawHeaders, url.searchParams);

    // The authorizer, as API Gateway runs it before the integration.
    let authorizer: Record<string, unknown> | null = null;
    if (match.route.auth !== 'none') {
      const arn = methodArn(method, url.pathname);
      let decision: Decision;
      try {
        decision = await span('gateway.authorizer', () => decisions.get(headerValue(values.headers, 'x-api-key'), arn));
      } catch {
        // The authorizer Lambda failed (its table unreachable, say): API Gateway's AUTHORIZER_FAILURE.
        return send(res, renderGatewayResponse('AUTHORIZER_FAILURE'));
      }
      const admission = admit(decision, arn, throttle);
      if (!admission.admitted) return send(res, renderGatewayResponse(admission.refusal));
      authorizer = admission.authorizer;
    }

    const event = proxyEvent({
      method,
      url,
      values,
      body,
      match,
      authorizer,
      sourceIp: req.socket.remoteAddress ?? '',
      requestId,
      requestTimeEpoch: Date.now(),
    });
    // API Gateway stops waiting at its integration timeout, whatever the function does after.
    let timer: NodeJS.Timeout | undefined;
    const cut = new Promise<'cut'>((resolve) => (timer = setTimeout(() => resolve('cut'), cutAfterMs)));
    try {
      const outcome = await Promise.race([span('lambda.invoke', () => functions.invoke(match.route.handler, event)), cut]);
      send(res, outcome === 'cut' ? renderGatewayResponse('INTEGRATION_TIMEOUT') : proxyAnswer(outcome), headerValue(values.headers, 'accept'));
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
          if (!res.headersSent) send(res, renderGatewayResponse('DEFAULT_5XX', { status: 500, message: 'the gateway failed' }));
          else res.destroy();
        });
      });
      server.keepAliveTimeout = 5000;
      // Requests Node cannot parse (bad method or request line, headers too large) get the JSON error shape too.
      server.on('clientError', (err: NodeJS.ErrnoException, socket) => {
        if (!socket.writable) return void socket.destroy();
        socket.end(unparsableRequestAnswer(err.code));
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
