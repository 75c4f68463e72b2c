/**
 * The answers API Gateway makes itself are the same locally and deployed:
 * each case is provoked on the local gateway (handlers and authorizer stood
 * in by test functions in this process) and its status, headers and error
 * code compared with the gateway response the CDK configures for it, read
 * from the synthesized template.
 * Run: node --import tsx --test test/cdk/gateway-parity.test.ts
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Decision } from '../../lambdas/shared/authorize';
import type { APIGatewayProxyEvent } from 'aws-lambda';
import { binaryMediaTypes, gatewayResponses, type GatewayResponseType } from '../../lambdas/shared/gateway';
import { startLocalApi, type LocalApi } from '../../lib/local/api-gateway';
import { resourcesOf, synth } from './fixture';

/** What the deployed API answers for a response type, read from the template. */
function deployed(type: GatewayResponseType): { status?: string; headers: Record<string, string>; code: string } {
  const found = resourcesOf(synth('dev').serviceTemplate, 'AWS::ApiGateway::GatewayResponse')
    .map(([, r]) => r.Properties!)
    .find((p) => p.ResponseType === type);
  assert.ok(found, `the CDK configures no ${type} response`);
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(found.ResponseParameters ?? {})) {
    headers[k.replace('gatewayresponse.header.', '').toLowerCase()] = String(v).replace(/^'|'$/g, '');
  }
  const body = JSON.parse(String(found.ResponseTemplates['application/json']).replace('$context.error.messageString', '"m"'));
  return { status: found.StatusCode, headers, code: body.error.code };
}

const allowAll: Decision = {
  effect: 'allow',
  principalId: 'tenant:t',
  resources: ['arn:aws:execute-api:local:000000000000:local/local/*'],
  context: { tenant_id: 't', principal_kind: 'api-key', sandbox_id: '', key_id: 'k' },
};
/** A sandbox token: heartbeat of its own sandbox only. */
const tokenDecision: Decision = {
  ...allowAll,
  principalId: 'sandbox:sbx-aaaaaaaaaaaaaaaaaaaa',
  resources: ['arn:aws:execute-api:local:000000000000:local/local/POST/sandboxes/sbx-aaaaaaaaaaaaaaaaaaaa/heartbeat'],
  context: { tenant_id: 't', principal_kind: 'sandbox-token', sandbox_id: 'sbx-aaaaaaaaaaaaaaaaaaaa', key_id: '' },
};

let api: LocalApi;
let throttled: LocalApi;
/** Its file routes echo what the gateway passed them, and answer every byte value base64-encoded. */
let binary: LocalApi;
const allBytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i));

before(async () => {
  const authorize = async (key: string | undefined): Promise<Decision> => {
    if (key === undefined) return { effect: 'unauthorized' };
    if (key === 'good') return allowAll;
    if (key === 'token') return tokenDecision;
    if (key === 'broken') throw new Error('the key table is unreachable');
    return { effect: 'deny' };
  };
  const loadHandler = async (name: string) => async () => {
    if (name === 'get-sandbox') return new Promise<never>(() => undefined); // never answers
    if (name === 'list-sandboxes') throw new Error('the handler crashed');
    return { statusCode: 200, headers: { 'Content-Type': 'application/json' }, body: '{}' };
  };
  api = await startLocalApi({ port: 0, authorize, loadHandler: loadHandler as never, integrationTimeoutSeconds: 1, rateLimit: 0 });
  throttled = await startLocalApi({ port: 0, authorize, loadHandler: loadHandler as never, rateLimit: 1, burstLimit: 1 });
  const echo = async () => async (event: APIGatewayProxyEvent) =>
    event.httpMethod === 'GET'
      ? { statusCode: 200, headers: { 'Content-Type': 'application/octet-stream' }, body: allBytes.toString('base64'), isBase64Encoded: true }
      : { statusCode: 200, headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ base64: event.isBase64Encoded, body: event.body }) };
  binary = await startLocalApi({ port: 0, authorize, loadHandler: echo as never, rateLimit: 0 });
});
after(async () => {
  await api?.close();
  await throttled?.close();
  await binary?.close();
});

async function call(base: string, method: string, path: string, o: { key?: string; body?: string | Buffer } = {}) {
  const res = await fetch(base + path, {
    method,
    headers: { ...(o.key ? { 'X-API-Key': o.key } : {}) },
    ...(o.body !== undefined ? { body: o.body } : {}),
  });
  return { status: res.status, headers: res.headers, body: JSON.parse(await res.text()) as { error: { code: string } } };
}

describe('the local gateway answers as the deployed one is configured to', () => {
  const cases: [GatewayResponseType, () => ReturnType<typeof call>][] = [
    ['MISSING_AUTHENTICATION_TOKEN', () => call(api.url, 'GET', '/no/such/route', { key: 'good' })],
    ['MISSING_AUTHENTICATION_TOKEN', () => call(api.url, 'PUT', '/sandboxes', { key: 'good' })],
    ['UNAUTHORIZED', () => call(api.url, 'GET', '/sandboxes')],
    ['ACCESS_DENIED', () => call(api.url, 'GET', '/sandboxes', { key: 'wrong' })],
    ['ACCESS_DENIED', () => call(api.url, 'GET', '/sandboxes', { key: 'token' })],
    ['AUTHORIZER_FAILURE', () => call(api.url, 'GET', '/sandboxes', { key: 'broken' })],
    ['REQUEST_TOO_LARGE', () => call(api.url, 'POST', '/sandboxes', { key: 'good', body: Buffer.alloc(10 * 1024 * 1024 + 1, 'a') })],
    ['INTEGRATION_TIMEOUT', () => call(api.url, 'GET', '/sandboxes/sbx-aaaaaaaaaaaaaaaaaaaa', { key: 'good' })],
    ['INTEGRATION_FAILURE', () => call(api.url, 'GET', '/sandboxes', { key: 'good' })],
    [
      'THROTTLED',
      async () => {
        await call(throttled.url, 'POST', '/sandboxes', { key: 'good', body: '{}' });
        return call(throttled.url, 'POST', '/sandboxes', { key: 'good', body: '{}' });
      },
    ],
  ];
  for (const [type, provoke] of cases) {
    it(`${type}: same status, headers and error code`, async () => {
      const want = deployed(type);
      const got = await provoke();
      assert.equal(String(got.status), want.status, `${type} status`);
      assert.equal(got.body.error.code, want.code);
      for (const [name, value] of Object.entries(want.headers)) assert.equal(got.headers.get(name), value, `${type} header ${name}`);
    });
  }

  it('configures every response of the shared table on the deployed API', () => {
    const configured = resourcesOf(synth('dev').serviceTemplate, 'AWS::ApiGateway::GatewayResponse').map(([, r]) => r.Properties!.ResponseType);
    assert.deepEqual(configured.sort(), gatewayResponses.map((r) => r.type).sort());
  });

  it('lets the handler answer as it likes when it is in time', async () => {
    const res = await call(api.url, 'POST', '/sandboxes', { key: 'good', body: '{}' });
    assert.equal(res.status, 200);
  });
});

describe('binary bodies: the local gateway decides text or base64 as the deployed API is configured to', () => {
  const files = '/sandboxes/sbx-aaaaaaaaaaaaaaaaaaaa/files?path=x';
  const send = (contentType: string | undefined, body: Buffer) =>
    fetch(binary.url + files, { method: 'PUT', headers: { 'X-API-Key': 'good', ...(contentType ? { 'Content-Type': contentType } : {}) }, body }).then(
      async (r) => (await r.json()) as { base64: boolean; body: string },
    );

  it('configures the deployed REST API with the shared binary media types', () => {
    const apis = resourcesOf(synth('dev').serviceTemplate, 'AWS::ApiGateway::RestApi');
    assert.equal(apis.length, 1);
    assert.deepEqual(apis[0]![1].Properties!.BinaryMediaTypes, [...binaryMediaTypes]);
  });

  it('passes a body with a binary Content-Type as base64 (every byte kept), and any other as UTF-8 text, NUL bytes or not', async () => {
    const asBinary = await send('application/octet-stream', allBytes);
    assert.equal(asBinary.base64, true);
    assert.deepEqual(Buffer.from(asBinary.body, 'base64'), allBytes);
    const asText = await send('text/plain', allBytes);
    assert.equal(asText.base64, false, 'a NUL byte does not make a body binary; its Content-Type does');
    assert.notDeepEqual(Buffer.from(asText.body, 'utf8'), allBytes, 'bytes that are not UTF-8 are lost on the text path, as on API Gateway');
    assert.equal((await send(undefined, Buffer.from('{"a":1}'))).base64, false);
  });

  it('answers a base64 body as bytes only when the first Accept type is binary, else as the base64 text', async () => {
    const read = (accept?: string) =>
      fetch(binary.url + files, { headers: { 'X-API-Key': 'good', ...(accept ? { Accept: accept } : {}) } }).then(async (r) =>
        Buffer.from(await r.arrayBuffer()),
      );
    assert.deepEqual(await read('application/octet-stream'), allBytes);
    assert.deepEqual(await read('application/octet-stream;q=1, */*'), allBytes);
    assert.equal((await read('*/*')).toString('latin1'), allBytes.toString('base64'));
    assert.equal((await read('application/json, application/octet-stream')).toString('latin1'), allBytes.toString('base64'));
  });
});
