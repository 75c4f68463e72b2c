/**
 * Bad input never hurts: thousands of generated malformed requests (seeded,
 * so a failure replays with FUZZ_SEED) across every route of the route
 * table, on the real local stack. No answer is a 5xx, every answer is JSON
 * (errors in the one error shape), ids that are not ids never reach
 * DynamoDB, nothing the caller wrote runs on the host, the system still
 * serves a normal create/exec/destroy afterwards, and nothing is left over.
 *
 *   FUZZ_SEED=1234 FUZZ_REQUESTS=5000 node --import tsx --test test/hardening/fuzz.test.ts
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { Agent, request as httpRequest } from 'node:http';
import { connect } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { gzipSync } from 'node:zlib';
import { ListCommandsCommand } from '@aws-sdk/client-ssm';
import { ScanCommand } from '@aws-sdk/lib-dynamodb';
import { createApiKey } from '../../lambdas/shared/api-keys';
import { dynamo } from '../../lambdas/shared/clients/dynamodb';
import { ssm } from '../../lambdas/shared/clients/ssm';
import { config } from '../../lambdas/shared/config';
import { routes, type Route } from '../../lambdas/shared/routes';
import { liveStatuses } from '../../lambdas/shared/sandbox-state';
import { hostVerbs } from '../../contract/host-protocol';
import { getTenant, liveSandboxCount } from '../../lambdas/shared/tenants';
import { startLocalApi } from '../../lib/local/api-gateway';
import { startLocalStack, type LocalStack } from '../../lib/local/stack';
import { apiClient, type ApiClient } from '../support/api-client';
import { docker } from '../support/docker';

const seed = Number(process.env.FUZZ_SEED ?? 0x5eed);
const total = Math.max(2000, Number(process.env.FUZZ_REQUESTS ?? 3000));
const concurrency = 12;
const runId = `${process.pid}-${seed}`;
/** Where a command that escaped to the host would leave its mark. */
const marker = `/tmp/es-fuzz-pwned-${runId}`;

/** mulberry32: small, fast, deterministic. */
function prng(s: number) {
  let a = s >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    int: (n: number) => Math.floor(next() * n),
    pick: <T>(xs: readonly T[]): T => xs[Math.floor(next() * xs.length)]!,
    chance: (p: number) => next() < p,
  };
}
type Rng = ReturnType<typeof prng>;

// ---- value pools -----------------------------------------------------------

const shellMeta = [
  `$(touch ${marker})`,
  `\`touch ${marker}\``,
  `; touch ${marker}`,
  `| touch ${marker}`,
  `&& touch ${marker} &&`,
  `\ntouch ${marker}\n`,
  `'; touch ${marker}; '`,
  `"; touch ${marker}; "`,
  `$(IFS=_;cmd=touch_${marker};$cmd)`,
  '${IFS}id${IFS}',
  '> /etc/passwd',
  '<(id)',
  '$HOME/../../root',
  '* ? [a-z] ~root',
  '%0a%0dtouch%20x',
  '\\x00\\n\\r',
  '() { :; }; echo shellshock',
  '{{7*7}}${7*7}<%= 7*7 %>',
];
const traversal = [
  '..',
  '.',
  '../',
  '../../etc/passwd',
  '..%2f..%2fetc%2fpasswd',
  '%2e%2e%2f%2e%2e%2f',
  '%252e%252e%252f',
  '..\\..\\windows\\win.ini',
  '/etc/passwd',
  'sbx-../../../x',
  '....//....//',
  '/proc/self/environ',
  '/var/run/docker.sock',
  'file:///etc/passwd',
];
const unicode = [
  'ünïcødé',
  '🔥'.repeat(40),
  '\u202Eexe.txt',
  'ЅВХ-аааааааааааааааааааа',
  'ѕbx-aaaaaaaaaaaaaaaaaaaa',
  'ｓｂｘ－ａａａａ',
  '\ud800',
  '\udfff\ud800',
  '\uffff\ufffe',
  'a\u0301\u0301\u0301',
  '\u200b\u200c\u200d',
  'إختبار',
  '漢字かなカナ',
  '\u0000',
  '\u0007\u001b[31mred',
];
const wrongTypes: unknown[] = [
  null,
  true,
  false,
  0,
  -1,
  1.5,
  1e308,
  -1e308,
  2 ** 53 + 1,
  [],
  [1, 'a'],
  {},
  { nested: { deeper: [] } },
  '',
  '0',
  'true',
  'null',
];

/** Percent-encodes the UTF-8 bytes of `s` (lone surrogates become U+FFFD, as a client library would send them). */
function pct(s: string): string {
  return Array.from(Buffer.from(s, 'utf8'), (b) =>
    /[A-Za-z0-9\-_.~]/.test(String.fromCharCode(b)) ? String.fromCharCode(b) : '%' + b.toString(16).toUpperCase().padStart(2, '0'),
  ).join('');
}

function hugeString(rng: Rng): string {
  const size = rng.pick([300, 5_000, 70_000, 200_000, 300_000]);
  return rng.pick(['x', 'é', '$(', '🔥', '\\']).repeat(Math.ceil(size / 2));
}

function badString(rng: Rng): string {
  return rng.pick(rng.pick([shellMeta, traversal, unicode]));
}

// ---- request shapes ----------------------------------------------------------

interface FuzzRequest {
  category: string;
  method: string;
  /** Path and query exactly as sent (already percent-encoded where HTTP needs it). */
  path: string;
  headers: Record<string, string | string[]>;
  body?: Buffer;
  /** A whole request written to the socket as is (request lines Node's client would refuse to send). */
  raw?: string;
}

interface Targets {
  /** A live sandbox for everything that does not end it. */
  target: string;
  /** A live sandbox destructive routes may end. */
  victim: string;
  victimToken: string;
  apiKey: string;
  otherTenantKey: string;
}

const validBodies: Record<string, () => Record<string, unknown>> = {
  'POST /sandboxes': () => ({
    user_id: 'fuzz-user',
    config: { cpu: 0.5, memory_mb: 256, ttl_seconds: 600, idle_timeout_seconds: 120, network: 'none', env: { A: 'b' }, labels: { k: 'v' } },
  }),
  'POST /sandboxes/{id}/exec': () => ({ command: 'true', timeout: 5, cwd: '/tmp', env: { A: 'b' }, user: 'agent' }),
  'POST /sandboxes/{id}/timeout': () => ({ idle_timeout_seconds: 600, ttl_seconds: 3600 }),
  'POST /sandboxes/{id}/complete': () => ({ result: { ok: true } }),
  'POST /sandboxes/{id}/error': () => ({ error: 'boom', details: { a: 1 } }),
  'POST /sandboxes/{id}/commands': () => ({ command: 'true', timeout: 5, cwd: '/tmp', env: { A: 'b' }, user: 'agent', wait: 1 }),
  'POST /sandboxes/{id}/commands/{command_id}/kill': () => ({ signal: 'TERM' }),
  'POST /sandboxes/{id}/commands/{command_id}/stdin': () => ({ data: 'x', offset: 0 }),
};

/** Field paths of a route's body, to break one at a time. */
function fieldPaths(obj: Record<string, unknown>, prefix: string[] = []): string[][] {
  const out: string[][] = [];
  for (const [k, v] of Object.entries(obj)) {
    out.push([...prefix, k]);
    if (v && typeof v === 'object' && !Array.isArray(v)) out.push(...fieldPaths(v as Record<string, unknown>, [...prefix, k]));
  }
  return out;
}

function setPath(obj: Record<string, unknown>, path: string[], value: unknown): void {
  let o = obj;
  for (const k of path.slice(0, -1)) o = o[k] as Record<string, unknown>;
  o[path.at(-1)!] = value;
}

const badJsonTexts = [
  '{',
  '{"user_id": ',
  '{"a":1,}',
  "{'a':1}",
  'NaN',
  '[1,2',
  '"\\ud800"',
  '\ufeff{}',
  '{"a":1}{"b":2}',
  'null',
  'true',
  '123',
  '[]',
  '"just a string"',
  '{"__proto__":{"polluted":1}}',
  '{"constructor":{"prototype":{"polluted":1}}}',
  'undefined',
  '{"command":"id",}',
  '{"user_id":"u","user_id":"v"}',
  '\u0000\u0001\u0002',
  '{"a":"\\u0000"}',
  '<?xml version="1.0"?><a/>',
  'user_id=u&config=1',
];

function deepNesting(rng: Rng): string {
  const depth = rng.pick([100, 5_000, 60_000]);
  return rng.chance(0.5) ? '['.repeat(depth) + ']'.repeat(depth) : '{"a":'.repeat(depth) + '1' + '}'.repeat(depth);
}

/** Handlers that may end a sandbox, pause it, or bring its end closer. */
const sandboxChangingHandlers = new Set(['destroy-sandbox', 'sandbox-signal', 'pause-resume-sandbox', 'sandbox-timeout']);

function idFor(rng: Rng, t: Targets, route: Route, method: string = route.method): { id: string; encoded: string; malformed: boolean } {
  // Anything that could end, pause or shorten a sandbox (a wrong method may be a DELETE) goes to the victim:
  // judged by the handler, so a new route (or an alias: /stop is /pause) is covered by what it does, not its path.
  const destructive = method === 'DELETE' || sandboxChangingHandlers.has(route.handler);
  const roll = rng.int(10);
  if (roll < 3) {
    const id = destructive ? t.victim : t.target;
    return { id, encoded: id, malformed: false };
  }
  if (roll < 4) return { id: 'sbx-' + 'q'.repeat(20), encoded: 'sbx-' + 'q'.repeat(20), malformed: false };
  const bad = rng.pick([
    ...shellMeta,
    ...traversal,
    ...unicode,
    'sbx-',
    'sbx-AAAAAAAAAAAAAAAAAAAA',
    'sbx-aaaaaaaaaaaaaaaaaaa',
    'sbx-aaaaaaaaaaaaaaaaaaaaa',
    ` sbx-${'a'.repeat(20)}`,
    `sbx-${'a'.repeat(20)}%00`,
    `${t.target}/../${t.victim}`,
    'x'.repeat(rng.pick([100, 2_000, 9_000])),
    '%',
    '%zz',
    '%E0%A4%A',
  ]);
  // Mostly sent percent-encoded (as a client library would); sometimes raw where HTTP allows it.
  const raw = /^[\x21-\x7e]*$/.test(bad) && rng.chance(0.4);
  return { id: bad, encoded: raw ? bad : pct(bad), malformed: true };
}

/** Command ids: one that exists (made before the fuzz), one that does not, and malformed ones. */
const commandIds = ['fuzz-cmd', 'no-such-command', 'cmd-' + 'z'.repeat(20), pct('../x'), pct('a b'), 'x'.repeat(65), pct('é'), '%00'];

function pathFor(route: Route, id: string, commandId = 'fuzz-cmd'): string {
  return route.path.replace('{id}', id).replace('{command_id}', commandId);
}

function keyHeader(rng: Rng, t: Targets, route: Route): Record<string, string | string[]> {
  const roll = rng.int(20);
  if (roll < 14) return { 'X-API-Key': route.auth === 'sandbox-token' && rng.chance(0.3) ? t.victimToken : t.apiKey };
  return rng.pick<Record<string, string | string[]>>([
    {},
    { 'X-API-Key': '' },
    { 'X-API-Key': '   ' },
    { 'X-API-Key': 'esk_' + 'a'.repeat(10) + '_' + 'b'.repeat(43) },
    { 'X-API-Key': 'x'.repeat(600) },
    { 'X-API-Key': t.otherTenantKey },
    { 'X-API-Key': t.victimToken },
    { 'X-API-Key': `sbt_${t.target}_${'c'.repeat(43)}` },
    { 'X-API-Key': [t.apiKey, 'esk_bogus'] },
    { 'X-API-Key': "' OR '1'='1" },
    { 'X-API-Key': Buffer.from('ÿþkey', 'latin1').toString('latin1') },
    { 'x-api-key': t.apiKey.toUpperCase() },
  ]);
}

function extraHeaders(rng: Rng): Record<string, string | string[]> {
  if (!rng.chance(0.3)) return { 'Content-Type': 'application/json' };
  return rng.pick<Record<string, string | string[]>>([
    { 'Content-Type': 'text/plain' },
    { 'Content-Type': 'multipart/form-data; boundary=x' },
    { 'Content-Type': 'application/json; charset=utf-16' },
    { 'Content-Type': 'application/x-www-form-urlencoded' },
    { 'Content-Type': '' },
    { 'Content-Type': 'a'.repeat(5000) },
    { 'Content-Encoding': 'gzip', 'Content-Type': 'application/json' },
    { 'Idempotency-Key': '' },
    { 'Idempotency-Key': 'k'.repeat(500) },
    { 'Idempotency-Key': '../../etc' },
    { 'Idempotency-Key': '$(touch x)' },
    { 'Idempotency-Key': ['a', 'b'] },
    { Accept: 'text/html' },
    { 'X-Forwarded-For': '169.254.169.254' },
    { 'X-Amz-Security-Token': 'x' },
    { Cookie: 'session=' + 'x'.repeat(3000) },
    { 'X-Big': 'y'.repeat(20_000) },
  ]);
}

function queryFor(rng: Rng, route: Route): string {
  const isList = route.method === 'GET' && route.path === '/sandboxes';
  const isDestroy = route.method === 'DELETE';
  if (!isList && !isDestroy && !rng.chance(0.15)) return '';
  const key = isList ? rng.pick(['user_id', 'status', 'limit', 'next_token', 'bogus', '__proto__', 'constructor']) : rng.pick(['graceful', 'bogus']);
  const value = rng.pick([
    ...wrongTypes.map((v) => JSON.stringify(v) ?? 'undefined'),
    badString(rng),
    'TRUE',
    'maybe',
    '-1',
    '1e999',
    '0x10',
    '00001',
    Buffer.from(JSON.stringify({ t: 'other-tenant', k: { tenant_id: 'other-tenant', sandbox_id: 'x', created_at: 'y' } })).toString('base64url'),
    Buffer.from('{"t":"x"').toString('base64url'),
  ]);
  const rawForm = rng.chance(0.15);
  const pairs = [`${key}=${rawForm ? value.replace(/[^\x21-\x7e]/g, (c) => pct(c)) : pct(value)}`];
  if (rng.chance(0.2)) pairs.push(`${key}=${pct(badString(rng))}`); // repeated key
  if (rng.chance(0.1)) pairs.push(rng.pick(['%zz', '%', '=', '&&&', 'a=%00', 'limit=%E0%A4%A']));
  return '?' + pairs.join('&');
}

function bodyFor(rng: Rng, route: Route, category: string): Buffer | undefined {
  const key = `${route.method} ${route.path}`;
  const valid = validBodies[key];
  if (category === 'bad_json') {
    return Buffer.from(
      rng.chance(0.1)
        ? deepNesting(rng)
        : rng.chance(0.05)
          ? Buffer.from(Array.from({ length: 64 }, () => rng.int(256))).toString('latin1')
          : rng.pick(badJsonTexts),
      'latin1',
    );
  }
  if (!valid) {
    // Routes without a body get one anyway, sometimes.
    return rng.chance(0.3) ? Buffer.from(JSON.stringify({ unexpected: badString(rng) })) : undefined;
  }
  const body = valid();
  const paths = fieldPaths(body);
  const path = rng.pick(paths);
  switch (category) {
    case 'wrong_type':
      setPath(body, path, rng.pick(wrongTypes));
      break;
    case 'huge_string':
      setPath(body, path, hugeString(rng));
      break;
    case 'shell_meta':
      setPath(body, path, rng.pick(shellMeta));
      if (rng.chance(0.3)) setPath(body, [...path.slice(0, -1), rng.pick(shellMeta)], 'x'); // as a key
      break;
    case 'traversal':
      setPath(body, path, rng.pick(traversal));
      break;
    case 'unicode':
      setPath(body, path, rng.pick(unicode));
      if (rng.chance(0.3)) setPath(body, [...path.slice(0, -1), rng.pick(unicode)], 'x');
      break;
    case 'extra_field':
      setPath(body, [...path.slice(0, -1), rng.pick(['bogus', '__proto__', 'constructor', 'prototype', ''])], { polluted: true });
      break;
    case 'missing_field':
      delete (path.slice(0, -1).reduce<Record<string, unknown>>((o, k) => o[k] as Record<string, unknown>, body) as Record<string, unknown>)[path.at(-1)!];
      break;
    default:
      break;
  }
  // Never a valid command that could run long: a generated command is bounded by a short timeout.
  if (key === 'POST /sandboxes/{id}/exec' && typeof body.timeout === 'number' && body.timeout > 5) body.timeout = 5;
  return Buffer.from(JSON.stringify(body), 'utf8');
}

const categories = [
  'bad_json',
  'wrong_type',
  'huge_string',
  'shell_meta',
  'traversal',
  'unicode',
  'extra_field',
  'missing_field',
  'wrong_method',
  'bad_headers',
  'bad_query',
  'raw_http',
] as const;

function generate(rng: Rng, t: Targets): FuzzRequest {
  const category = rng.pick(categories);
  const route = rng.pick(routes);
  let method: string = route.method;
  if (category === 'wrong_method') method = rng.pick(['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'].filter((m) => m !== route.method));
  const encoded = route.path.includes('{id}') ? idFor(rng, t, route, method).encoded : '';
  let path = pathFor(route, encoded, rng.pick(commandIds));
  if (rng.chance(0.05)) path = rng.pick([path + '/', '/' + path, path.replace('/sandboxes', '/SANDBOXES'), path + '/extra', path.replace(/^\//, '/./')]);
  path += queryFor(rng, route);
  const headers = { ...keyHeader(rng, t, route), ...(category === 'bad_headers' ? extraHeaders(rng) : { 'Content-Type': 'application/json' }) };
  let body = bodyFor(rng, route, category);
  if (headers['Content-Encoding'] === 'gzip' && body && rng.chance(0.5)) body = gzipSync(body);
  if (category === 'raw_http') {
    const line = rng.pick([
      `FOO ${path} HTTP/1.1`,
      `GET /sandboxes /x HTTP/1.1`,
      `${route.method} ${path}\u0000 HTTP/1.1`,
      `${route.method} ${path} HTTP/9.9`,
      `${route.method} ${path.replace(/%2F/gi, '/')}`,
      `${route.method} http://169.254.169.254/latest/meta-data/ HTTP/1.1`,
      `${route.method} ${path} HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5`,
    ]);
    const raw = `${line}\r\nHost: fuzz\r\nX-API-Key: ${t.apiKey}\r\nConnection: close\r\n\r\n`;
    return { category, method, path, headers: {}, raw };
  }
  return { category, method, path, headers, ...(body ? { body } : {}) };
}

// ---- sending -----------------------------------------------------------------

interface Answer {
  status: number;
  contentType: string;
  text: string;
}

const agent = new Agent({ keepAlive: true, maxSockets: concurrency });

function send(baseUrl: string, r: FuzzRequest): Promise<Answer> {
  const url = new URL(baseUrl);
  const raw = r.raw;
  if (raw !== undefined) {
    return new Promise((resolve, reject) => {
      // Written, not ended: like any client, wait for the answer; the server closes (Connection: close).
      const socket = connect(Number(url.port), url.hostname, () => socket.write(raw));
      socket.setTimeout(20_000, () => socket.destroy(new Error('no answer within 20 s')));
      const chunks: Buffer[] = [];
      socket.on('data', (c) => chunks.push(c));
      socket.on('error', reject);
      socket.on('close', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        const [head = '', ...rest] = text.split('\r\n\r\n');
        const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0);
        const contentType = /\r\ncontent-type: *([^\r]*)/i.exec(head)?.[1] ?? '';
        const body = rest.join('\r\n\r\n');
        // A chunked answer to a keep-alive-less request: take the JSON out of the chunk framing.
        const json = /\r\ntransfer-encoding: *chunked/i.test(head)
          ? body
              .split('\r\n')
              .filter((_, i) => i % 2 === 1)
              .join('')
          : body;
        resolve({ status, contentType, text: json });
      });
    });
  }
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        host: url.hostname,
        port: url.port,
        method: r.method,
        path: r.path,
        headers: { ...r.headers, ...(r.body ? { 'Content-Length': String(r.body.length) } : {}) },
        agent,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, contentType: String(res.headers['content-type'] ?? ''), text: Buffer.concat(chunks).toString('utf8') }),
        );
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(r.body);
  });
}

/** Why an answer breaks the contract, or undefined when it keeps it. */
function problemWith(a: Answer): string | undefined {
  if (a.status === 0) return 'no HTTP answer';
  if (a.status >= 500) return `a ${a.status}`;
  if (a.status === 204) return a.text === '' ? undefined : '204 with a body';
  if (!/^application\/json\b/.test(a.contentType)) return `content-type "${a.contentType}"`;
  let body: any;
  try {
    body = JSON.parse(a.text);
  } catch {
    return 'a body that is not JSON';
  }
  if (a.status < 400) return body && typeof body === 'object' ? undefined : 'a 2xx body that is not an object';
  if (!body || typeof body !== 'object' || Object.keys(body).join() !== 'error') return 'not the {"error": ...} shape';
  const e = body.error;
  // code and message always; a few errors carry one more field a caller acts on (e.g. expected_offset).
  if (!e || typeof e !== 'object' || !('code' in e) || !('message' in e) || Object.keys(e).some((k) => !['code', 'message', 'expected_offset'].includes(k))) {
    return 'error without code and message (or with an undocumented field)';
  }
  if (typeof e.code !== 'string' || !/^[a-z_]+$/.test(e.code) || typeof e.message !== 'string' || e.message === '') return 'error code/message not strings';
  return undefined;
}

async function pool<T>(items: T[], n: number, fn: (item: T, i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: n }, async () => {
      while (next < items.length) {
        const i = next++;
        await fn(items[i]!, i);
      }
    }),
  );
}

// ---- the test ----------------------------------------------------------------

let stack: LocalStack;
let api: ApiClient;
/** Every shell command line SSM was asked to run on the host while the fuzz ran. */
const hostCommandLines: string[] = [];
let targets: Targets;
/** Sandboxes this test made (the fuzz's valid creates included) -> the key that owns each. */
const made = new Map<string, string>();

before(async () => {
  stack = await startLocalStack({
    port: 0,
    reaperIntervalMs: 0,
    // The throttle stays in the path but out of the way of thousands of requests.
    rateLimit: 100_000,
    burstLimit: 100_000,
    // A cap below the host's slots: creates the fuzz happens to get right end in 429s, never in no_capacity.
    env: { MAX_SANDBOXES_PER_TENANT: '6' },
  });
  api = apiClient(stack.url, stack.apiKey);
  const [target, victim] = await Promise.all([api.create('fuzz-target'), api.create('fuzz-victim')]);
  assert.equal(target.status, 201, target.text);
  assert.equal(victim.status, 201, victim.text);
  made.set(target.body.sandbox_id, stack.apiKey).set(victim.body.sandbox_id, stack.apiKey);
  const token = await api.exec(victim.body.sandbox_id, 'printenv SANDBOX_TOKEN');
  targets = {
    target: target.body.sandbox_id,
    victim: victim.body.sandbox_id,
    victimToken: token.body.stdout.trim(),
    apiKey: stack.apiKey,
    otherTenantKey: (await createApiKey({ tenantId: 'fuzz-other' })).key,
  };
  // A command the command routes can find (the fuzz may kill it or write its stdin).
  const cmd = await api.call('POST', `/sandboxes/${targets.target}/commands`, {
    command: 'cat >/dev/null; sleep 600',
    command_id: 'fuzz-cmd',
    stdin_open: true,
  });
  assert.equal(cmd.status, 202, cmd.text);
});
after(async () => {
  for (const [id, key] of made)
    await apiClient(stack.url, key)
      .destroy(id, false)
      .catch(() => undefined);
  agent.destroy();
  await stack?.close();
});

describe(`fuzzing every route with ${total} malformed requests (seed ${seed})`, () => {
  it('answers every one below 500, as JSON, errors in the one error shape', async () => {
    const rng = prng(seed);
    const requests = Array.from({ length: total }, () => generate(rng, targets));
    const covered = new Set(requests.map((r) => r.category));
    assert.equal(covered.size, categories.length, 'every category was generated');
    const failures: string[] = [];
    const statuses = new Map<number, number>();
    await pool(requests, concurrency, async (r, i) => {
      let answer: Answer;
      try {
        answer = await send(stack.url, r);
      } catch (err) {
        failures.push(`#${i} ${r.category} ${r.method} ${r.path.slice(0, 120)}: request failed: ${(err as Error).message}`);
        return;
      }
      statuses.set(answer.status, (statuses.get(answer.status) ?? 0) + 1);
      // A generated create that happened to be valid made a sandbox: remember it for the cleanup.
      if (answer.status === 201) made.set(JSON.parse(answer.text).sandbox_id, String(([] as string[]).concat(r.headers['X-API-Key'] ?? []).at(-1)));
      const problem = problemWith(answer);
      if (problem) failures.push(`#${i} ${r.category} ${r.method} ${r.path.slice(0, 120)} -> ${problem}: ${answer.status} ${answer.text.slice(0, 200)}`);
    });
    console.log(
      `# ${total} requests, statuses: ${[...statuses]
        .sort(([a], [b]) => a - b)
        .map(([s, n]) => `${s}x${n}`)
        .join(' ')}`,
    );
    assert.deepEqual(failures.slice(0, 25), [], `${failures.length} answers broke the contract (replay with FUZZ_SEED=${seed})`);
  });

  it('ran nothing the callers wrote on the host', async () => {
    // Every command SSM was asked to run, as anyone with ssm:ListCommands reads them.
    for (let next: string | undefined, first = true; first || next; first = false) {
      const page = await ssm().send(new ListCommandsCommand({ MaxResults: 50, NextToken: next }));
      for (const c of page.Commands ?? []) hostCommandLines.push(...(c.Parameters?.commands ?? []));
      next = page.NextToken;
    }
    // What reached the host's shell: the operator's host-agent path, a fixed verb, and inert base64url or an S3 key.
    const safe = new RegExp(
      `^${stack.env.HOST_AGENT_COMMAND!.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} (${hostVerbs.join('|')}) (b64:[A-Za-z0-9_-]*|s3:[A-Za-z0-9_\\-/.]{1,512})$`,
    );
    assert.ok(hostCommandLines.length > 20, `the fuzz reached the host (${hostCommandLines.length} commands)`);
    for (const line of hostCommandLines) assert.match(line, safe);
    assert.equal(existsSync(marker), false, `${marker} exists: a request ran text on the host`);
    assert.deepEqual(
      readdirSync('/tmp').filter((f) => f.startsWith('es-fuzz-pwned-')),
      [],
    );
  });

  it('answers ids that are not ids with 404 (or 400) without touching DynamoDB (handlers in this process, so their calls are counted)', async () => {
    const inProcess = await startLocalApi({ port: 0, rateLimit: 0 });
    let calls = 0;
    const counter = 'fuzz-dynamodb-call-counter';
    dynamo().middlewareStack.add(
      (next) => async (args) => {
        calls += 1;
        return next(args);
      },
      { step: 'initialize', name: counter },
    );
    try {
      const direct = apiClient(inProcess.url, stack.apiKey);
      // Warm the authorizer cache for the key, so only the handler could call DynamoDB.
      assert.equal((await direct.call('GET', `/sandboxes/${targets.target}`)).status, 200);
      // The counter sees the handler's calls: a real id costs a read.
      const beforeReal = calls;
      assert.equal((await direct.call('GET', `/sandboxes/sbx-${'q'.repeat(20)}`)).status, 404);
      assert.ok(calls > beforeReal, 'a well-formed id is looked up');
      const rng = prng(seed ^ 0x1d5);
      const idRoutes = routes.filter((r) => r.path.includes('{id}'));
      let checked = 0;
      for (let i = 0; checked < 300 && i < 5000; i++) {
        const route = rng.pick(idRoutes);
        const { encoded, malformed, id } = idFor(rng, targets, route);
        if (!malformed || id.includes('/') || id === '.' || id === '..' || /%2f/i.test(id) || /^%2e%2e$|^\.\.?$/i.test(decodeSafe(id))) continue; // dot segments and slashes route elsewhere
        const body = validBodies[`${route.method} ${route.path}`]?.();
        const before = calls;
        const answer = await send(inProcess.url, {
          category: 'malformed_id',
          method: route.method,
          path: pathFor(route, encoded),
          headers: { 'X-API-Key': stack.apiKey, 'Content-Type': 'application/json' },
          ...(body ? { body: Buffer.from(JSON.stringify(body)) } : {}),
        });
        assert.ok(
          [400, 404].includes(answer.status),
          `${route.method} ${pathFor(route, encoded).slice(0, 100)}: ${answer.status} ${answer.text.slice(0, 200)}`,
        );
        assert.equal(problemWith(answer), undefined);
        assert.equal(calls - before, 0, `${route.method} ${pathFor(route, encoded).slice(0, 100)} reached DynamoDB`);
        checked++;
      }
      assert.equal(checked, 300);
    } finally {
      dynamo().middlewareStack.remove(counter);
      await inProcess.close();
    }
  });

  it('still serves a normal create, exec and destroy', async () => {
    // Creates the fuzz happened to get right hold tenant slots: give them back first.
    for (const [id, key] of [...made].filter(([m]) => m !== targets.target && m !== targets.victim)) {
      const res = await apiClient(stack.url, key).destroy(id, false);
      assert.equal(res.status, 204, res.text);
      made.delete(id);
    }
    const created = await api.create('after-fuzz', { memory_mb: 256 });
    assert.equal(created.status, 201, created.text);
    const id = created.body.sandbox_id;
    made.set(id, stack.apiKey);
    const exec = await api.exec(id, 'echo "still $((6*7))"');
    assert.equal(exec.status, 200, exec.text);
    assert.equal(exec.body.stdout, 'still 42\n');
    assert.equal((await api.destroy(id)).status, 204);
    made.delete(id);
    const again = await api.exec(targets.target, 'echo target ok');
    assert.equal(again.body?.stdout, 'target ok\n', again.text);
  });

  it('leaves no stray container and no live record behind', async () => {
    for (const [id, key] of made) {
      const res = await apiClient(stack.url, key).destroy(id, false);
      assert.equal(res.status, 204, res.text);
    }
    made.clear();
    // Ends the shutdowns that complete/error asked for (they are handed to the reaper).
    await stack.runReaper();
    const containers = await docker.listContainers({
      all: true,
      filters: { label: ['dev.ephemeral-sandbox.owner=ephemeral-sandbox', `dev.ephemeral-sandbox.host-id=${stack.hostId}`] },
    });
    assert.deepEqual(
      containers.map((c) => c.Names[0]),
      [],
    );
    const items = (await dynamo().send(new ScanCommand({ TableName: config().tables.sandboxes }))).Items ?? [];
    const live = items.filter((i) => (liveStatuses as readonly string[]).includes(i.status));
    assert.deepEqual(
      live.map((i) => `${i.sandbox_id} ${i.status}`),
      [],
    );
    for (const tenant of [stack.tenantId, 'fuzz-other']) {
      assert.equal(liveSandboxCount(await getTenant(tenant)), 0, `tenant ${tenant} has all its slots back`);
    }
  });
});

function decodeSafe(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}
