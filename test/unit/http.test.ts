import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { APIGatewayProxyEvent, Context } from 'aws-lambda';
import { apiHandler, parse } from '../../lambdas/shared/http';
import { ApiError } from '../../lambdas/shared/errors';
import { execBody } from '../../lambdas/shared/schemas';
import { allows } from '../../lambdas/shared/authorize';
import { canonicalPath, handlerNames, routes } from '../../lambdas/shared/routes';

const ctx = { awsRequestId: 'req-1' } as Context;
function event(over: Partial<APIGatewayProxyEvent> = {}): APIGatewayProxyEvent {
  return {
    body: null,
    headers: {},
    httpMethod: 'POST',
    isBase64Encoded: false,
    path: '/x',
    pathParameters: null,
    queryStringParameters: null,
    multiValueHeaders: {},
    multiValueQueryStringParameters: null,
    stageVariables: null,
    resource: '/x',
    requestContext: { authorizer: { tenant_id: 't1', principal_kind: 'api-key' } } as any,
    ...over,
  };
}

describe('the API handler wrapper', () => {
  const echo = apiHandler(async (req) => ({ status: 200, body: { got: req.body, tenant: req.principal.tenantId } }));

  it('parses a JSON body and passes the tenant', async () => {
    const res = await echo(event({ body: '{"a":1}' }), ctx);
    assert.equal(res.statusCode, 200);
    assert.deepEqual(JSON.parse(res.body), { got: { a: 1 }, tenant: 't1' });
  });

  it('answers 400 invalid_json for a broken body', async () => {
    const res = await echo(event({ body: '{"a":' }), ctx);
    assert.equal(res.statusCode, 400);
    assert.equal(JSON.parse(res.body).error.code, 'invalid_json');
  });

  it('answers 413 for a body over the limit', async () => {
    const res = await echo(event({ body: JSON.stringify({ a: 'x'.repeat(300_000) }) }), ctx);
    assert.equal(res.statusCode, 413);
  });

  it('answers 401 when no authorizer context is present', async () => {
    const res = await echo(event({ requestContext: {} as any }), ctx);
    assert.equal(res.statusCode, 401);
  });

  it('maps an unexpected error to a 500 in the JSON error shape without leaking it', async () => {
    const boom = apiHandler(async () => {
      throw new Error('secret detail');
    });
    const res = await boom(event(), ctx);
    assert.equal(res.statusCode, 500);
    const body = JSON.parse(res.body);
    assert.equal(body.error.code, 'internal_error');
    assert.doesNotMatch(body.error.message, /secret/);
  });

  it("ends the handler's work within the gateway's limit counted from the request time (a cold start ate part of it)", async () => {
    const seen = apiHandler(async (req) => ({ status: 200, body: { deadline: req.deadline } }));
    const started = Date.now();
    const late = await seen(event({ requestContext: { ...event().requestContext, requestTimeEpoch: started - 20_000 } as any }), ctx);
    // 29 s from the request, less the 4 s kept for the answer's trip back: 5 s from now, not the handler's 25 s budget.
    assert.equal(JSON.parse(late.body).deadline, started - 20_000 + 25_000);
    const fresh = await seen(event({ requestContext: { ...event().requestContext, requestTimeEpoch: Date.now() } as any }), ctx);
    const budget = JSON.parse(fresh.body).deadline - Date.now();
    assert.ok(budget > 24_000 && budget <= 25_000, `a request that just arrived keeps the handler's budget (${budget} ms)`);
  });

  it('names the offending field in validation errors', () => {
    assert.throws(
      () => parse(execBody, { command: 'ls', timeout: 700 }),
      (err: unknown) => err instanceof ApiError && err.status === 400 && /^timeout:/.test(err.message),
    );
  });
});

describe('the route table', () => {
  it('names only handlers that exist and has no duplicate method+path', () => {
    const seen = new Set<string>();
    for (const r of routes) {
      assert.ok(handlerNames.includes(r.handler));
      const key = `${r.method} ${r.path}`;
      assert.ok(!seen.has(key), key);
      seen.add(key);
    }
  });

  it('has aliases only of routes that are not aliases themselves, with the same method, handler and auth', () => {
    for (const alias of routes.filter((r) => r.aliasOf)) {
      const target = routes.find((r) => r.method === alias.method && r.path === alias.aliasOf);
      assert.ok(target, `${alias.method} ${alias.path}: ${alias.aliasOf} is a route`);
      assert.equal(target.aliasOf, undefined);
      assert.deepEqual({ handler: alias.handler, auth: alias.auth, body: alias.body }, { handler: target.handler, auth: target.auth, body: target.body });
    }
  });

  it('answers /stop and /start as /pause and /resume, and every other route as itself', () => {
    assert.equal(canonicalPath('POST', '/sandboxes/{id}/stop'), '/sandboxes/{id}/pause');
    assert.equal(canonicalPath('POST', '/sandboxes/{id}/start'), '/sandboxes/{id}/resume');
    assert.equal(canonicalPath('POST', '/sandboxes/{id}/pause'), '/sandboxes/{id}/pause');
    assert.equal(canonicalPath('POST', '/sandboxes/{id}/resume'), '/sandboxes/{id}/resume');
    assert.equal(canonicalPath('GET', '/sandboxes/{id}/stop'), '/sandboxes/{id}/stop', 'the method is part of the route');
  });
});

describe('authorizer policies', () => {
  const base = 'arn:aws:execute-api:us-east-1:1:api/prod';
  it('lets a sandbox token call only its own signal routes', () => {
    const resources = [`${base}/POST/sandboxes/sbx-aaaaaaaaaaaaaaaaaaaa/heartbeat`];
    assert.ok(allows(resources, `${base}/POST/sandboxes/sbx-aaaaaaaaaaaaaaaaaaaa/heartbeat`));
    assert.ok(!allows(resources, `${base}/POST/sandboxes/sbx-aaaaaaaaaaaaaaaaaaaa/exec`));
    assert.ok(!allows(resources, `${base}/POST/sandboxes/sbx-bbbbbbbbbbbbbbbbbbbb/heartbeat`));
  });
  it('lets an API key call any route of the stage', () => {
    assert.ok(allows([`${base}/*`], `${base}/DELETE/sandboxes/sbx-aaaaaaaaaaaaaaaaaaaa`));
    assert.ok(!allows([`${base}/*`], `arn:aws:execute-api:us-east-1:1:api/dev/GET/sandboxes`));
  });
});
