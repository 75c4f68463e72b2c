/**
 * The in-sandbox `sandbox` command (sandbox-image/rootfs/usr/local/bin/sandbox), run with
 * the host's python3 against a real HTTP server on loopback that answers like the
 * sandbox-token routes. (sandbox-image/smoke.sh runs it again inside the built image.)
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { after, before, beforeEach, describe, it } from 'node:test';

const helperPath = fileURLToPath(new URL('../../sandbox-image/rootfs/usr/local/bin/sandbox', import.meta.url));
const python = spawnSync('python3', ['-c', 'import sys; print(sys.version_info >= (3, 8))'], { encoding: 'utf8' });
const skip = python.stdout?.trim() === 'True' ? false : 'python3 (3.8+) is not installed on this machine';

const token = 'tok-test-0123456789';

interface Recorded {
  method: string;
  path: string;
  apiKey: string | undefined;
  contentType: string | undefined;
  body: unknown;
}

type Responder = (req: Recorded, count: number) => { status: number; body: unknown; headers?: Record<string, string> };

let server: Server;
let baseUrl: string;
let requests: Recorded[] = [];
let respond: Responder = () => ({ status: 200, body: { ok: true } });

before(async () => {
  server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      const recorded: Recorded = {
        method: req.method ?? '',
        path: req.url ?? '',
        apiKey: req.headers['x-api-key'] as string | undefined,
        contentType: req.headers['content-type'],
        body: text ? JSON.parse(text) : undefined,
      };
      requests.push(recorded);
      const answer =
        recorded.apiKey === token ? respond(recorded, requests.length) : { status: 401, body: { error: { code: 'unauthorized', message: 'invalid key' } } };
      // Status 0: drop the connection without an answer, as a crashing proxy would.
      if (answer.status === 0) return void req.socket.destroy();
      res.writeHead(answer.status, { 'content-type': 'application/json', ...answer.headers });
      res.end(JSON.stringify(answer.body));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
after(async () => {
  await new Promise((resolve) => server?.close(resolve));
});
beforeEach(() => {
  requests = [];
  respond = () => ({ status: 200, body: { ok: true } });
});

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the helper asynchronously (the server lives in this process) with a clean environment. */
function sandbox(args: string[], env: Record<string, string | undefined> = {}, stdin?: string): Promise<Run> {
  const fullEnv: Record<string, string> = { PATH: process.env.PATH ?? '/usr/bin:/bin' };
  const merged = {
    SANDBOX_API_URL: baseUrl,
    SANDBOX_ID: 'sbx-abcdefghij0123456789',
    SANDBOX_TOKEN: token,
    SANDBOX_API_BACKOFF_SECONDS: '0.01',
    ...env,
  };
  for (const [k, v] of Object.entries(merged)) if (v !== undefined) fullEnv[k] = v;
  return new Promise((resolve, reject) => {
    const child = spawn('python3', ['-I', helperPath, ...args], { env: fullEnv });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(stdin ?? '');
  });
}

describe('the sandbox helper', { skip }, () => {
  it('sends a heartbeat with the sandbox token and prints the answer', async () => {
    respond = () => ({ status: 200, body: { status: 'running' } });
    const run = await sandbox(['heartbeat']);
    assert.equal(run.code, 0, run.stderr);
    assert.deepEqual(JSON.parse(run.stdout), { status: 'running' });
    assert.equal(requests.length, 1);
    assert.deepEqual(requests[0], {
      method: 'POST',
      path: '/sandboxes/sbx-abcdefghij0123456789/heartbeat',
      apiKey: token,
      contentType: 'application/json',
      body: {},
    });
  });

  it('reports completion with a JSON result, from an argument or from stdin', async () => {
    const fromArg = await sandbox(['complete', '--result', '{"files": 3, "ok": true}']);
    assert.equal(fromArg.code, 0, fromArg.stderr);
    const fromStdin = await sandbox(['complete', '--result-file', '-'], {}, '{"summary": "done"}');
    assert.equal(fromStdin.code, 0, fromStdin.stderr);
    const bare = await sandbox(['complete']);
    assert.equal(bare.code, 0, bare.stderr);
    assert.deepEqual(
      requests.map((r) => [r.path, r.body]),
      [
        ['/sandboxes/sbx-abcdefghij0123456789/complete', { result: { files: 3, ok: true } }],
        ['/sandboxes/sbx-abcdefghij0123456789/complete', { result: { summary: 'done' } }],
        ['/sandboxes/sbx-abcdefghij0123456789/complete', {}],
      ],
    );
  });

  it('reports an error with its words joined and optional details', async () => {
    const run = await sandbox(['error', 'tests', 'failed:', '3', '--details', '{"failed": ["a", "b", "c"]}']);
    assert.equal(run.code, 0, run.stderr);
    assert.deepEqual(requests[0]?.body, { error: 'tests failed: 3', details: { failed: ['a', 'b', 'c'] } });
  });

  it('sends an over-long error message as its head and tail, within the API limit', async () => {
    const message = `START${'x'.repeat(10_000)}END`;
    const run = await sandbox(['error', message]);
    assert.equal(run.code, 0, run.stderr);
    const sent = (requests[0]!.body as { error: string }).error;
    assert.ok(sent.length <= 4096, `sent ${sent.length} characters`);
    assert.ok(sent.startsWith('START') && sent.endsWith('END'));
    assert.match(sent, /characters cut/);
  });

  it('retries 503 and 429 answers with backoff, then succeeds', async () => {
    respond = (_req, count) =>
      count === 1
        ? { status: 503, body: { error: { code: 'unavailable', message: 'busy' } } }
        : count === 2
          ? { status: 429, body: { error: { code: 'throttled', message: 'slow down' } }, headers: { 'retry-after': '0' } }
          : { status: 200, body: { ok: true } };
    const run = await sandbox(['heartbeat']);
    assert.equal(run.code, 0, run.stderr);
    assert.equal(requests.length, 3);
    assert.match(run.stderr, /attempt 1 failed \(HTTP 503: unavailable: busy\)/);
    assert.match(run.stderr, /attempt 2 failed \(HTTP 429: throttled: slow down\)/);
  });

  it('retries when the connection drops without an answer', async () => {
    respond = (_req, count) => (count === 1 ? { status: 0, body: null } : { status: 200, body: { ok: true } });
    const run = await sandbox(['heartbeat']);
    assert.equal(run.code, 0, run.stderr);
    assert.equal(requests.length, 2);
    assert.match(run.stderr, /attempt 1 failed \(cannot reach/);
  });

  it('gives up with exit code 5 after the configured number of attempts', async () => {
    respond = () => ({ status: 500, body: { error: { code: 'internal_error', message: 'internal error' } } });
    const run = await sandbox(['heartbeat'], { SANDBOX_API_ATTEMPTS: '4' });
    assert.equal(run.code, 5);
    assert.equal(requests.length, 4);
    assert.match(run.stderr, /gave up after 4 attempts: HTTP 500: internal_error: internal error/);
  });

  it('gives up with exit code 5 when the API cannot be reached', async () => {
    // A port that was just free: nothing listens there.
    const probe = createServer();
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
    const closedPort = (probe.address() as AddressInfo).port;
    await new Promise((resolve) => probe.close(resolve));
    const run = await sandbox(['heartbeat'], { SANDBOX_API_URL: `http://127.0.0.1:${closedPort}`, SANDBOX_API_ATTEMPTS: '3' });
    assert.equal(run.code, 5);
    assert.match(run.stderr, /gave up after 3 attempts: cannot reach/);
  });

  it('does not retry a 4xx answer and prints the API message (exit code 4)', async () => {
    respond = () => ({ status: 409, body: { error: { code: 'conflict', message: 'sandbox sbx-1 is completed' } } });
    const run = await sandbox(['complete', '--result', '{"a": 1}']);
    assert.equal(run.code, 4);
    assert.equal(requests.length, 1);
    assert.match(run.stderr, /rejected by the API \(HTTP 409\): conflict: sandbox sbx-1 is completed/);
  });

  it('treats a wrong token as a rejection (exit code 4)', async () => {
    const run = await sandbox(['heartbeat'], { SANDBOX_TOKEN: 'not-the-token' });
    assert.equal(run.code, 4);
    assert.match(run.stderr, /HTTP 401\): unauthorized: invalid key/);
  });

  it('exits 3 and names what is missing when the environment is incomplete', async () => {
    const run = await sandbox(['heartbeat'], { SANDBOX_TOKEN: undefined, SANDBOX_ID: undefined });
    assert.equal(run.code, 3);
    assert.match(run.stderr, /missing environment: SANDBOX_ID, SANDBOX_TOKEN/);
    const badUrl = await sandbox(['heartbeat'], { SANDBOX_API_URL: 'ftp://example' });
    assert.equal(badUrl.code, 3);
    assert.equal(requests.length, 0);
  });

  it('exits 2 on usage errors without calling the API', async () => {
    for (const args of [[], ['launch'], ['error'], ['complete', '--result', '{oops'], ['complete', '--result', '[1, 2]']]) {
      const run = await sandbox(args);
      assert.equal(run.code, 2, `sandbox ${args.join(' ')}: ${run.stderr}`);
      assert.match(run.stderr, /^sandbox: /m);
    }
    assert.equal(requests.length, 0);
  });

  it('prints help with the exit codes', async () => {
    const run = await sandbox(['--help']);
    assert.equal(run.code, 0);
    assert.match(run.stdout, /sandbox heartbeat/);
    assert.match(run.stdout, /exit codes:\n {2}0 ok, 2 usage error, 3 missing environment, 4 rejected by the API \(4xx\),/);
  });
});
