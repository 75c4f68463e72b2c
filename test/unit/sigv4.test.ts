/**
 * The shared SigV4 check (lib/local/sigv4.ts) against AWS's own signer
 * (@smithy/signature-v4, what SDK v3 clients use): what it signs is admitted,
 * whatever the path, query and headers; anything else is refused, with the
 * fault the service's error code is chosen from. Pure functions, no network.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { GetObjectCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import {
  checkS3PutLength,
  checkSignature,
  generateLocalCredentials,
  needsBody,
  readSignatureClaim,
  SignatureRefusedError,
  type SigningPolicy,
  type SignedRequestParts,
} from '../../lib/local/sigv4';
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
    assert.throws(
      () => readSignatureClaim(parts, policy('dynamodb')),
      (e) => e instanceof SignatureRefusedError && e.fault === 'missing',
    );
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

  it('refuses signature version 2 (header or presigned) and aws-chunked uploads, which it does not check', async () => {
    const v2: SignedRequestParts = { method: 'GET', url: '/bucket/k', rawHeaders: ['Host', 'h', 'Authorization', 'AWS S3RVER:abc='] };
    assert.throws(
      () => readSignatureClaim(v2, policy('s3')),
      (e) => e instanceof SignatureRefusedError && e.fault === 'unsupported',
    );
    const v2Url: SignedRequestParts = { method: 'GET', url: '/bucket/k?AWSAccessKeyId=S3RVER&Expires=9999999999&Signature=abc%3D', rawHeaders: ['Host', 'h'] };
    assert.throws(
      () => readSignatureClaim(v2Url, policy('s3')),
      (e) => e instanceof SignatureRefusedError && e.fault === 'unsupported',
    );
    const chunked = await verdict(
      { method: 'PUT', path: '/bucket/k', body: 'x', headers: { 'x-amz-content-sha256': 'STREAMING-AWS4-HMAC-SHA256-PAYLOAD' } },
      's3',
    );
    assert.equal(chunked, 'unsupported');
  });
});

describe('SigV4 check: presigned URLs (query-string signatures, as the SDK presigner makes them)', () => {
  const client = (as = credentials) =>
    new S3Client({ region: 'us-east-1', endpoint, forcePathStyle: true, credentials: as, requestChecksumCalculation: 'WHEN_REQUIRED' });
  /** Presigns like the files API does, then checks like the S3 front at `at` ms after signing; answers the fault or 'admitted'. */
  async function presignedVerdict(
    command: PutObjectCommand | GetObjectCommand,
    o: { expiresIn?: number; at?: number; as?: typeof credentials; tamper?: (u: URL) => void; headers?: string[] } = {},
  ): Promise<string> {
    const signedAt = Date.now();
    const url = new URL(await getSignedUrl(client(o.as), command, { expiresIn: o.expiresIn ?? 900 }));
    o.tamper?.(url);
    const parts: SignedRequestParts = {
      method: command instanceof PutObjectCommand ? 'PUT' : 'GET',
      url: url.pathname + url.search,
      rawHeaders: ['Host', url.host, ...(o.headers ?? [])],
    };
    try {
      const p = policy('s3', { now: () => signedAt + (o.at ?? 0) });
      const claim = readSignatureClaim(parts, p);
      assert.equal(needsBody(claim), false, 'a presigned body streams: it is UNSIGNED-PAYLOAD');
      checkSignature(parts, claim, undefined, p);
      return 'admitted';
    } catch (err) {
      if (err instanceof SignatureRefusedError) return err.fault;
      throw err;
    }
  }
  const put = (key = 'files-staging/t/sbx/upl-1/data') => new PutObjectCommand({ Bucket: 'bucket', Key: key });
  const get = (key = 'files-staging/t/sbx/dl-1/data') => new GetObjectCommand({ Bucket: 'bucket', Key: key });

  it('admits a presigned PUT and GET until they expire, for keys with spaces, unicode and reserved characters', async () => {
    assert.equal(await presignedVerdict(put()), 'admitted');
    assert.equal(await presignedVerdict(get()), 'admitted');
    assert.equal(await presignedVerdict(get("tenants/t/users/u/hot/a b/été +x~(1)!*'.txt")), 'admitted');
    assert.equal(await presignedVerdict(put(), { at: 899_000 }), 'admitted');
  });

  it('refuses a URL past its expiry (403 AccessDenied, as S3 answers "Request has expired"), and one not yet valid', async () => {
    assert.equal(await presignedVerdict(put(), { at: 901_000 }), 'url_expired');
    assert.equal(await presignedVerdict(get(), { expiresIn: 60, at: 61_000 }), 'url_expired');
    assert.equal(await presignedVerdict(get(), { at: -16 * 60_000 }), 'expired');
  });

  it('refuses a URL whose key, method, expiry or signature was changed, or that was signed with another key or secret', async () => {
    assert.equal(await presignedVerdict(get(), { tamper: (u) => (u.pathname = u.pathname.replace('dl-1', 'dl-2')) }), 'mismatch');
    assert.equal(await presignedVerdict(get(), { tamper: (u) => u.searchParams.set('X-Amz-Expires', '604800') }), 'mismatch');
    assert.equal(await presignedVerdict(get(), { tamper: (u) => u.searchParams.set('X-Amz-Signature', '0'.repeat(64)) }), 'mismatch');
    assert.equal(await presignedVerdict(get(), { tamper: (u) => u.searchParams.set('x-id', 'PutObject') }), 'mismatch');
    assert.equal(await presignedVerdict(get(), { as: generateLocalCredentials() }), 'unknown_key');
    assert.equal(await presignedVerdict(get(), { as: { ...credentials, secretAccessKey: 'not-the-secret' } }), 'mismatch');
  });

  it('refuses a URL valid longer than 7 days, one missing its parts, and one that also carries an Authorization header', async () => {
    assert.equal(await presignedVerdict(get(), { tamper: (u) => u.searchParams.set('X-Amz-Expires', '604801') }), 'malformed');
    assert.equal(await presignedVerdict(get(), { tamper: (u) => u.searchParams.delete('X-Amz-Date') }), 'malformed');
    assert.equal(await presignedVerdict(get(), { headers: ['Authorization', 'AWS4-HMAC-SHA256 Credential=x'] }), 'malformed');
  });

  it('refuses what S3 refuses before reading a PUT body: no Content-Length, or more than 5 GiB', () => {
    assert.throws(
      () => checkS3PutLength(undefined),
      (e) => e instanceof SignatureRefusedError && e.fault === 'length_required',
    );
    assert.throws(
      () => checkS3PutLength(String(5 * 1024 ** 3 + 1)),
      (e) => e instanceof SignatureRefusedError && e.fault === 'too_large',
    );
    assert.doesNotThrow(() => checkS3PutLength(String(5 * 1024 ** 3)));
    assert.doesNotThrow(() => checkS3PutLength('0'));
  });
});
