/**
 * The shared SigV4 check (lib/local/sigv4.ts) against AWS's own signer
 * (@smithy/signature-v4, what SDK v3 clients use): what it signs is admitted,
 * whatever the path, query and headers; anything else is refused, with the
 * fault the service's error code is chosen from. Pure functions, no network.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { checkSignature, generateLocalCredentials, readSignatureClaim, SignatureRefusedError, type SigningPolicy, type SignedRequestParts } from '../../lib/local/sigv4';
import { signRequest, type RawRequest } from '../support/sigv4';

const credentials = generateLocalCredentials();
const endpoint = 'http://127.0.0.1:4569';

function policy(service: string, extra: Partial<SigningPolicy> = {}): SigningPolicy {
  return { credentials, service, protocol: service === 's3' ? 'xml' : 'json', maxBodyBytes: 1 << 20, ...extra };
}

/** Signs like a client, then checks like the endpoint; answers the fault or 'admitted'. */
async function verdict(
  raw: RawRequest,
  service: string,
  o: { as?: typeof credentials; tamper?: Parameters<typeof signRequest>[4]; policy?: Partial<SigningPolicy> } = {},
): Promise<string> {
  const signed = await signRequest(endpoint, raw, o.as ?? credentials, service, o.tamper);
  const rawHeaders = [['Host', signed.url.host], ...Object.entries(signed.headers)].flat();
  const parts: SignedRequestParts = { method: signed.method, url: signed.url.pathname + signed.url.search, rawHeaders };
  const body = signed.body === undefined ? undefined : Buffer.from(signed.body);
  try {
    const p = policy(service, o.policy);
    checkSignature(parts, readSignatureClaim(parts, p), body, p);
    return 'admitted';
  } catch (err) {
    if (err instanceof SignatureRefusedError) return err.fault;
    throw err;
  }
}

describe('SigV4 check: what AWS clients sign is admitted', () => {
  it('admits a DynamoDB-style JSON request signed with the stack credentials', async () => {
    const raw = { headers: { 'content-type': 'application/x-amz-json-1.0', 'x-amz-target': 'DynamoDB_20120810.ListTables' }, body: '{}' };
    assert.equal(await verdict(raw, 'dynamodb'), 'admitted');
  });

  it('admits S3 keys with spaces, pluses, unicode and reserved characters, and queries with odd values', async () => {
    for (const path of ['/bucket/a%20b/c%2Bd', "/bucket/%C3%A9t%C3%A9/x~y_z-(1)!*'.txt", '/bucket/dir/', '/bucket']) {
      assert.equal(await verdict({ method: 'GET', path }, 's3'), 'admitted', path);
    }
    const query = '/bucket?list-type=2&prefix=tenants%2Ft%2Fusers%2Fu%20x%2F&delimiter=%2F&continuation-token=a%2Bb%3D%3D&fetch-owner';
    assert.equal(await verdict({ method: 'GET', path: query }, 's3'), 'admitted');
  });

  it('admits an S3 upload whose body matches its signed hash, and an UNSIGNED-PAYLOAD one', async () => {
    assert.equal(await verdict({ method: 'PUT', path: '/bucket/k', body: 'hello' }, 's3'), 'admitted');
    assert.equal(await verdict({ method: 'PUT', path: '/bucket/k', body: 'hello', headers: { 'x-amz-content-sha256': 'UNSIGNED-PAYLOAD' } }, 's3'), 'admitted');
  });
});

describe('SigV4 check: everything else is refused', () => {
  const listTables = { headers: { 'content-type': 'application/x-amz-json-1.0', 'x-amz-target': 'DynamoDB_20120810.ListTables' }, body: '{}' };

  it('refuses a request with no signature', async () => {
    const parts: SignedRequestParts = { method: 'POST', url: '/', rawHeaders: ['Host', '127.0.0.1:1', 'X-Amz-Target', 'DynamoDB_20120810.ListTables'] };
    assert.throws(() => readSignatureClaim(parts, policy('dynamodb')), (e) => e instanceof SignatureRefusedError && e.fault === 'missing');
  });

  it("refuses another key, s3rver's public S3RVER key, and the stack's key with a wrong secret", async () => {
    assert.equal(await verdict(listTables, 'dynamodb', { as: generateLocalCredentials() }), 'unknown_key');
    assert.equal(await verdict({ method: 'GET', path: '/bucket/k' }, 's3', { as: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } }), 'unknown_key');
    assert.equal(await verdict(listTables, 'dynamodb', { as: { ...credentials, secretAccessKey: 'not-the-secret' } }), 'mismatch');
  });

  it('refuses a signed request whose target, path, query or body was changed after signing', async () => {
    assert.equal(await verdict(listTables, 'dynamodb', { tamper: (r) => (r.headers['x-amz-target'] = 'DynamoDB_20120810.DeleteTable') }), 'mismatch');
    assert.equal(await verdict(listTables, 'dynamodb', { tamper: (r) => (r.body = '{"Limit":1}') }), 'mismatch');
    assert.equal(await verdict({ method: 'GET', path: '/bucket/a' }, 's3', { tamper: (r) => (r.path = '/bucket/b') }), 'mismatch');
    assert.equal(await verdict({ method: 'GET', path: '/bucket?prefix=a' }, 's3', { tamper: (r) => (r.path = '/bucket?prefix=b') }), 'mismatch');
    assert.equal(await verdict({ method: 'PUT', path: '/bucket/k', body: 'hello' }, 's3', { tamper: (r) => (r.body = 'pwned') }), 'payload_mismatch');
  });

  it('refuses a signature for another service, and one older or newer than 15 minutes', async () => {
    assert.equal(await verdict({ ...listTables }, 'ssm', { policy: { service: 'dynamodb', protocol: 'json' } }), 'mismatch');
    assert.equal(await verdict(listTables, 'dynamodb', { policy: { now: () => Date.now() + 16 * 60_000 } }), 'expired');
    assert.equal(await verdict(listTables, 'dynamodb', { policy: { now: () => Date.now() - 16 * 60_000 } }), 'expired');
    assert.equal(await verdict(listTables, 'dynamodb', { policy: { now: () => Date.now() + 14 * 60_000 } }), 'admitted');
  });

  it('refuses presigned URLs, signature version 2 and aws-chunked uploads, which it does not check', async () => {
    const presigned: SignedRequestParts = { method: 'GET', url: '/bucket/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=00', rawHeaders: ['Host', 'h'] };
    assert.throws(() => readSignatureClaim(presigned, policy('s3')), (e) => e instanceof SignatureRefusedError && e.fault === 'unsupported');
    const v2: SignedRequestParts = { method: 'GET', url: '/bucket/k', rawHeaders: ['Host', 'h', 'Authorization', 'AWS S3RVER:abc='] };
    assert.throws(() => readSignatureClaim(v2, policy('s3')), (e) => e instanceof SignatureRefusedError && e.fault === 'unsupported');
    const chunked = await verdict({ method: 'PUT', path: '/bucket/k', body: 'x', headers: { 'x-amz-content-sha256': 'STREAMING-AWS4-HMAC-SHA256-PAYLOAD' } }, 's3');
    assert.equal(chunked, 'unsupported');
  });
});
