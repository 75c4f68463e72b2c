/** A tiny HTTP client for tests: JSON in, status + JSON out. */
export interface ApiAnswer<T = any> {
  status: number;
  body: T;
  headers: Headers;
  text: string;
}

export function apiClient(baseUrl: string, apiKey: string | undefined) {
  async function call<T = any>(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<ApiAnswer<T>> {
    const init: RequestInit = {
      method,
      headers: {
        ...(apiKey !== undefined ? { 'X-API-Key': apiKey } : {}),
        ...(body !== undefined ? { 'Content-Type': 'application/json' } : {}),
        ...headers,
      },
      ...(body !== undefined ? { body: typeof body === 'string' ? body : JSON.stringify(body) } : {}),
    };
    const res = await fetch(baseUrl + path, init);
    const text = await res.text();
    let parsed: any;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      parsed = undefined;
    }
    return { status: res.status, body: parsed as T, headers: res.headers, text };
  }
  /** Follows a sandbox with GET ?wait=20 until `done` says so (or `timeoutMs` passed). */
  async function follow(id: string, done: (status: string) => boolean, timeoutMs: number): Promise<ApiAnswer> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const res = await call('GET', `/sandboxes/${id}?wait=20`);
      if (res.status !== 200 || done(res.body.status)) return res;
      if (Date.now() > until) throw new Error(`sandbox ${id} is still ${res.body.status} after ${timeoutMs} ms`);
    }
  }
  return {
    call,
    /**
     * DELETE, and when it answers 202 (the host is still syncing the home), follow the sandbox
     * to its end: the API answers within its 29 s and the host finishes.
     */
    async destroyAndWait(id: string, graceful = true, timeoutMs = 180_000): Promise<{ answer: ApiAnswer; final: ApiAnswer }> {
      const answer = await call('DELETE', `/sandboxes/${id}?graceful=${graceful}`);
      if (answer.status !== 202) return { answer, final: await call('GET', `/sandboxes/${id}`) };
      return { answer, final: await follow(id, (s) => ['stopped', 'expired', 'failed'].includes(s), timeoutMs) };
    },
    /** POST /sandboxes, and when it answers 202 (`creating`), follow the sandbox until it is ready (or failed). */
    async createReady(user_id: string, config?: Record<string, unknown>, timeoutMs = 120_000): Promise<ApiAnswer> {
      const answer = await call('POST', '/sandboxes', { user_id, ...(config ? { config } : {}) });
      if (answer.status !== 202) return answer;
      const final = await follow(answer.body.sandbox_id, (s) => s !== 'creating', timeoutMs);
      return { ...final, status: final.body.status === 'ready' ? 201 : final.status };
    },
    create: (user_id: string, config?: Record<string, unknown>, headers?: Record<string, string>) =>
      call('POST', '/sandboxes', { user_id, ...(config ? { config } : {}) }, headers),
    exec: (id: string, command: string, extra: Record<string, unknown> = {}) => call('POST', `/sandboxes/${id}/exec`, { command, ...extra }),
    get: (id: string) => call('GET', `/sandboxes/${id}`),
    destroy: (id: string, graceful = true) => call('DELETE', `/sandboxes/${id}?graceful=${graceful}`),
  };
}

export type ApiClient = ReturnType<typeof apiClient>;
