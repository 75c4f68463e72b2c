/**
 * The SDK (@ephemeral-sandbox/sdk) against the local stack: every method, a
 * command followed across dropped connections without losing or repeating a
 * byte, retries on 429/503 that honour Retry-After, idempotent creates and
 * stdin writes whose answers were lost, a 256 MiB upload and download with
 * progress, and seed 002's example run verbatim as its own Node process.
 * Run: node --import tsx --test test/sdk/sdk.test.ts
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { startLocalStack, type LocalStack } from '../../lib/local/stack';
import {
  ApiClient,
  CommandHandle,
  ConflictError,
  ConnectionError,
  NotFoundError,
  Sandbox,
  SandboxApiError,
  shellQuote,
  type Progress,
} from '../../sdk/src/index';
import { firstN, startFaultyProxy, type Fault, type FaultyProxy } from './proxy';

const root = join(import.meta.dirname, '..', '..');
const apiKey = 'your-api-key'; // seed 002's example passes this literal key
let stack: LocalStack;
let proxy: FaultyProxy;
let sbx: Sandbox;
let work: string;
const user = 'sdk-user';

before(async () => {
  stack = await startLocalStack({ port: 0, reaperIntervalMs: 0, apiKey });
  proxy = await startFaultyProxy(stack.url);
  work = await mkdtemp(join(tmpdir(), 'sdk-test-'));
  sbx = await Sandbox.create({ apiKey, apiUrl: proxy.url, userId: user, config: { memory_mb: 1024 } });
});
after(async () => {
  await sbx?.destroy({ graceful: false }).catch(() => undefined);
  await proxy?.close();
  await stack?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

describe('sandboxes', () => {
  it('creates a ready sandbox, connects to it by id, lists it, reads its info', async () => {
    assert.match(sbx.sandboxId, /^sbx-[a-z0-9]{20}$/);
    assert.equal(sbx.info?.status, 'ready');
    const again = await Sandbox.connect(sbx.sandboxId, { apiKey, apiUrl: stack.url });
    assert.equal(again.info?.user_id, user);
    const listed = await Sandbox.list({ apiKey, apiUrl: stack.url, userId: user });
    assert.deepEqual(
      listed.map((s) => s.sandbox_id),
      [sbx.sandboxId],
    );
    assert.ok(await sbx.isRunning());
  });

  it('takes the key and URL from SANDBOX_API_KEY and SANDBOX_API_URL, and says what is missing', async () => {
    const saved = { key: process.env.SANDBOX_API_KEY, url: process.env.SANDBOX_API_URL };
    try {
      process.env.SANDBOX_API_KEY = apiKey;
      process.env.SANDBOX_API_URL = stack.url;
      assert.ok((await Sandbox.list({ status: 'ready' })).some((s) => s.sandbox_id === sbx.sandboxId));
      delete process.env.SANDBOX_API_KEY;
      assert.throws(() => new Sandbox(), /SANDBOX_API_KEY/);
    } finally {
      if (saved.key === undefined) delete process.env.SANDBOX_API_KEY;
      else process.env.SANDBOX_API_KEY = saved.key;
      if (saved.url === undefined) delete process.env.SANDBOX_API_URL;
      else process.env.SANDBOX_API_URL = saved.url;
    }
  });

  it('refreshes the timeout and heartbeats', async () => {
    const info = await sbx.setTimeout({ idleTimeoutMs: 600_000 });
    assert.equal(info.config.idle_timeout_seconds, 600);
    const beat = await sbx.heartbeat();
    assert.equal(beat.status, 'running');
    assert.equal((await sbx.getInfo()).status, 'running');
  });

  it('throws typed errors carrying the API code', async () => {
    await assert.rejects(
      Sandbox.connect('sbx-aaaaaaaaaaaaaaaaaaaa', { apiKey, apiUrl: stack.url }),
      (err: unknown) => err instanceof NotFoundError && err.code === 'not_found' && err.status === 404,
    );
    await assert.rejects(
      sbx.commands.run('true', { cwd: 'relative' }),
      (err: unknown) => err instanceof SandboxApiError && err.code === 'validation_error' && /cwd/.test(err.message),
    );
    await assert.rejects(
      Sandbox.list({ apiKey: 'wrong', apiUrl: stack.url }),
      (err: unknown) => err instanceof SandboxApiError && err.code === 'invalid_api_key',
    );
  });

  /** Creates through the proxy with `fault` on the first `times` POST /sandboxes; the retries under the key make exactly one sandbox. */
  async function createOnceThrough(user: string, fault: Fault, logged: string, times = 1, options: { maxRetries?: number } = {}): Promise<Sandbox> {
    const since = Date.now();
    proxy.rules.push(firstN(times, (m, p) => m === 'POST' && p === '/sandboxes', fault));
    const made = await Sandbox.create({ apiKey, apiUrl: proxy.url, userId: user, ...options });
    const listed = await Sandbox.list({ apiKey, apiUrl: stack.url, userId: user });
    assert.deepEqual(
      listed.map((s) => s.sandbox_id),
      [made.sandboxId],
    );
    assert.equal(proxy.log.filter((l) => l.method === 'POST' && l.path === '/sandboxes' && l.fault === logged && l.at >= since).length, times);
    return made;
  }

  it('retries a create whose answer was lost with the same idempotency key: one sandbox, not two', async () => {
    const made = await createOnceThrough('sdk-idem-user', { drop: true }, 'drop');
    await made.destroy({ graceful: false });
    assert.equal((await Sandbox.connect(made.sandboxId, { apiKey, apiUrl: stack.url })).info?.status, 'stopped');
  });

  it("retries a create that got API Gateway's 504 after the API made it, with the same key: one sandbox", async () => {
    const made = await createOnceThrough('sdk-idem-504-user', { status: 504, afterUpstream: true }, '504');
    await made.destroy({ graceful: false });
  });

  it('waits out a 409 with Retry-After on a create (its first attempt still under way), then gets the sandbox', async () => {
    const inProgress = { error: { code: 'conflict', message: 'a request with this Idempotency-Key is still in progress; retry shortly' } };
    const made = await createOnceThrough('sdk-idem-409-user', { status: 409, headers: { 'Retry-After': '1' }, body: inProgress }, '409');
    await made.destroy({ graceful: false });
  });

  it('waits out more in-progress answers than its retry count allows: the API said when to come back each time', async () => {
    const inProgress = { error: { code: 'conflict', message: 'a request with this Idempotency-Key is still in progress; retry shortly' } };
    const fault = { status: 409, headers: { 'Retry-After': '1' }, body: inProgress };
    const made = await createOnceThrough('sdk-idem-409-long-user', fault, '409', 4, { maxRetries: 1 });
    await made.destroy({ graceful: false });
  });

  it('does not repeat a POST that is not idempotent after a 504: the work may have been done', async () => {
    const started = Date.now();
    proxy.rules.push(firstN(1, (m, p) => m === 'POST' && p.endsWith('/files/mkdir'), { status: 504, afterUpstream: true }));
    await assert.rejects(sbx.files.mkdir('once-504'), (err: unknown) => err instanceof SandboxApiError && err.status === 504);
    assert.equal(proxy.log.filter((l) => l.path.endsWith('/files/mkdir') && l.at >= started).length, 1, 'sent once');
    assert.equal((await sbx.files.stat('once-504')).type, 'dir');
  });

  it('waits out 429 and 503 answers, as long as Retry-After says', async () => {
    const path = `/sandboxes/${sbx.sandboxId}`;
    proxy.rules.push(firstN(1, (m, p) => m === 'GET' && p === path, { status: 429, headers: { 'Retry-After': '1' } }));
    proxy.rules.push(firstN(1, (m, p) => m === 'GET' && p === path, { status: 503, headers: { 'Retry-After': '1' } }));
    const started = Date.now();
    assert.equal((await sbx.getInfo()).sandbox_id, sbx.sandboxId);
    const calls = proxy.log.filter((l) => l.path === path && l.at >= started);
    assert.deepEqual(
      calls.map((c) => c.fault ?? 'ok'),
      ['429', '503', 'ok'],
    );
    assert.ok(calls[1]!.at - calls[0]!.at >= 1000 && calls[2]!.at - calls[1]!.at >= 1000, 'waited Retry-After each time');
  });

  it('gives up on a POST that is not idempotent after a dropped connection rather than do it twice', async () => {
    proxy.rules.push(firstN(1, (m, p) => m === 'POST' && p.endsWith('/files/mkdir'), { drop: true }));
    await assert.rejects(sbx.files.mkdir('once'), ConnectionError);
    // It did happen: the API made the directory before the answer was lost.
    assert.equal((await sbx.files.stat('once')).type, 'dir');
  });
});

describe('commands', () => {
  it('runs in the foreground: exit code, both streams, live callbacks, cwd and env', async () => {
    const seen: string[] = [];
    const r = await sbx.commands.run('echo "$GREETING from $(pwd)"; echo oops >&2; exit 3', {
      cwd: '/tmp',
      env: { GREETING: 'hi' },
      onStdout: (s) => seen.push(s),
    });
    assert.equal(r.exitCode, 3);
    assert.equal(r.status, 'exited');
    assert.equal(r.stdout, 'hi from /tmp\n');
    assert.equal(r.stderr, 'oops\n');
    assert.equal(seen.join(''), r.stdout);
    assert.match(r.commandId, /^sdk-/);
  });

  it('follows a background command by offsets across dropped connections, losing and repeating no byte', async () => {
    const n = 400;
    const expected = Array.from({ length: n }, (_, i) => `line ${i + 1} é\n`).join('');
    const live: string[] = [];
    const h = await sbx.commands.run(`for i in $(seq 1 ${n}); do echo "line $i é"; [ $((i % 50)) = 0 ] && sleep 1; done; echo done >&2`, {
      background: true,
      onStdout: (s) => live.push(s),
    });
    assert.ok(h instanceof CommandHandle);
    // Every third read of its output reaches the API and loses its answer.
    let reads = 0;
    proxy.rules.push(({ method, path }) => (method === 'GET' && path.includes(`/commands/${h.id}?`) && ++reads % 3 === 0 ? { drop: true } : undefined));
    // Meanwhile another handle picks the command up from where the first one is, as after a restart.
    while (h.stdoutOffset === 0) await h.poll(5);
    const from = h.stdoutOffset;
    const resumed = await sbx.commands.connect(h.id, { stdoutOffset: from, stderrOffset: 0 });
    const [first, second] = await Promise.all([h.wait(), resumed.wait()]);
    assert.equal(first.stdout, expected);
    assert.equal(live.join(''), expected);
    assert.equal(first.stderr, 'done\n');
    assert.equal(first.exitCode, 0);
    assert.equal(Buffer.from(second.stdout).equals(Buffer.from(expected).subarray(from)), true, 'the resumed handle has exactly the bytes after its offset');
    const dropped = proxy.log.filter((l) => l.fault === 'drop' && l.path.includes(`/commands/${h.id}?`)).length;
    assert.ok(dropped >= 2, `connections were dropped (${dropped})`);
  });

  it('sends stdin by offset, a write whose answer was lost counted once', async () => {
    const h = await sbx.commands.run('cat', { background: true, stdinOpen: true });
    proxy.rules.push(firstN(1, (m, p) => m === 'POST' && p.endsWith(`/commands/${h.id}/stdin`), { drop: true }));
    await h.sendStdin('hello ');
    await h.sendStdin('world', { eof: true });
    const r = await h.wait();
    assert.equal(r.stdout, 'hello world');
    await assert.rejects(new CommandHandle(new ApiClient({ apiKey, apiUrl: stack.url }), sbx.sandboxId, h.id).sendStdin('x'), ConflictError);
  });

  it('kills a background command, lists and connects to commands', async () => {
    const h = await sbx.commands.run('sleep 300', { background: true, commandId: 'sdk-sleeper' });
    await h.kill();
    const r = await h.wait();
    assert.equal(r.status, 'killed');
    const listed = await sbx.commands.list({ limit: 50 });
    assert.ok(listed.some((c) => c.command_id === 'sdk-sleeper' && c.status === 'killed'));
    const again = await sbx.commands.connect('sdk-sleeper');
    assert.equal(again.info?.status, 'killed');
  });

  it('aborts a foreground run with an AbortSignal, and kills its command', async () => {
    const id = 'sdk-aborted';
    await assert.rejects(
      sbx.commands.run('sleep 120', { commandId: id, signal: AbortSignal.timeout(3000) }),
      (err: Error) => err.name === 'TimeoutError' || err.name === 'AbortError',
    );
    const h = await sbx.commands.connect(id);
    assert.equal((await h.wait()).status, 'killed');
  });

  it('quotes runCommand arguments: the shell never interprets them', async () => {
    const args = ['$(id)', "it's", 'a b', '*', '; rm -rf ~', ''];
    const r = await sbx.runCommand('printf', ['[%s]\\n', ...args]);
    assert.equal(r.stdout, args.map((a) => `[${a}]\n`).join(''));
    assert.equal(shellQuote('plain-word_1.txt'), 'plain-word_1.txt');
  });
});

describe('files', () => {
  it('writes, reads (text and bytes), stats, lists, makes directories, moves and removes', async () => {
    await sbx.files.write('notes/a.txt', 'first', { mkdirs: true });
    assert.equal(await sbx.files.read('notes/a.txt', { format: 'text' }), 'first');
    const bytes = randomBytes(1000);
    await sbx.files.write('/home/agent/notes/b.bin', bytes);
    assert.ok(Buffer.from(await sbx.files.read('notes/b.bin')).equals(bytes));
    assert.equal((await sbx.files.stat('notes/b.bin')).size, 1000);
    const dir = await sbx.files.mkdir('notes/deep/er', { parents: true });
    assert.equal(dir.type, 'dir');
    assert.deepEqual((await sbx.files.list('notes')).map((e) => e.name).sort(), ['a.txt', 'b.bin', 'deep']);
    assert.ok((await sbx.files.list('notes', { recursive: true })).some((e) => e.path === '/home/agent/notes/deep/er'));
    const moved = await sbx.files.move('notes/a.txt', 'notes/deep/a.txt');
    assert.equal(moved.path, '/home/agent/notes/deep/a.txt');
    assert.equal(await sbx.files.exists('notes/a.txt'), false);
    await sbx.files.remove('notes', { recursive: true });
    assert.equal(await sbx.files.exists('notes'), false);
    await assert.rejects(sbx.files.read('notes/b.bin'), (err: unknown) => err instanceof NotFoundError && err.details.path === '/home/agent/notes/b.bin');
  });

  it('writes and reads a file past the inline limit through presigned URLs', async () => {
    const big = randomBytes(5 * 1024 * 1024 + 17);
    const written = await sbx.files.write('big.bin', big);
    assert.equal(written.sha256, sha256(big));
    const back = await sbx.files.read('big.bin');
    assert.ok(Buffer.from(back).equals(big));
  });

  it('uploads and downloads 256 MiB with progress, streaming and checked by sha256', async () => {
    const local = join(work, 'big-upload.bin');
    const data = randomBytes(256 * 1024 * 1024);
    await writeFile(local, data);
    const up: Progress[] = [];
    const sent = await sbx.files.upload(local, 'uploads/big.bin', { mkdirs: true, onProgress: (p) => up.push(p) });
    assert.equal(sent.via, 'presigned');
    assert.equal(sent.sha256, sha256(data));
    assert.ok(up.length > 10, `progress reported (${up.length})`);
    assert.deepEqual(up.at(-1), { bytes: data.length, total: data.length });
    const down: Progress[] = [];
    const target = join(work, 'big-download.bin');
    const got = await sbx.files.download('uploads/big.bin', target, { onProgress: (p) => down.push(p) });
    assert.equal(got.via, 'presigned');
    assert.equal(sha256(await readFile(target)), sha256(data));
    assert.equal(down.at(-1)?.bytes, data.length);
    // A stream of unknown length goes too, and small files go inline.
    const small = await sbx.files.upload(createReadStream(local, { end: 999 }), 'uploads/small.bin');
    assert.equal(small.via, 'inline');
    assert.equal(small.size, 1000);
  });
});

describe('pause, resume and the end', () => {
  it('pauses and resumes, keeping files, on the pause and resume routes', async () => {
    await sbx.files.write('kept.txt', 'still here');
    const since = Date.now();
    assert.equal((await sbx.pause()).status, 'paused');
    assert.equal((await sbx.resume()).status, 'ready');
    assert.equal(await sbx.files.read('kept.txt', { format: 'text' }), 'still here');
    const called = proxy.log.filter((l) => l.at >= since && l.method === 'POST').map((l) => l.path);
    assert.deepEqual(called, [`/sandboxes/${sbx.sandboxId}/pause`, `/sandboxes/${sbx.sandboxId}/resume`], 'not the deprecated /stop and /start');
  });

  it("runs seed 002's example verbatim (with our package name) as a Node process", async () => {
    const { stdout } = await promisify(execFile)(process.execPath, [join(root, 'sdk', 'examples', 'simple.mjs')], {
      cwd: root,
      env: { ...process.env, SANDBOX_API_URL: stack.url, SANDBOX_USER_ID: 'seed-user' },
      timeout: 240_000,
    });
    assert.match(stdout, /^v20\.\d+\.\d+\n/);
    assert.ok(stdout.includes("console.log('Hello!');"), stdout);
    assert.match(stdout, /hello\.js/);
    const left = await Sandbox.list({ apiKey, apiUrl: stack.url, userId: 'seed-user' });
    assert.equal(left.length, 1);
    assert.equal(left[0]?.status, 'stopped', 'destroy() ended the sandbox it created on first use');
  });

  it("runs the README's SDK quick start as written", async () => {
    const { stdout } = await promisify(execFile)(process.execPath, [join(root, 'sdk', 'examples', 'quick-start.mjs')], {
      cwd: root,
      env: { ...process.env, SANDBOX_API_URL: stack.url, SANDBOX_API_KEY: apiKey },
      timeout: 240_000,
    });
    assert.match(stdout, /^0 Python 3\.\d+/);
    assert.ok(stdout.includes('step 1\nstep 2\nstep 3\nexit code 0\nremember me\n'), stdout);
  });

  it('destroys the sandbox', async () => {
    await sbx.destroy();
    assert.ok(Sandbox.isEnded(await sbx.getInfo()));
  });
});
