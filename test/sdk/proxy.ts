/**
 * A small HTTP proxy in front of the local stack that can misbehave on
 * purpose: answer 429/503 itself, or let a request reach the API and then drop
 * the connection or answer a 504 in its place (the worst case for a retry: the work was done).
 */
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';

/** `drop`, or `status` with `afterUpstream`: the request reaches the API (the work is done), then the caller gets `status`. */
export type Fault = { drop: true } | { status: number; headers?: Record<string, string>; body?: unknown; afterUpstream?: boolean };
/** Decides, per request, whether to misbehave (undefined: pass it through). */
export type FaultRule = (req: { method: string; path: string }) => Fault | undefined;

export interface FaultyProxy {
  url: string;
  rules: FaultRule[];
  /** `METHOD path` of every request, and what was done with it. */
  log: { method: string; path: string; fault?: string; at: number }[];
  close(): Promise<void>;
}

const forwarded = ['x-api-key', 'content-type', 'accept', 'idempotency-key'];

async function bodyOf(req: IncomingMessage): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of req) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

export async function startFaultyProxy(upstream: string): Promise<FaultyProxy> {
  const rules: FaultRule[] = [];
  const log: FaultyProxy['log'] = [];
  const server = createServer(async (req, res) => {
    const method = req.method ?? 'GET';
    const path = req.url ?? '/';
    // The first rule that fires decides; the rules after it do not see the request (nor count it).
    let fault: Fault | undefined;
    for (const rule of rules) {
      fault = rule({ method, path });
      if (fault) break;
    }
    const body = await bodyOf(req);
    log.push({ method, path, at: Date.now(), ...(fault ? { fault: 'drop' in fault ? 'drop' : String(fault.status) } : {}) });
    /** Answers the fault's status, headers and body (else `fallback`) in place of the API. */
    const answerFault = (f: Exclude<Fault, { drop: true }>, fallback: unknown) => {
      res.writeHead(f.status, { 'Content-Type': 'application/json', ...f.headers });
      res.end(JSON.stringify(f.body ?? fallback));
    };
    if (fault && !('drop' in fault) && !fault.afterUpstream) {
      return answerFault(fault, { error: { code: fault.status === 429 ? 'too_many_requests' : 'service_unavailable', message: 'injected by the test proxy' } });
    }
    const headers: Record<string, string> = {};
    for (const h of forwarded) if (typeof req.headers[h] === 'string') headers[h] = req.headers[h] as string;
    try {
      const answer = await fetch(upstream + path, { method, headers, body: body.length ? body : undefined });
      const bytes = Buffer.from(await answer.arrayBuffer());
      if (fault && 'drop' in fault) {
        // The API did the work; the caller never hears of it.
        req.socket.destroy();
        return;
      }
      if (fault) {
        // The API did the work; the caller hears a gateway error (API Gateway's 504 when the answer came too late).
        return answerFault(fault, { error: { code: 'gateway_timeout', message: 'injected by the test proxy after the API answered' } });
      }
      const out: Record<string, string> = {};
      answer.headers.forEach((v, k) => {
        if (!['content-length', 'transfer-encoding', 'connection', 'keep-alive', 'content-encoding'].includes(k)) out[k] = v;
      });
      res.writeHead(answer.status, out);
      res.end(bytes);
    } catch {
      req.socket.destroy();
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    rules,
    log,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** A rule that applies `fault` to the first `times` requests that `match`. */
export function firstN(times: number, match: (method: string, path: string) => boolean, fault: Fault): FaultRule {
  let left = times;
  return ({ method, path }) => {
    if (left <= 0 || !match(method, path)) return undefined;
    left--;
    return fault;
  };
}
