/**
 * AWS Signature Version 4, checked the way AWS checks it, for the local
 * stack's back-end services (the DynamoDB and S3 fronts and the SSM endpoint).
 * One module, so the three endpoints accept exactly the same requests: those
 * signed with the stack's own credentials by the unchanged AWS SDK v3 clients,
 * the AWS CLI or s3fs, and presigned URLs (query-string SigV4, as the SDK's
 * presigner makes them) until they expire. Unsigned requests, other keys,
 * wrong signatures, signatures older or newer than 15 minutes, expired or
 * not-yet-valid presigned URLs, bodies that do not match their signed hash,
 * Signature Version 2 and aws-chunked uploads are all refused, in the
 * service's own error format (JSON for DynamoDB and SSM, XML for S3), so SDK
 * clients raise their usual errors. The S3 front also refuses what S3 itself
 * does before reading a body: a PUT without Content-Length, or over 5 GiB.
 *
 * @example
 *   const signing = { credentials: generateLocalCredentials(), service: 'ssm', protocol: 'json', maxBodyBytes: 1 << 20 } as const;
 *   createServer(async (req, res) => {
 *     if (!(await admitSigned(req, res, signing))) return; // refused and answered
 *     // ... read req's body as usual
 *   });
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { request as httpRequest, Agent, createServer, type IncomingMessage, type OutgoingHttpHeaders, type ServerResponse } from 'node:http';
import type { AddressInfo, Server } from 'node:net';

export interface LocalCredentials {
  accessKeyId: string;
  secretAccessKey: string;
}

/**
 * Fresh credentials for one stack. The access key id is letters and digits only
 * (DynamoDB Local refuses anything else) and the secret has no ':' (s3fs's
 * password file separates the two with one).
 */
export function generateLocalCredentials(): LocalCredentials {
  return {
    accessKeyId: 'LOCAL' + randomBytes(8).toString('hex').toUpperCase(),
    secretAccessKey: randomBytes(30).toString('base64url'),
  };
}

/** How an endpoint checks and answers. */
export interface SigningPolicy {
  credentials: LocalCredentials;
  /** The service name in the credential scope: 'dynamodb', 'ssm', 's3'. */
  service: string;
  /** Error format: AWS JSON (DynamoDB, SSM) or S3's XML. */
  protocol: 'json' | 'xml';
  /** Largest body read into memory to check its hash. */
  maxBodyBytes: number;
  /** Clock for tests. @default Date.now */
  now?: () => number;
}

/** Why a request was refused. */
export type SignatureFault =
  | 'missing'
  | 'malformed'
  | 'unknown_key'
  | 'expired'
  /** A presigned URL past its X-Amz-Expires. */
  | 'url_expired'
  | 'mismatch'
  | 'payload_mismatch'
  | 'unsupported'
  | 'too_large'
  /** An S3 PUT without Content-Length (S3 takes no chunked uploads). */
  | 'length_required';

export class SignatureRefusedError extends Error {
  constructor(
    readonly fault: SignatureFault,
    message: string,
  ) {
    super(message);
    this.name = 'SignatureRefusedError';
  }
}

/** AWS allows this much clock difference between signer and service. */
const maxClockSkewMs = 15 * 60_000;
const algorithm = 'AWS4-HMAC-SHA256';
const unsignedPayload = 'UNSIGNED-PAYLOAD';
const emptySha256 = createHash('sha256').digest('hex');

/** Status and error code per fault, as the real services answer them. */
const faultAnswers: Record<SigningPolicy['protocol'], Record<SignatureFault, [number, string]>> = {
  json: {
    missing: [403, 'MissingAuthenticationTokenException'],
    malformed: [400, 'IncompleteSignatureException'],
    unknown_key: [400, 'UnrecognizedClientException'],
    expired: [400, 'InvalidSignatureException'],
    url_expired: [403, 'InvalidSignatureException'],
    mismatch: [400, 'InvalidSignatureException'],
    payload_mismatch: [400, 'InvalidSignatureException'],
    unsupported: [400, 'IncompleteSignatureException'],
    too_large: [413, 'ValidationException'],
    length_required: [411, 'ValidationException'],
  },
  xml: {
    missing: [403, 'AccessDenied'],
    malformed: [400, 'AuthorizationHeaderMalformed'],
    unknown_key: [403, 'InvalidAccessKeyId'],
    expired: [403, 'RequestTimeTooSkewed'],
    url_expired: [403, 'AccessDenied'],
    mismatch: [403, 'SignatureDoesNotMatch'],
    payload_mismatch: [400, 'XAmzContentSHA256Mismatch'],
    unsupported: [501, 'NotImplemented'],
    too_large: [400, 'EntityTooLarge'],
    length_required: [411, 'MissingContentLength'],
  },
};

/** The longest a presigned URL may be valid (SigV4's limit: 7 days). */
const maxPresignedExpirySeconds = 604_800;
/** The largest object S3 takes in one PUT. */
const maxS3PutBytes = 5 * 1024 ** 3;

function sha256Hex(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

const hmac = (key: Buffer | string, data: string) => createHmac('sha256', key).update(data, 'utf8').digest();

/** RFC 3986 encoding as SigV4 wants it: everything but A-Z a-z 0-9 - _ . ~ */
function uriEscape(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw new SignatureRefusedError('malformed', `the request URI has an invalid percent-encoding: ${s.slice(0, 200)}`);
  }
}

/**
 * The canonical URIs a signer may have used. S3 signs the path encoded once:
 * as sent, or (for a client that sends some characters raw but signs them
 * encoded) each segment re-encoded. The other services sign the normalized
 * path encoded twice, as the SDK does.
 */
function canonicalUris(path: string, service: string): string[] {
  if (service === 's3') {
    const reencoded =
      path
        .split('/')
        .map((seg) => uriEscape(safeDecode(seg)))
        .join('/') || '/';
    return reencoded === path ? [path] : [path, reencoded];
  }
  const segments: string[] = [];
  for (const seg of path.split('/')) {
    if (seg === '' || seg === '.') continue;
    if (seg === '..') segments.pop();
    else segments.push(seg);
  }
  const normalized = `${path.startsWith('/') ? '/' : ''}${segments.join('/')}${segments.length > 0 && path.endsWith('/') ? '/' : ''}`;
  return [uriEscape(normalized).replace(/%2F/g, '/')];
}

/** The query's parameters, decoded ('+' is a plus, not a space). */
function queryPairs(query: string): [string, string][] {
  return query
    .split('&')
    .filter((p) => p !== '')
    .map((p) => {
      const eq = p.indexOf('=');
      const [k, v] = eq < 0 ? [p, ''] : [p.slice(0, eq), p.slice(eq + 1)];
      return [safeDecode(k), safeDecode(v)];
    });
}

/** Parameters sorted by name then value, each encoded once; a presigned URL's own signature is not part of what it signed. */
function canonicalQuery(query: string, presigned: boolean): string {
  if (query === '') return '';
  const pairs = queryPairs(query)
    .filter(([k]) => !(presigned && k === 'X-Amz-Signature'))
    .map(([k, v]) => [uriEscape(k), uriEscape(v)] as const);
  pairs.sort(([ak, av], [bk, bv]) => (ak < bk ? -1 : ak > bk ? 1 : av < bv ? -1 : av > bv ? 1 : 0));
  return pairs.map(([k, v]) => `${k}=${v}`).join('&');
}

/** Header values as received (repeated headers joined by ','), names lower-cased. */
function headerValues(rawHeaders: readonly string[]): Map<string, string[]> {
  const values = new Map<string, string[]>();
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!.toLowerCase();
    const list = values.get(name) ?? [];
    list.push(rawHeaders[i + 1]!);
    values.set(name, list);
  }
  return values;
}

interface ParsedAuthorization {
  accessKeyId: string;
  date: string;
  region: string;
  service: string;
  signedHeaders: string[];
  signature: string;
}

function parseAuthorization(value: string): ParsedAuthorization {
  const space = value.indexOf(' ');
  const scheme = space < 0 ? value : value.slice(0, space);
  if (scheme !== algorithm) {
    throw new SignatureRefusedError('unsupported', `only ${algorithm} (Signature Version 4) is accepted, not "${scheme.slice(0, 40)}"`);
  }
  const fields = new Map<string, string>();
  for (const part of value.slice(space + 1).split(',')) {
    const eq = part.indexOf('=');
    if (eq > 0) fields.set(part.slice(0, eq).trim(), part.slice(eq + 1).trim());
  }
  const credential = fields.get('Credential');
  const signedHeaders = fields.get('SignedHeaders');
  const signature = fields.get('Signature');
  if (!credential || !signedHeaders || !signature) {
    throw new SignatureRefusedError('malformed', 'the Authorization header needs Credential, SignedHeaders and Signature');
  }
  const scope = credential.split('/');
  if (scope.length !== 5 || scope[4] !== 'aws4_request' || !/^\d{8}$/.test(scope[1]!)) {
    throw new SignatureRefusedError(
      'malformed',
      `the credential scope must be <key>/<yyyymmdd>/<region>/<service>/aws4_request, got "${credential.slice(0, 200)}"`,
    );
  }
  if (!/^[0-9a-f]{64}$/.test(signature)) throw new SignatureRefusedError('malformed', 'the signature must be 64 lower-case hex digits');
  const [accessKeyId, date, region, service] = scope as [string, string, string, string];
  return { accessKeyId, date, region, service, signedHeaders: signedHeaders.split(';'), signature };
}

/** Signing keys change once a day per region and service: derive each once (4 HMACs fewer per request). */
const signingKeys = new Map<string, Buffer>();
function signingKey(secret: string, date: string, region: string, service: string): Buffer {
  const id = `${secret}\n${date}\n${region}\n${service}`;
  let key = signingKeys.get(id);
  if (!key) {
    key = hmac(hmac(hmac(hmac(`AWS4${secret}`, date), region), service), 'aws4_request');
    if (signingKeys.size > 64) signingKeys.clear();
    signingKeys.set(id, key);
  }
  return key;
}

/** The parts of a request the signature covers. */
export interface SignedRequestParts {
  method: string;
  /** Path and query as received. */
  url: string;
  /** Node's rawHeaders: name, value, name, value, ... */
  rawHeaders: readonly string[];
}

function requestParts(req: IncomingMessage): SignedRequestParts {
  return { method: req.method ?? 'GET', url: req.url ?? '/', rawHeaders: req.rawHeaders };
}

/** What the signer declared, known before the body is read. */
export interface SignatureClaim {
  auth: ParsedAuthorization;
  amzDate: string;
  /** x-amz-content-sha256 as sent, if any (a presigned URL's body is UNSIGNED-PAYLOAD unless it says otherwise). */
  declaredPayloadHash?: string;
  /** A presigned URL: the signature is in the query, and the URL is valid this long after amzDate. */
  presigned?: { expiresSeconds: number };
}

const parseAmzDate = (d: string) => Date.UTC(+d.slice(0, 4), +d.slice(4, 6) - 1, +d.slice(6, 8), +d.slice(9, 11), +d.slice(11, 13), +d.slice(13, 15));

/**
 * A presigned URL's claim, from its query: X-Amz-Algorithm, -Credential,
 * -Date, -Expires, -SignedHeaders, -Signature. Valid from its date (within
 * the clock skew AWS allows) until its expiry.
 */
function readPresignedClaim(headers: Map<string, string[]>, query: string, policy: SigningPolicy): SignatureClaim {
  const params = new Map<string, string[]>();
  for (const [k, v] of queryPairs(query)) params.set(k, [...(params.get(k) ?? []), v]);
  const one = (name: string): string | undefined => {
    const values = params.get(name);
    if (values && values.length > 1) throw new SignatureRefusedError('malformed', `the presigned URL has ${name} more than once`);
    return values?.[0];
  };
  if (one('Signature') !== undefined || one('AWSAccessKeyId') !== undefined) {
    throw new SignatureRefusedError('unsupported', 'Signature Version 2 presigned URLs are not accepted; presign with Signature Version 4');
  }
  if (headers.has('authorization')) {
    throw new SignatureRefusedError('malformed', 'only one auth mechanism allowed: the X-Amz-Algorithm query parameter or the Authorization header, not both');
  }
  const algorithmName = one('X-Amz-Algorithm');
  if (algorithmName !== algorithm)
    throw new SignatureRefusedError('unsupported', `only ${algorithm} presigned URLs are accepted, not "${String(algorithmName).slice(0, 40)}"`);
  const credential = one('X-Amz-Credential');
  const signedHeaders = one('X-Amz-SignedHeaders');
  const signature = one('X-Amz-Signature');
  const amzDate = one('X-Amz-Date');
  const expires = one('X-Amz-Expires');
  if (!credential || !signedHeaders || !signature || !amzDate || !expires) {
    throw new SignatureRefusedError('malformed', 'a presigned URL needs X-Amz-Credential, X-Amz-Date, X-Amz-Expires, X-Amz-SignedHeaders and X-Amz-Signature');
  }
  const auth = parseAuthorization(`${algorithm} Credential=${credential}, SignedHeaders=${signedHeaders}, Signature=${signature}`);
  if (auth.accessKeyId !== policy.credentials.accessKeyId)
    throw new SignatureRefusedError('unknown_key', `the access key id ${auth.accessKeyId.slice(0, 40)} is not this stack's`);
  if (auth.service !== policy.service)
    throw new SignatureRefusedError('mismatch', `the URL is signed for service "${auth.service}", this endpoint is "${policy.service}"`);
  if (!auth.signedHeaders.includes('host')) throw new SignatureRefusedError('malformed', 'the host header must be signed');
  if (!/^\d{8}T\d{6}Z$/.test(amzDate)) throw new SignatureRefusedError('malformed', 'X-Amz-Date must be yyyymmddThhmmssZ');
  if (amzDate.slice(0, 8) !== auth.date)
    throw new SignatureRefusedError('malformed', `the credential scope date ${auth.date} is not the date of X-Amz-Date ${amzDate}`);
  const expiresSeconds = Number(expires);
  if (!/^\d{1,6}$/.test(expires) || expiresSeconds < 1 || expiresSeconds > maxPresignedExpirySeconds) {
    throw new SignatureRefusedError('malformed', `X-Amz-Expires must be a number of seconds from 1 to ${maxPresignedExpirySeconds}`);
  }
  const signedAt = parseAmzDate(amzDate);
  const now = (policy.now ?? Date.now)();
  if (signedAt - now > maxClockSkewMs) {
    throw new SignatureRefusedError(
      'expired',
      `the presigned URL is not yet valid: signed at ${amzDate}, the endpoint's clock says ${new Date(now).toISOString()}`,
    );
  }
  if (now > signedAt + expiresSeconds * 1000) {
    throw new SignatureRefusedError(
      'url_expired',
      `Request has expired: the URL was valid for ${expiresSeconds} s from ${amzDate}; it is now ${new Date(now).toISOString()}`,
    );
  }
  const declared = one('X-Amz-Content-Sha256') ?? headers.get('x-amz-content-sha256')?.[0] ?? unsignedPayload;
  if (declared.startsWith('STREAMING-'))
    throw new SignatureRefusedError('unsupported', `${declared} (aws-chunked) uploads are not supported by the local S3 endpoint`);
  if (declared !== unsignedPayload && !/^[0-9a-f]{64}$/.test(declared)) {
    throw new SignatureRefusedError('malformed', 'X-Amz-Content-Sha256 must be 64 lower-case hex digits or UNSIGNED-PAYLOAD');
  }
  return { auth, amzDate, declaredPayloadHash: declared, presigned: { expiresSeconds } };
}

/**
 * Checks everything that does not need the body: the scheme, the key, the
 * scope's service and date, the clock. Throws SignatureRefusedError.
 */
export function readSignatureClaim(req: SignedRequestParts, policy: SigningPolicy): SignatureClaim {
  const headers = headerValues(req.rawHeaders);
  const query = req.url.includes('?') ? req.url.slice(req.url.indexOf('?') + 1) : '';
  if (/(?:^|&)(?:X-Amz-Signature|X-Amz-Algorithm|X-Amz-Credential|Signature|AWSAccessKeyId)=/i.test(query)) return readPresignedClaim(headers, query, policy);
  const authorization = headers.get('authorization');
  if (!authorization) throw new SignatureRefusedError('missing', "the request is not signed: send it with the stack's credentials (AWS Signature Version 4)");
  if (authorization.length !== 1) throw new SignatureRefusedError('malformed', 'the request has more than one Authorization header');
  const auth = parseAuthorization(authorization[0]!);
  if (auth.accessKeyId !== policy.credentials.accessKeyId) {
    throw new SignatureRefusedError('unknown_key', `the access key id ${auth.accessKeyId.slice(0, 40)} is not this stack's`);
  }
  if (auth.service !== policy.service) {
    throw new SignatureRefusedError('mismatch', `the request is signed for service "${auth.service}", this endpoint is "${policy.service}"`);
  }
  if (!auth.signedHeaders.includes('host')) throw new SignatureRefusedError('malformed', 'the host header must be signed');
  const amzDate = headers.get('x-amz-date')?.[0];
  if (!amzDate || !/^\d{8}T\d{6}Z$/.test(amzDate) || !auth.signedHeaders.includes('x-amz-date')) {
    throw new SignatureRefusedError('malformed', 'the request needs a signed x-amz-date header (yyyymmddThhmmssZ)');
  }
  if (amzDate.slice(0, 8) !== auth.date)
    throw new SignatureRefusedError('malformed', `the credential scope date ${auth.date} is not the date of x-amz-date ${amzDate}`);
  const signedAt = parseAmzDate(amzDate);
  const now = (policy.now ?? Date.now)();
  if (Math.abs(now - signedAt) > maxClockSkewMs) {
    throw new SignatureRefusedError(
      'expired',
      `Signature expired or not yet valid: signed at ${amzDate}, the endpoint's clock says ${new Date(now).toISOString()} (at most 15 minutes apart)`,
    );
  }
  const declaredPayloadHash = headers.get('x-amz-content-sha256')?.[0];
  if (policy.service === 's3') {
    if (!declaredPayloadHash) throw new SignatureRefusedError('malformed', 'S3 requests need an x-amz-content-sha256 header');
    if (declaredPayloadHash.startsWith('STREAMING-')) {
      throw new SignatureRefusedError(
        'unsupported',
        `${declaredPayloadHash} (aws-chunked) uploads are not supported by the local S3 endpoint; disable request checksums (requestChecksumCalculation: WHEN_REQUIRED)`,
      );
    }
  }
  if (declaredPayloadHash !== undefined && declaredPayloadHash !== unsignedPayload && !/^[0-9a-f]{64}$/.test(declaredPayloadHash)) {
    throw new SignatureRefusedError('malformed', 'x-amz-content-sha256 must be 64 lower-case hex digits or UNSIGNED-PAYLOAD');
  }
  return { auth, amzDate, declaredPayloadHash };
}

/** True when the body must be read (and hashed) before the signature can be checked. */
export function needsBody(claim: SignatureClaim): boolean {
  return claim.declaredPayloadHash !== unsignedPayload;
}

/**
 * Checks the signature itself. `body` is the whole body, or undefined when the
 * signer declared UNSIGNED-PAYLOAD. Throws SignatureRefusedError.
 */
export function checkSignature(req: SignedRequestParts, claim: SignatureClaim, body: Buffer | undefined, policy: SigningPolicy): void {
  let payloadHash: string;
  if (claim.declaredPayloadHash === unsignedPayload) payloadHash = unsignedPayload;
  else {
    const actual = body === undefined || body.length === 0 ? emptySha256 : sha256Hex(body);
    if (claim.declaredPayloadHash !== undefined && claim.declaredPayloadHash !== actual) {
      throw new SignatureRefusedError('payload_mismatch', 'the body does not match its x-amz-content-sha256');
    }
    payloadHash = actual;
  }
  const headers = headerValues(req.rawHeaders);
  const { auth } = claim;
  const canonicalHeaders = auth.signedHeaders
    .map((name) => `${name}:${(headers.get(name) ?? []).map((v) => v.trim().replace(/\s+/g, ' ')).join(',')}\n`)
    .join('');
  const q = req.url.indexOf('?');
  const path = q < 0 ? req.url : req.url.slice(0, q);
  const query = canonicalQuery(q < 0 ? '' : req.url.slice(q + 1), claim.presigned !== undefined);
  const scope = `${auth.date}/${auth.region}/${auth.service}/aws4_request`;
  const key = signingKey(policy.credentials.secretAccessKey, auth.date, auth.region, auth.service);
  const provided = Buffer.from(auth.signature, 'hex');
  const matches = canonicalUris(path, policy.service).some((uri) => {
    const canonicalRequest = [req.method, uri, query, canonicalHeaders, auth.signedHeaders.join(';'), payloadHash].join('\n');
    const stringToSign = `${algorithm}\n${claim.amzDate}\n${scope}\n${sha256Hex(canonicalRequest)}`;
    return timingSafeEqual(createHmac('sha256', key).update(stringToSign, 'utf8').digest(), provided);
  });
  if (!matches) {
    throw new SignatureRefusedError(
      'mismatch',
      'The request signature we calculated does not match the signature you provided. Check your key and signing method.',
    );
  }
}

/** Answers a refusal in the service's own error format. */
function answerRefusal(res: ServerResponse, err: SignatureRefusedError, policy: SigningPolicy): void {
  const [status, code] = faultAnswers[policy.protocol][err.fault];
  const body =
    policy.protocol === 'json'
      ? JSON.stringify({ __type: code, message: err.message, Message: err.message })
      : `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${xmlEscape(err.message)}</Message></Error>`;
  res.writeHead(status, {
    'content-type': policy.protocol === 'json' ? 'application/x-amz-json-1.1' : 'application/xml',
    'content-length': Buffer.byteLength(body),
    ...(policy.protocol === 'json' ? { 'x-amzn-errortype': code } : {}),
    // The request body may not have been read: do not reuse the connection.
    connection: 'close',
  });
  res.end(body);
}

function xmlEscape(s: string): string {
  return s.replace(/[<>&'"]/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', "'": '&apos;', '"': '&quot;' })[c]!);
}

async function readBounded(req: IncomingMessage, maxBytes: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > maxBytes) {
    throw new SignatureRefusedError('too_large', `request body of ${declared} bytes exceeds ${maxBytes} bytes`);
  }
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > maxBytes) throw new SignatureRefusedError('too_large', `request body exceeds ${maxBytes} bytes`);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

/**
 * The check for a server that handles requests itself: reads the body (up to
 * maxBodyBytes), verifies the signature, and answers a refusal itself (false).
 * On true the handler reads the body from `req` as it always did: the
 * verified bytes are replayed through its async iterator.
 */
export async function admitSigned(req: IncomingMessage, res: ServerResponse, policy: SigningPolicy): Promise<boolean> {
  try {
    const parts = requestParts(req);
    const claim = readSignatureClaim(parts, policy);
    const body = needsBody(claim) ? await readBounded(req, policy.maxBodyBytes) : undefined;
    checkSignature(parts, claim, body, policy);
    if (body !== undefined) {
      Object.defineProperty(req, Symbol.asyncIterator, {
        value: async function* () {
          if (body.length > 0) yield body;
        },
      });
    }
    return true;
  } catch (err) {
    // Anything else is the connection failing while the body was read: nobody is left to answer.
    if (err instanceof SignatureRefusedError) answerRefusal(res, err, policy);
    else res.destroy();
    return false;
  }
}

/** What S3 refuses before it reads a PUT's body: no Content-Length (S3 takes no chunked uploads), or more than 5 GiB. */
export function checkS3PutLength(contentLength: string | undefined): void {
  if (contentLength === undefined) throw new SignatureRefusedError('length_required', 'You must provide the Content-Length HTTP header.');
  if (Number(contentLength) > maxS3PutBytes) {
    throw new SignatureRefusedError(
      'too_large',
      `Your proposed upload of ${contentLength} bytes exceeds the maximum allowed object size of ${maxS3PutBytes} bytes`,
    );
  }
}

/** Hop-by-hop headers (and Expect, answered by this front) are not forwarded. */
const notForwarded = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'expect', 'te', 'trailer']);

function forwardedHeaders(rawHeaders: readonly string[], body: Buffer | undefined): OutgoingHttpHeaders {
  const out: Record<string, string | string[]> = {};
  for (const [name, values] of headerValues(rawHeaders)) {
    if (notForwarded.has(name) || (body !== undefined && name === 'content-length')) continue;
    out[name] = values.length === 1 ? values[0]! : values;
  }
  if (body !== undefined) out['content-length'] = String(body.length);
  return out;
}

export interface SignedProxyOptions {
  policy: SigningPolicy;
  /** The engine behind the front: a Unix socket only root can open, or an address only the front can reach. */
  upstream: { socketPath: string } | { host: string; port: number };
  /** Port on 127.0.0.1; 0 picks a free one. @default 0 */
  port?: number;
  /** A listening socket made elsewhere (on the host's loopback, handed to a process in another network namespace); `port` is then its port. */
  listenOn?: Server;
}

export interface SignedProxy {
  url: string;
  port: number;
  close(): Promise<void>;
}

/**
 * A front on 127.0.0.1 that admits only signed requests and passes them, as
 * received, to an engine that checks nothing itself. Bodies with a signed hash
 * are read whole and checked before the engine sees a byte; UNSIGNED-PAYLOAD
 * bodies (large S3 uploads) stream through.
 */
export async function startSignedProxy(o: SignedProxyOptions): Promise<SignedProxy> {
  const agent = new Agent({ keepAlive: true, maxSockets: 64 });
  const unavailable = (res: ServerResponse, message: string) => {
    const [code, body] =
      o.policy.protocol === 'json'
        ? ['ServiceUnavailable', JSON.stringify({ __type: 'ServiceUnavailable', message })]
        : [
            'ServiceUnavailable',
            `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ServiceUnavailable</Code><Message>${xmlEscape(message)}</Message></Error>`,
          ];
    if (res.headersSent) {
      res.destroy();
      return;
    }
    res.writeHead(503, {
      'content-type': o.policy.protocol === 'json' ? 'application/x-amz-json-1.0' : 'application/xml',
      'x-amzn-errortype': code,
      connection: 'close',
    });
    res.end(body);
  };

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    let body: Buffer | undefined;
    try {
      const parts = requestParts(req);
      const claim = readSignatureClaim(parts, o.policy);
      if (o.policy.service === 's3' && req.method === 'PUT') checkS3PutLength(req.headers['content-length']);
      body = needsBody(claim) ? await readBounded(req, o.policy.maxBodyBytes) : undefined;
      checkSignature(parts, claim, body, o.policy);
    } catch (err) {
      if (err instanceof SignatureRefusedError) return answerRefusal(res, err, o.policy);
      return unavailable(res, `reading the request failed: ${(err as Error).message}`);
    }
    const upstream = httpRequest({
      ...o.upstream,
      agent,
      method: req.method,
      path: req.url,
      headers: forwardedHeaders(req.rawHeaders, body),
    });
    upstream.on('response', (answer) => {
      const headers: Record<string, string | string[]> = {};
      for (const [name, values] of headerValues(answer.rawHeaders)) {
        if (!notForwarded.has(name)) headers[name] = values.length === 1 ? values[0]! : values;
      }
      res.writeHead(answer.statusCode ?? 502, answer.statusMessage, headers);
      answer.pipe(res);
      answer.on('error', () => res.destroy());
    });
    // The engine is gone or restarting: 503 makes SDK clients retry.
    upstream.on('error', (err) => unavailable(res, `the engine behind this endpoint did not answer: ${err.message}`));
    res.on('close', () => {
      if (!res.writableFinished) upstream.destroy();
    });
    if (body !== undefined) upstream.end(body);
    else req.pipe(upstream);
  };

  const server = createServer((req, res) => void handle(req, res));
  // Like AWS endpoints, keep idle connections longer than the SDK's agent may reuse them.
  server.keepAliveTimeout = 65_000;
  server.headersTimeout = 66_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    const listening = () => {
      server.off('error', reject);
      resolve();
    };
    if (o.listenOn) server.listen(o.listenOn, listening);
    else server.listen(o.port ?? 0, '127.0.0.1', listening);
  });
  const port = (server.address() as AddressInfo | null)?.port ?? o.port ?? 0;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()));
        server.closeAllConnections();
        agent.destroy();
      }),
  };
}
