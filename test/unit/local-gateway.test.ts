import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Decision } from '../../lambdas/shared/authorize';
import { admit, DecisionCache } from '../../lib/local/gateway/authorization';
import { headerValue, methodArn, proxyEvent, requestValues } from '../../lib/local/gateway/proxy-event';
import { proxyAnswer, unparsableRequestAnswer } from '../../lib/local/gateway/responses';
import { matchRoute } from '../../lib/local/gateway/routing';
import { Throttle } from '../../lib/local/gateway/throttle';

/** A clock the test moves by hand. */
function clock(start = 1_000_000) {
  let t = start;
  return {
    now: () => t,
    advance: (ms: number) => {
      t += ms;
    },
  };
}

const allowAll = (tenant = 't1'): Decision => ({
  effect: 'allow',
  principalId: 'key-1',
  resources: ['arn:aws:execute-api:local:000000000000:local/local/*'],
  context: { tenant_id: tenant, principal_kind: 'api-key', sandbox_id: '', key_id: 'key-1' },
});

describe('the local gateway: usage-plan throttle', () => {
  it('lets a burst through, then refuses until tokens come back at the rate', () => {
    const c = clock();
    const throttle = new Throttle(2, 3, c.now);
    assert.deepEqual([throttle.take('a'), throttle.take('a'), throttle.take('a')], [0, 0, 0]);
    assert.equal(throttle.take('a'), 1);
    c.advance(500); // one token at 2/s
    assert.equal(throttle.take('a'), 0);
    assert.equal(throttle.take('a'), 1);
  });

  it('keeps one bucket per caller and never holds more than the burst', () => {
    const c = clock();
    const throttle = new Throttle(1, 1, c.now);
    assert.equal(throttle.take('a'), 0);
    assert.equal(throttle.take('b'), 0);
    c.advance(60_000);
    assert.equal(throttle.take('a'), 0);
    assert.equal(throttle.take('a'), 1);
  });

  it('answers the whole seconds to wait, at least one', () => {
    const c = clock();
    const throttle = new Throttle(0.25, 1, c.now);
    assert.equal(throttle.take('a'), 0);
    assert.equal(throttle.take('a'), 4);
  });

  it('is off at rate 0', () => {
    const throttle = new Throttle(0, 0);
    for (let i = 0; i < 100; i++) assert.equal(throttle.take('a'), 0);
  });
});

describe('the local gateway: authorization', () => {
  it('asks the authorizer once per key for the cache TTL, then again', async () => {
    const c = clock();
    let asked = 0;
    const cache = new DecisionCache(1_000, async () => (asked++, allowAll()), c.now);
    await cache.get('k', 'arn');
    await cache.get('k', 'arn');
    assert.equal(asked, 1);
    c.advance(1_001);
    await cache.get('k', 'arn');
    assert.equal(asked, 2);
  });

  it('never caches a missing key', async () => {
    let asked = 0;
    const cache = new DecisionCache(60_000, async () => (asked++, { effect: 'unauthorized' }));
    await cache.get(undefined, 'arn');
    await cache.get(undefined, 'arn');
    assert.equal(asked, 2);
  });

  it('refuses no key with UNAUTHORIZED, a bad key or a route outside the policy with ACCESS_DENIED', () => {
    const throttle = new Throttle(0, 0);
    const arn = methodArn('GET', '/sandboxes');
    assert.deepEqual(admit({ effect: 'unauthorized' }, arn, throttle), { admitted: false, refusal: 'UNAUTHORIZED' });
    assert.deepEqual(admit({ effect: 'deny' }, arn, throttle), { admitted: false, refusal: 'ACCESS_DENIED' });
    const narrow: Decision = { ...allowAll(), resources: [methodArn('POST', '/sandboxes/sbx-1/heartbeat')] } as Decision;
    assert.deepEqual(admit(narrow, arn, throttle), { admitted: false, refusal: 'ACCESS_DENIED' });
  });

  it('throttles per tenant and hands the handler the context and principal', () => {
    const throttle = new Throttle(1, 1, clock().now);
    const arn = methodArn('GET', '/sandboxes');
    const first = admit(allowAll('t1'), arn, throttle);
    assert.deepEqual(first, {
      admitted: true,
      authorizer: { tenant_id: 't1', principal_kind: 'api-key', sandbox_id: '', key_id: 'key-1', principalId: 'key-1' },
    });
    assert.deepEqual(admit(allowAll('t1'), arn, throttle), { admitted: false, refusal: 'THROTTLED' });
    assert.equal(admit(allowAll('t2'), arn, throttle).admitted, true);
  });
});

describe('the local gateway: routing and the proxy event', () => {
  it('matches the shared route table by method and path, decoding parameters', () => {
    const m = matchRoute('GET', '/sandboxes/sbx%2D1');
    assert.equal(m?.route.handler, 'get-sandbox');
    assert.deepEqual(m?.pathParameters, { id: 'sbx-1' });
    assert.equal(matchRoute('GET', '/health')?.pathParameters, null);
    assert.equal(matchRoute('PATCH', '/sandboxes'), undefined);
    assert.equal(matchRoute('GET', '/nowhere'), undefined);
  });

  it('builds the REST proxy event: last and all values, prototype names as plain keys, a binary body in base64', () => {
    const url = new URL('http://local/sandboxes/sbx-1?a=1&a=2&__proto__=x');
    const values = requestValues(['X-Thing', 'one', 'X-Thing', 'two', 'Content-Type', 'application/octet-stream'], url.searchParams);
    const event = proxyEvent({
      method: 'GET',
      url,
      values,
      body: Buffer.from([0, 1, 2]),
      match: matchRoute('GET', url.pathname)!,
      authorizer: null,
      sourceIp: '127.0.0.1',
      requestId: 'r-1',
      requestTimeEpoch: 5,
    });
    assert.equal(event.headers['X-Thing'], 'two');
    assert.deepEqual(event.multiValueHeaders['X-Thing'], ['one', 'two']);
    assert.deepEqual(event.multiValueQueryStringParameters?.a, ['1', '2']);
    assert.ok(Object.hasOwn(event.queryStringParameters!, '__proto__'));
    assert.equal(event.isBase64Encoded, true);
    assert.equal(event.body, Buffer.from([0, 1, 2]).toString('base64'));
    assert.equal(event.resource, '/sandboxes/{id}');
    assert.equal(event.requestContext.path, '/local/sandboxes/sbx-1');
    assert.equal(headerValue(event.headers, 'content-type'), 'application/octet-stream');
  });
});

describe('the local gateway: answers', () => {
  it("passes a handler's answer on and turns a timeout, a crash or a malformed answer into an integration failure", () => {
    assert.deepEqual(proxyAnswer({ kind: 'ok', payload: { statusCode: 201, body: '{}' } }), {
      statusCode: 201,
      headers: {},
      body: '{}',
      isBase64Encoded: false,
    });
    for (const outcome of [
      { kind: 'timeout' as const },
      { kind: 'error' as const, errorType: 'Error', errorMessage: 'x' },
      { kind: 'ok' as const, payload: 'nope' },
    ]) {
      assert.equal(proxyAnswer(outcome).statusCode, 502);
    }
    assert.equal(proxyAnswer({ kind: 'error', errorType: 'RequestEntityTooLargeException', errorMessage: 'x' }).statusCode, 413);
  });

  it('answers unparsable HTTP with 400 and oversized headers with 431, in the JSON error shape', () => {
    assert.match(unparsableRequestAnswer('HPE_INVALID_METHOD'), /^HTTP\/1\.1 400 [\s\S]*"validation_error"/);
    assert.match(unparsableRequestAnswer('HPE_HEADER_OVERFLOW'), /^HTTP\/1\.1 431 [\s\S]*"payload_too_large"/);
  });
});
