/**
 * The API client every SDK call goes through: the key, JSON both ways, typed
 * errors, and retries. A call is retried on 429 and 503 (after Retry-After when
 * the API sent one, else exponential backoff with full jitter), and on a
 * dropped connection or API Gateway's 504 (the work may have been done) only
 * when repeating it cannot do the work twice (GET, PUT, DELETE, or a POST that
 * carries its own idempotency: a key or a command id); such a call's 409 with
 * Retry-After (its first attempt is still under way) is waited out as long as
 * the API says so (inProgressPatienceMs), not counted against maxRetries.
 */
import { apiErrorOf, ConnectionError, SandboxApiError, SandboxError } from './errors.js';

export interface ClientOptions {
  /** API key (X-API-Key). Default: SANDBOX_API_KEY. */
  apiKey?: string;
  /** Base URL of the API. Default: SANDBOX_API_URL. */
  apiUrl?: string;
  /** Retries of a failed call (429, 503; a dropped connection or a 504 when repeating it is safe). Default 5. */
  maxRetries?: number;
  /** Longest a single request may take, in ms (the API answers within 29 s). Default 40000. */
  requestTimeoutMs?: number;
  /** A fetch implementation (tests, proxies). Default: the global fetch. */
  fetch?: typeof fetch;
}

export interface RequestOptions {
  query?: Record<string, string | number | boolean | undefined>;
  /** A JSON body, or raw bytes (sent as application/octet-stream). */
  body?: unknown;
  bytes?: Uint8Array;
  headers?: Record<string, string>;
  /** Safe to repeat after a dropped connection (the default for GET, PUT and DELETE). */
  idempotent?: boolean;
  /** Answer bytes instead of JSON (Accept: application/octet-stream). */
  binary?: boolean;
  signal?: AbortSignal;
}

export interface Answer<T> {
  status: number;
  body: T;
  headers: Headers;
}

/**
 * Whether an error answer is worth repeating: 429 and 503 always; API Gateway's
 * 504 (the work may have been done) only for a call that cannot do its work twice.
 */
function retryable(status: number, idempotent: boolean): boolean {
  if (status === 429 || status === 503) return true;
  return idempotent && status === 504;
}

/**
 * A 409 with Retry-After to a call that cannot do its work twice: its first
 * attempt is still under way (a create under its Idempotency-Key, its answer
 * lost or cut by API Gateway at 29 s). Waited out as long as the API says so,
 * however many times, not counted as a retry: within a minute the API answers
 * what the first attempt made, or lets go of one that stalled and this call
 * starts over. Past this patience it is an error like any other.
 */
const inProgressPatienceMs = 90_000;

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** Exponential backoff with full jitter: a random wait in [0, min(cap, base * 2^attempt)]. */
export function backoffMs(attempt: number, baseMs = 250, capMs = 8000): number {
  return Math.random() * Math.min(capMs, baseMs * 2 ** attempt);
}

function retryAfterMs(headers: Headers): number | undefined {
  const value = headers.get('retry-after');
  if (!value) return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, date - Date.now());
}

export class ApiClient {
  readonly apiUrl: string;
  readonly apiKey: string;
  readonly maxRetries: number;
  private readonly requestTimeoutMs: number;
  private readonly fetchFn: typeof fetch;

  constructor(o: ClientOptions = {}) {
    const apiKey = o.apiKey ?? process.env.SANDBOX_API_KEY;
    const apiUrl = o.apiUrl ?? process.env.SANDBOX_API_URL;
    if (!apiKey) throw new SandboxError('no API key: pass { apiKey } or set SANDBOX_API_KEY');
    if (!apiUrl) throw new SandboxError('no API URL: pass { apiUrl } or set SANDBOX_API_URL (e.g. http://127.0.0.1:8000 for npm start)');
    this.apiKey = apiKey;
    this.apiUrl = apiUrl.replace(/\/+$/, '');
    this.maxRetries = o.maxRetries ?? 5;
    this.requestTimeoutMs = o.requestTimeoutMs ?? 40_000;
    this.fetchFn = o.fetch ?? fetch;
  }

  url(path: string, query?: RequestOptions['query']): string {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined) q.set(k, String(v));
    const s = q.toString();
    return `${this.apiUrl}${path}${s ? `?${s}` : ''}`;
  }

  /** One API call with its retries; throws SandboxApiError for an error answer. */
  async request<T = unknown>(method: string, path: string, o: RequestOptions = {}): Promise<Answer<T>> {
    const idempotent = o.idempotent ?? method !== 'POST';
    const headers: Record<string, string> = { 'X-API-Key': this.apiKey, ...o.headers };
    let body: string | Uint8Array | undefined;
    if (o.bytes) {
      headers['Content-Type'] = 'application/octet-stream';
      body = o.bytes;
    } else if (o.body !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(o.body);
    }
    headers.Accept = o.binary ? 'application/octet-stream' : 'application/json';
    const url = this.url(path, o.query);
    let inProgressSince: number | undefined;
    for (let attempt = 0; ; ) {
      o.signal?.throwIfAborted();
      const signals = [AbortSignal.timeout(this.requestTimeoutMs), ...(o.signal ? [o.signal] : [])];
      let res: Response;
      try {
        res = await this.fetchFn(url, { method, headers, body, signal: AbortSignal.any(signals) });
      } catch (err) {
        if (o.signal?.aborted) throw o.signal.reason;
        if (!idempotent || attempt >= this.maxRetries) {
          throw new ConnectionError(`${method} ${path}: ${(err as Error).message}${idempotent ? '' : ' (not retried: repeating it could do the work twice)'}`, {
            cause: err,
          });
        }
        await sleep(backoffMs(attempt++), o.signal);
        continue;
      }
      let payload: unknown;
      try {
        payload = o.binary && res.ok ? new Uint8Array(await res.arrayBuffer()) : await readJson(res);
      } catch (err) {
        // The answer was cut while its body arrived: the same as a dropped connection.
        if (o.signal?.aborted) throw o.signal.reason;
        if (!idempotent || attempt >= this.maxRetries)
          throw new ConnectionError(`${method} ${path}: the answer was cut: ${(err as Error).message}`, { cause: err });
        await sleep(backoffMs(attempt++), o.signal);
        continue;
      }
      if (res.ok) return { status: res.status, body: payload as T, headers: res.headers };
      const wait = retryAfterMs(res.headers);
      if (idempotent && res.status === 409 && wait !== undefined) {
        inProgressSince ??= Date.now();
        if (Date.now() - inProgressSince < inProgressPatienceMs) {
          await sleep(Math.max(wait, 250), o.signal);
          continue;
        }
      }
      if (retryable(res.status, idempotent) && attempt < this.maxRetries) {
        await sleep(Math.max(wait ?? 0, backoffMs(attempt++)), o.signal);
        continue;
      }
      throw apiErrorOf(res.status, payload, wait === undefined ? undefined : wait / 1000);
    }
  }

  async json<T = unknown>(method: string, path: string, o: RequestOptions = {}): Promise<T> {
    return (await this.request<T>(method, path, o)).body;
  }
}

async function readJson(res: Response): Promise<unknown> {
  const text = await res.text();
  if (!text) return undefined;
  try {
    return JSON.parse(text);
  } catch {
    if (!res.ok) return { error: { code: `http_${res.status}`, message: text.slice(0, 500) } };
    throw new SandboxApiError(res.status, 'invalid_answer', `the API answered something that is not JSON: ${text.slice(0, 200)}`);
  }
}
