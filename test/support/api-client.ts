/** A tiny HTTP client for tests: JSON in, status + JSON out. */
export interface ApiAnswer<T = any> {
  status: number;
  body: T;
  headers: Headers;
  text: string;
}

export function apiClient(baseUrl: string, apiKey: string | undefined) {
  async function call<T = any>(
    method: string,
    path: string,
    body?: unknown,
    headers: Record<string, string> = {},
  ): Promise<ApiAnswer<T>> {
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
    let parsed: any = undefined;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      parsed = undefined;
    }
    return { status: res.status, body: parsed as T, headers: res.headers, text };
  }
  return {
    call,
    create: (user_id: string, config?: Record<string, unknown>, headers?: Record<string, string>) =>
      call('POST', '/sandboxes', { user_id, ...(config ? { config } : {}) }, headers),
    exec: (id: string, command: string, extra: Record<string, unknown> = {}) =>
      call('POST', `/sandboxes/${id}/exec`, { command, ...extra }),
    get: (id: string) => call('GET', `/sandboxes/${id}`),
    destroy: (id: string, graceful = true) => call('DELETE', `/sandboxes/${id}?graceful=${graceful}`),
  };
}

export type ApiClient = ReturnType<typeof apiClient>;
