/** Helpers the files tests share: raw bytes in and out of the API, and runs in a sandbox through the API. */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import type { ApiAnswer, ApiClient } from '../support/api-client';

const run = promisify(execFile);

export const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');
export const q = (path: string) => encodeURIComponent(path);

export interface Answer {
  status: number;
  headers: Headers;
  bytes: Buffer;
  /** The body as JSON, when it is JSON. */
  json: any;
}

async function answer(res: Response): Promise<Answer> {
  const bytes = Buffer.from(await res.arrayBuffer());
  let json: unknown;
  if ((res.headers.get('content-type') ?? '').includes('json')) {
    try {
      json = JSON.parse(bytes.toString('utf8'));
    } catch {
      json = undefined;
    }
  }
  return { status: res.status, headers: res.headers, bytes, json };
}

/** The files routes of one sandbox, bytes as bytes. */
export function filesOf(url: string, apiKey: string, sandboxId: string) {
  const base = `${url}/sandboxes/${sandboxId}/files`;
  return {
    put: async (path: string, body: Buffer | string, extra = '', contentType = 'application/octet-stream') =>
      answer(await fetch(`${base}?path=${q(path)}${extra}`, { method: 'PUT', headers: { 'X-API-Key': apiKey, 'Content-Type': contentType }, body })),
    get: async (path: string, accept = 'application/octet-stream') =>
      answer(await fetch(`${base}?path=${q(path)}`, { headers: { 'X-API-Key': apiKey, Accept: accept } })),
  };
}

/**
 * Runs a command in the sandbox through the API (as the agent) and answers its stdout; fails the test on a non-zero exit.
 * A command still running when exec answers (202, a slow machine) is followed to its end.
 */
export async function sh(api: ApiClient, sandboxId: string, command: string): Promise<string> {
  let res = await api.exec(sandboxId, command);
  for (let i = 0; res.status === 202 && i < 30; i++) {
    res = await api.call('GET', `/sandboxes/${sandboxId}/commands/${res.body.command_id}?wait=20`);
    if (res.status === 200 && ['running', 'pending'].includes(res.body.status)) res = { ...res, status: 202 };
  }
  if (res.status !== 200 || res.body.exit_code !== 0) throw new Error(`${command}: ${res.status} ${res.text}`);
  return res.body.stdout;
}

/** The sha256 of a file on this machine, streamed (a 1 GiB file never sits in memory). */
export async function fileSha256(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 1024 * 1024 })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/**
 * What a client does with a presigned URL, with curl: PUT a file (curl sends its
 * Content-Length, as S3 requires) or GET into one. Answers the HTTP status.
 */
export async function curl(method: 'PUT' | 'GET', url: string, file: string): Promise<number> {
  const args = ['-sS', '-o', method === 'GET' ? file : '/dev/null', '-w', '%{http_code}', ...(method === 'PUT' ? ['-T', file] : []), url];
  const { stdout } = await run('curl', args, { maxBuffer: 1024 * 1024 });
  return Number(stdout.trim());
}

/** Resident memory of a process in bytes, from /proc (the test's own when pid is this process). */
function rssOf(pid: number): number {
  if (pid === process.pid) return process.memoryUsage().rss;
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

/**
 * Samples the resident memory of some processes while something runs; `stop`
 * answers each one's growth at its peak over what it held when sampling began.
 */
export function sampleMemory(pids: Record<string, number>, everyMs = 200) {
  const base = Object.fromEntries(Object.entries(pids).map(([name, pid]) => [name, rssOf(pid)]));
  const peak = { ...base };
  const timer = setInterval(() => {
    for (const [name, pid] of Object.entries(pids)) peak[name] = Math.max(peak[name]!, rssOf(pid));
  }, everyMs);
  return {
    stop(): Record<string, number> {
      clearInterval(timer);
      return Object.fromEntries(Object.keys(pids).map((name) => [name, peak[name]! - base[name]!]));
    },
  };
}

/** Repeats a transfer call while it answers 202 (the host is still at it), up to `timeoutMs`. */
export async function untilDone(call: () => Promise<ApiAnswer>, timeoutMs = 600_000): Promise<ApiAnswer> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const res = await call();
    if (res.status !== 202) return res;
    if (Date.now() > until) throw new Error(`still in progress after ${timeoutMs} ms: ${res.text}`);
  }
}
