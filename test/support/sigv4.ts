/**
 * Raw requests signed by AWS's own SigV4 signer (@smithy/signature-v4, what the
 * SDK v3 clients use), for tests that need a request no SDK command sends: an
 * unknown operation, a tampered body, a wrong key on a hand-made request.
 */
import { createHash, createHmac } from 'node:crypto';
import { SignatureV4 } from '@smithy/signature-v4';

/** node:crypto behind the hash interface the signer takes (HMAC when given a secret). */
type Data = string | ArrayBuffer | ArrayBufferView;
const bytes = (d: Data) => (typeof d === 'string' ? d : ArrayBuffer.isView(d) ? new Uint8Array(d.buffer, d.byteOffset, d.byteLength) : new Uint8Array(d));
class NodeSha256 {
  private readonly hash;
  constructor(secret?: Data) {
    this.hash = secret === undefined ? createHash('sha256') : createHmac('sha256', bytes(secret));
  }
  update(data: Data): void {
    this.hash.update(bytes(data));
  }
  async digest(): Promise<Uint8Array> {
    return this.hash.digest();
  }
}

export interface RawRequest {
  method?: string;
  /** Path and query, e.g. /bucket/key?x=1 */
  path?: string;
  headers?: Record<string, string>;
  body?: string | Buffer;
}

/** A signed request as it goes on the wire (the Host header is the URL's). */
export interface WireRequest {
  url: string;
  method: string;
  headers: Record<string, string>;
  body?: string;
}

/**
 * Signs `raw` for `endpoint` with `credentials` for `service`. `tamper` may
 * change the signed request before it goes out (to prove the check).
 */
export async function signRequest(
  endpoint: string,
  raw: RawRequest,
  credentials: { accessKeyId: string; secretAccessKey: string },
  service: string,
  tamper?: (r: { path: string; headers: Record<string, string>; body: string | Buffer | undefined }) => void,
): Promise<{ url: URL; method: string; headers: Record<string, string>; body: string | Buffer | undefined }> {
  const url = new URL(raw.path ?? '/', endpoint);
  const query: Record<string, string | string[]> = {};
  for (const [k, v] of url.searchParams) {
    const prev = query[k];
    query[k] = prev === undefined ? v : Array.isArray(prev) ? [...prev, v] : [prev, v];
  }
  const signer = new SignatureV4({
    credentials,
    region: 'us-east-1',
    service,
    sha256: NodeSha256,
    uriEscapePath: service !== 's3',
    applyChecksum: service === 's3',
  });
  const headers: Record<string, string> = { host: url.host, ...(raw.headers ?? {}) };
  if (service === 's3' && !headers['x-amz-content-sha256']) {
    headers['x-amz-content-sha256'] = createHash('sha256')
      .update(raw.body ?? '')
      .digest('hex');
  }
  const signed = await signer.sign({
    method: raw.method ?? 'POST',
    protocol: url.protocol,
    hostname: url.hostname,
    port: Number(url.port),
    path: url.pathname,
    query,
    headers,
    body: raw.body,
  });
  const out = { path: url.pathname + url.search, headers: { ...signed.headers } as Record<string, string>, body: raw.body };
  tamper?.(out);
  const { host: _host, ...sendHeaders } = out.headers;
  return { url: new URL(out.path, endpoint), method: raw.method ?? 'POST', headers: sendHeaders, body: out.body };
}

/** signRequest, then send it. */
export async function signedFetch(...args: Parameters<typeof signRequest>): Promise<Response> {
  const r = await signRequest(...args);
  return fetch(r.url, { method: r.method, headers: r.headers, body: r.body });
}
