/**
 * The sbx CLI (the SDK package's bin, sdk/dist/cli.js from the build) driven
 * as a process against the local stack: create, ls, info, exec (live output,
 * the command's exit status, Ctrl-C kills the remote command), cp both ways,
 * logs, pause, resume (and stop, start), rm, --json, and errors that say what to do.
 * Run: npm run build && node --import tsx --test test/sdk/cli.test.ts
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startLocalStack, type LocalStack } from '../../lib/local/stack';
import { Sandbox } from '../../sdk/src/index';

const root = join(import.meta.dirname, '..', '..');
const cli = join(root, 'sdk', 'dist', 'cli.js');
let stack: LocalStack;
let work: string;
let id: string;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  /** ms from the start to the first stdout bytes, and to the end. */
  firstOutputMs?: number;
  endMs: number;
}

function sbx(args: string[], o: { env?: Record<string, string | undefined>; onSpawn?: (p: ReturnType<typeof spawn>) => void } = {}): Promise<Run> {
  const started = Date.now();
  const env: Record<string, string | undefined> = { ...process.env, SANDBOX_API_KEY: stack.apiKey, SANDBOX_API_URL: stack.url, HOME: work, ...o.env };
  const child = spawn(process.execPath, [cli, ...args], { env: env as NodeJS.ProcessEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  o.onSpawn?.(child);
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  let firstOutputMs: number | undefined;
  child.stdout.on('data', (c: Buffer) => {
    firstOutputMs ??= Date.now() - started;
    out.push(c);
  });
  child.stderr.on('data', (c: Buffer) => err.push(c));
  return new Promise((resolve) => {
    child.on('close', (code) =>
      resolve({
        code,
        stdout: Buffer.concat(out).toString(),
        stderr: Buffer.concat(err).toString(),
        endMs: Date.now() - started,
        ...(firstOutputMs !== undefined ? { firstOutputMs } : {}),
      }),
    );
  });
}

let stateFile: string;

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'sbx-cli-'));
  // The state file `npm start` writes to .local/stack.json: what `sbx keys` reads to reach this stack's tables.
  stateFile = join(work, 'stack.json');
  stack = await startLocalStack({ port: 0, reaperIntervalMs: 0, stateFile });
});
after(async () => {
  await stack?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

describe('sbx', () => {
  it('says what to do without a key, and for an unknown command', async () => {
    const none = await sbx(['ls'], { env: { SANDBOX_API_KEY: undefined, SANDBOX_API_URL: undefined } });
    assert.equal(none.code, 1);
    assert.match(none.stderr, /SANDBOX_API_KEY.*config\.json/s);
    const unknown = await sbx(['frobnicate']);
    assert.equal(unknown.code, 1);
    assert.match(unknown.stderr, /unknown command "frobnicate"[\s\S]*usage: sbx/);
  });

  it('creates a sandbox, lists it and shows it (text and --json)', async () => {
    const created = await sbx(['create', '--user', 'cli-user', '--memory', '1024', '--json']);
    assert.equal(created.code, 0, created.stderr);
    const info = JSON.parse(created.stdout);
    assert.equal(info.status, 'ready');
    assert.equal(info.config.memory_mb, 1024);
    id = info.sandbox_id;
    const ls = await sbx(['ls', '--user', 'cli-user']);
    assert.match(ls.stdout, new RegExp(`^${id}\\s+ready\\s+cli-user`, 'm'));
    const shown = JSON.parse((await sbx(['info', id, '--json'])).stdout);
    assert.equal(shown.sandbox_id, id);
    const missing = await sbx(['info', 'sbx-aaaaaaaaaaaaaaaaaaaa']);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /not_found[\s\S]*sbx ls/);
  });

  it("exec streams output live and exits with the command's status", async () => {
    const r = await sbx(['exec', id, '--', 'echo first; sleep 8; echo second; echo problem >&2; exit 7']);
    assert.equal(r.code, 7);
    assert.equal(r.stdout, 'first\nsecond\n');
    assert.equal(r.stderr, 'problem\n');
    assert.ok(r.firstOutputMs !== undefined && r.endMs - r.firstOutputMs >= 4000, `first line arrived before the end (${r.firstOutputMs} of ${r.endMs} ms)`);
    const quoted = await sbx(['exec', id, '--', 'printf', '%s|', 'a b', '$(id)']);
    assert.equal(quoted.stdout, 'a b|$(id)|');
    assert.equal(quoted.code, 0);
  });

  it('Ctrl-C on exec kills the remote command and exits 130', async () => {
    let child: ReturnType<typeof spawn> | undefined;
    const running = sbx(['exec', id, '--', 'echo started; sleep 300'], { onSpawn: (c) => (child = c) });
    // Wait for the command's first output, then interrupt as a terminal would.
    for (let i = 0; i < 100; i++) {
      const list = await Sandbox.connect(id, { apiKey: stack.apiKey, apiUrl: stack.url }).then((s) => s.commands.list({ limit: 1 }));
      if (list[0]?.command === 'echo started; sleep 300' && list[0].stdout_bytes > 0) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    child!.kill('SIGINT');
    const r = await running;
    assert.equal(r.code, 130, r.stderr);
    assert.match(r.stderr, /killing/);
    const s = await Sandbox.connect(id, { apiKey: stack.apiKey, apiUrl: stack.url });
    const [newest] = await s.commands.list({ limit: 1 });
    const final = await (await s.commands.connect(newest!.command_id)).wait();
    assert.equal(final.status, 'killed');
  });

  it('cp copies a file and a directory in and out (past the inline limit), and logs prints a command output', async () => {
    const local = join(work, 'data.bin');
    const data = randomBytes(6 * 1024 * 1024);
    await writeFile(local, data);
    const up = await sbx(['cp', local, `${id}:/home/agent/in/data.bin`]);
    assert.equal(up.code, 0, up.stderr);
    assert.match(up.stdout, new RegExp(createHash('sha256').update(data).digest('hex')));
    const back = join(work, 'back.bin');
    const down = await sbx(['cp', `${id}:in/data.bin`, back, '--json']);
    assert.equal(down.code, 0, down.stderr);
    assert.equal(JSON.parse(down.stdout).via, 'presigned');
    assert.ok((await readFile(back)).equals(data));

    // A directory goes as tar.gz and is unpacked on the other side, both ways.
    const tree = join(work, 'tree');
    await mkdir(join(tree, 'sub', 'deeper'), { recursive: true });
    await writeFile(join(tree, 'top.txt'), 'top\n');
    await writeFile(join(tree, 'sub', 'deeper', 'leaf.txt'), 'leaf\n');
    const dirUp = await sbx(['cp', tree, `${id}:tree`]);
    assert.equal(dirUp.code, 0, dirUp.stderr);
    const s = await Sandbox.connect(id, { apiKey: stack.apiKey, apiUrl: stack.url });
    assert.equal(await s.files.read('tree/sub/deeper/leaf.txt', { format: 'text' }), 'leaf\n');
    const treeBack = join(work, 'tree-back');
    const dirDown = await sbx(['cp', `${id}:tree`, treeBack]);
    assert.equal(dirDown.code, 0, dirDown.stderr);
    assert.equal(await readFile(join(treeBack, 'sub', 'deeper', 'leaf.txt'), 'utf8'), 'leaf\n');
    assert.equal(await readFile(join(treeBack, 'top.txt'), 'utf8'), 'top\n');

    await s.commands.run('seq 1 5', { commandId: 'cli-logs' });
    const logs = await sbx(['logs', id, 'cli-logs']);
    assert.equal(logs.stdout, '1\n2\n3\n4\n5\n');
    const followed = await sbx(['logs', id, 'cli-logs', '--follow', '--json']);
    assert.equal(JSON.parse(followed.stdout).exitCode, 0);
  });

  it('shows live output and a progress bar in a real terminal (tmux), and the exit status', {
    skip: spawnSync('tmux', ['-V']).status !== 0 && 'tmux is not installed',
  }, async () => {
    const session = `sbx-test-${process.pid}`;
    const local = join(work, 'tty.bin');
    await writeFile(local, randomBytes(12 * 1024 * 1024));
    const script = join(work, 'tty.sh');
    await writeFile(
      script,
      [
        `export SANDBOX_API_KEY='${stack.apiKey}' SANDBOX_API_URL='${stack.url}'`,
        `node '${cli}' cp '${local}' '${id}:tty.bin'`,
        `node '${cli}' exec ${id} -- 'for i in 1 2 3 4 5 6; do echo tick $i; sleep 2; done; exit 5'; echo "EXIT=$?"`,
        'sleep 600',
      ].join('\n'),
    );
    execFileSync('tmux', ['new-session', '-d', '-s', session, '-x', '120', '-y', '40', `bash ${script}`]);
    const pane = () => execFileSync('tmux', ['capture-pane', '-p', '-t', session]).toString();
    try {
      let seen = '';
      let sawLive = false;
      for (let i = 0; i < 300 && !seen.includes('EXIT='); i++) {
        await new Promise((r) => setTimeout(r, 300));
        seen = pane();
        // A tick on screen while the command still runs (no later tick yet, no exit).
        if (/tick 1/.test(seen) && !/tick 6/.test(seen) && !seen.includes('EXIT=')) sawLive = true;
      }
      assert.match(seen, /\[#{30}\] 12\.0\/12\.0 MiB/, `a progress bar reached its end:\n${seen}`);
      assert.ok(sawLive, `output appeared while the command ran:\n${seen}`);
      assert.match(seen, /tick 6\s+EXIT=5/, seen);
    } finally {
      spawnSync('tmux', ['kill-session', '-t', session]);
    }
  });

  it("runs the README's CLI quick start as written", async () => {
    const readme = readFileSync(join(root, 'README.md'), 'utf8');
    const block = /### CLI quick start\n\n```sh\n([\s\S]*?)```/.exec(readme)?.[1];
    assert.ok(block, 'the README has a CLI quick start');
    // Its first line exports the key and URL npm start printed: this stack's instead.
    const lines = block.split('\n');
    assert.match(lines[0] ?? '', /^export SANDBOX_API_URL=/);
    // Asynchronously: the local stack answers from this very process.
    const result = await new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
      const child = spawn('bash', ['-c', lines.slice(1).join('\n')], {
        cwd: root,
        env: { ...process.env, SANDBOX_API_KEY: stack.apiKey, SANDBOX_API_URL: stack.url, HOME: work },
      });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
      child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
      child.on('close', (status) => resolve({ status, stdout, stderr }));
    });
    assert.equal(result.status, 0, result.stderr);
    assert.match(result.stdout, /tick 1\ntick 2\ntick 3\nexit status 3\n/);
    assert.match(result.stdout, /one argument each, quoted\n/);
    assert.equal(readFileSync('/tmp/back.txt', 'utf8'), 'hello\n');
    assert.match(result.stdout, /sbx-[a-z0-9]{20} stopped\n$/);
  });

  it('reads the key and URL from ~/.config/ephemeral-sandbox/config.json, the environment winning, and names a broken file', async () => {
    const dir = join(work, '.config', 'ephemeral-sandbox');
    await mkdir(dir, { recursive: true });
    const file = join(dir, 'config.json');
    const noEnv = { SANDBOX_API_KEY: undefined, SANDBOX_API_URL: undefined };
    try {
      await writeFile(file, JSON.stringify({ apiKey: stack.apiKey, apiUrl: stack.url }));
      const fromFile = await sbx(['ls', '--json'], { env: noEnv });
      assert.equal(fromFile.code, 0, fromFile.stderr);
      // The same answer as with the key and URL in the environment.
      assert.deepEqual(JSON.parse(fromFile.stdout), JSON.parse((await sbx(['ls', '--json'])).stdout));
      // A value in the environment wins over the file's: a wrong key in the environment is refused.
      const envWins = await sbx(['ls'], { env: { SANDBOX_API_KEY: 'sk_wrong_key_from_the_environment', SANDBOX_API_URL: undefined } });
      assert.equal(envWins.code, 1);
      assert.match(envWins.stderr, /SANDBOX_API_KEY/);
      // The file's key alone, the URL from the environment.
      const mixed = await sbx(['ls', '--json'], { env: { SANDBOX_API_KEY: undefined } });
      assert.equal(mixed.code, 0, mixed.stderr);
      await writeFile(file, '{"apiKey": ');
      const broken = await sbx(['ls'], { env: noEnv });
      assert.equal(broken.code, 1);
      assert.match(broken.stderr, /config\.json is not JSON.*"apiKey"/s);
      await writeFile(file, JSON.stringify({ apiKey: 42, apiUrl: stack.url }));
      const wrongType = await sbx(['ls'], { env: noEnv });
      assert.equal(wrongType.code, 1);
      assert.match(wrongType.stderr, /string "apiKey" and "apiUrl"/);
    } finally {
      await rm(file, { force: true });
    }
  });

  it('sbx keys creates a key that works, lists it, and revokes it (against the local stack, as npm run keys)', async () => {
    const tenant = 'cli-keys-tenant';
    const keys = (args: string[]) => sbx(['keys', ...args, '--state-file', stateFile], { env: { SANDBOX_API_KEY: undefined, SANDBOX_API_URL: undefined } });
    const help = await sbx(['keys', '--help']);
    assert.equal(help.code, 0, help.stderr);
    assert.match(help.stdout, /sbx keys <command>/);
    const bad = await keys(['create']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /create needs --tenant/);

    const created = await keys(['create', '--tenant', tenant, '--description', 'from sbx']);
    assert.equal(created.code, 0, created.stderr);
    const key = created.stdout.trim();
    assert.match(created.stderr, /Created key [a-z0-9]{10} for tenant cli-keys-tenant/);
    // The new key works for the API, and sees its own tenant's (empty) list.
    const asTenant = await sbx(['ls', '--json'], { env: { SANDBOX_API_KEY: key } });
    assert.equal(asTenant.code, 0, asTenant.stderr);
    assert.deepEqual(JSON.parse(asTenant.stdout), []);

    const listed = await keys(['list', '--tenant', tenant, '--json']);
    assert.equal(listed.code, 0, listed.stderr);
    const [record] = JSON.parse(listed.stdout) as { key_id: string; state: string; description: string }[];
    assert.equal(record?.state, 'active');
    assert.equal(record?.description, 'from sbx');
    assert.ok(!listed.stdout.includes(key), 'list never shows the key itself');

    const revoked = await keys(['revoke', '--tenant', tenant, '--key-id', record!.key_id]);
    assert.equal(revoked.code, 0, revoked.stderr);
    assert.match(revoked.stderr, /Revoked key/);
    assert.equal(JSON.parse((await keys(['list', '--tenant', tenant, '--json'])).stdout)[0].state, 'revoked');
  });

  it('pauses, resumes (also by their deprecated names stop and start) and removes', async () => {
    assert.match((await sbx(['pause', id])).stdout, /paused/);
    assert.match((await sbx(['resume', id])).stdout, /ready/);
    assert.match((await sbx(['stop', id])).stdout, /paused/);
    assert.match((await sbx(['start', id])).stdout, /ready/);
    const rmd = await sbx(['rm', id, '--json']);
    assert.equal(rmd.code, 0, rmd.stderr);
    assert.equal(JSON.parse(rmd.stdout).status, 'stopped');
  });
});
