/**
 * The foundation, end to end on real components: HTTP -> local API Gateway ->
 * handlers -> DynamoDB Local -> local SSM endpoint -> host-agent -> Docker.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { startLocalStack, type LocalStack } from '../../lib/local/stack';
import { apiClient, type ApiClient } from '../support/api-client';
import { containerExists, dockerExec, inspect } from '../support/docker';

let stack: LocalStack;
let api: ApiClient;
let id: string;

before(async () => {
  stack = await startLocalStack({ port: 0, reaperIntervalMs: 0, ssmInvisibleMs: 150 });
  api = apiClient(stack.url, stack.apiKey);
});
after(async () => {
  await stack?.close();
});

describe('the sandbox lifecycle (create -> exec -> destroy)', () => {
  it('answers /health without a key', async () => {
    const res = await apiClient(stack.url, undefined).call('GET', '/health');
    assert.equal(res.status, 200);
    assert.equal(res.body.status, 'healthy');
  });

  it('creates a sandbox that is ready when create answers', async () => {
    const res = await api.create('test-user', { cpu: 1, memory_mb: 512, labels: { purpose: 'e2e' } });
    assert.equal(res.status, 201, res.text);
    id = res.body.sandbox_id;
    assert.match(id, /^sbx-[a-z0-9]{20}$/);
    assert.equal(res.body.user_id, 'test-user');
    assert.equal(res.body.status, 'ready');
    assert.equal(res.body.host_id, stack.hostId);
    assert.equal(res.body.hot_path, '/home/agent');
    assert.equal(res.body.cold_path, '/data/cold');
    assert.equal(res.body.config.memory_mb, 512);
    assert.ok(Date.parse(res.body.expires_at) > Date.parse(res.body.created_at));
    const info = await inspect(id);
    assert.equal(info.State.Running, true);
    assert.equal(info.HostConfig.Memory, 512 * 1024 * 1024);
    assert.equal(info.HostConfig.NanoCpus, 1e9);
  });

  it('runs commands as the non-root user agent with python3 and node', async () => {
    const res = await api.exec(id, 'whoami && python3 --version && node --version');
    assert.equal(res.status, 200, res.text);
    assert.equal(res.body.exit_code, 0, res.body.stderr);
    const [who, py, node] = res.body.stdout.trim().split('\n');
    assert.equal(who, 'agent');
    assert.match(py, /^Python 3\.\d+/);
    assert.match(node, /^v\d+\./);
    assert.equal(res.body.timed_out, false);
    assert.equal(typeof res.body.duration_ms, 'number');
  });

  it('returns a non-zero exit code and stderr', async () => {
    const res = await api.exec(id, 'echo out; echo err >&2; exit 3');
    assert.equal(res.status, 200);
    assert.equal(res.body.exit_code, 3);
    assert.equal(res.body.stdout, 'out\n');
    assert.equal(res.body.stderr, 'err\n');
  });

  it('kills a command that runs past its timeout and says so', async () => {
    const started = Date.now();
    const res = await api.exec(id, 'sleep 60', { timeout: 2 });
    const took = Date.now() - started;
    assert.equal(res.status, 200, res.text);
    assert.equal(res.body.timed_out, true);
    assert.notEqual(res.body.exit_code, 0);
    assert.ok(took < 15_000, `timeout answered after ${took} ms`);
    const ps = await dockerExec(id, ['bash', '-c', 'ps -eo args | grep -c "^sleep 60" || true']);
    assert.equal(ps.stdout.trim(), '0', 'the sleep must be gone');
  });

  it('keeps the working directory between execs when cwd is not given', async () => {
    const first = await api.exec(id, 'mkdir -p /tmp/work/deeper && cd /tmp/work/deeper');
    assert.equal(first.body.cwd, '/tmp/work/deeper');
    const second = await api.exec(id, 'pwd');
    assert.equal(second.body.stdout, '/tmp/work/deeper\n');
    const explicit = await api.exec(id, 'pwd', { cwd: '/home/agent' });
    assert.equal(explicit.body.stdout, '/home/agent\n');
    const third = await api.exec(id, 'pwd');
    assert.equal(third.body.stdout, '/tmp/work/deeper\n', 'an explicit cwd does not move the sticky one');
  });

  it('falls back to the home when the sticky working directory was removed, but not for an explicit cwd', async () => {
    const moved = await api.exec(id, 'mkdir -p /tmp/doomed && cd /tmp/doomed');
    assert.equal(moved.body.cwd, '/tmp/doomed');
    await api.exec(id, 'rm -rf /tmp/doomed', { cwd: '/tmp' });
    const next = await api.exec(id, 'pwd');
    assert.equal(next.body.exit_code, 0, next.body.stderr);
    assert.equal(next.body.stdout, '/home/agent\n');
    assert.match(next.body.stderr, /working directory \/tmp\/doomed no longer exists/);
    const explicit = await api.exec(id, 'pwd', { cwd: '/tmp/doomed' });
    assert.notEqual(explicit.body.exit_code, 0);
    assert.match(explicit.body.stderr, /No such file or directory/);
    await api.exec(id, 'cd /tmp/work/deeper');
  });

  it('runs a 64 KiB command intact', async () => {
    const payload = randomBytes(33 * 1024)
      .toString('hex')
      .slice(0, 64 * 1024 - 200);
    const command = `cat <<'EOF_PAYLOAD' | tr -d '\\n' | sha256sum\n${payload}\nEOF_PAYLOAD`;
    assert.ok(command.length >= 64 * 1024 - 150);
    const res = await api.exec(id, command);
    assert.equal(res.status, 200, res.text);
    assert.equal(res.body.exit_code, 0, res.body.stderr);
    assert.equal(res.body.stdout.split(' ')[0], createHash('sha256').update(payload).digest('hex'));
  });

  it('passes quotes, $(), backticks and newlines to the sandbox bash unchanged, never to the host shell', async () => {
    const marker = `/tmp/pwned-${randomBytes(6).toString('hex')}`;
    const command = [
      `echo "double $(echo sub) \`echo tick\`" 'single $(not) \`not\`'`,
      `printf '%s\\n' "line1" "line 2"`,
      `touch ${marker}; echo "ünïcødé ✓"`,
    ].join('\n');
    const res = await api.exec(id, command);
    assert.equal(res.status, 200, res.text);
    assert.equal(res.body.stdout, 'double sub tick single $(not) `not`\nline1\nline 2\nünïcødé ✓\n');
    assert.equal(existsSync(marker), false, 'nothing ran on the host');
    const inContainer = await dockerExec(id, ['test', '-e', marker]);
    assert.equal(inContainer.code, 0, 'it ran in the sandbox');
  });

  it('answers 20 concurrent execs on one sandbox correctly', async () => {
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => api.exec(id, `echo ${i}; echo e${i} >&2; exit ${i % 4}`)));
    results.forEach((res, i) => {
      assert.equal(res.status, 200, res.text);
      assert.equal(res.body.stdout, `${i}\n`);
      assert.equal(res.body.stderr, `e${i}\n`);
      assert.equal(res.body.exit_code, i % 4);
    });
  });

  it('lists sandboxes with filters and pagination', async () => {
    const other = await api.create('other-user');
    assert.equal(other.status, 201, other.text);
    const mine = await api.call('GET', '/sandboxes?user_id=test-user');
    assert.equal(mine.status, 200);
    assert.ok(mine.body.sandboxes.every((s: any) => s.user_id === 'test-user'));
    assert.equal(mine.body.total, mine.body.sandboxes.length);
    const page1 = await api.call('GET', '/sandboxes?limit=1');
    assert.equal(page1.body.sandboxes.length, 1);
    assert.ok(page1.body.total >= 2);
    assert.ok(page1.body.next_token);
    const page2 = await api.call('GET', `/sandboxes?limit=1&next_token=${page1.body.next_token}`);
    assert.equal(page2.body.sandboxes.length, 1);
    assert.notEqual(page2.body.sandboxes[0].sandbox_id, page1.body.sandboxes[0].sandbox_id);
    const ready = await api.call('GET', '/sandboxes?status=ready');
    assert.ok(ready.body.sandboxes.every((s: any) => s.status === 'ready'));
    await api.destroy(other.body.sandbox_id, false);
  });

  it('destroys: 204, exec then answers 409 and get shows stopped with a reason', async () => {
    const res = await api.destroy(id);
    assert.equal(res.status, 204, res.text);
    assert.equal(await containerExists(id), false);
    const exec = await api.exec(id, 'true');
    assert.equal(exec.status, 409);
    assert.equal(exec.body.error.code, 'invalid_state');
    const got = await api.get(id);
    assert.equal(got.body.status, 'stopped');
    assert.equal(got.body.stop_reason, 'user_requested');
  });

  it('two concurrent destroys remove one container and neither errors', async () => {
    const created = await api.create('racer');
    const sid = created.body.sandbox_id;
    const [a, b] = await Promise.all([api.destroy(sid, false), api.destroy(sid, false)]);
    assert.deepEqual([a.status, b.status].sort(), [204, 204]);
    // The loser waits for the end the winner records; the winner removes the container.
    for (let i = 0; i < 100 && (await containerExists(sid)); i++) await new Promise((r) => setTimeout(r, 100));
    assert.equal(await containerExists(sid), false);
    const got = await api.get(sid);
    assert.equal(got.body.status, 'stopped');
  });
});

describe('bad input gets the JSON error it deserves, never a 500', () => {
  let live: string;
  before(async () => {
    live = (await api.create('bad-input-user')).body.sandbox_id;
  });
  after(async () => {
    await api.destroy(live, false);
  });

  const cases: [string, () => Promise<{ status: number; body: any }>, number, string, RegExp?][] = [
    ['invalid JSON', () => api.call('POST', '/sandboxes', '{"user_id": '), 400, 'invalid_json'],
    ['a missing user_id', () => api.call('POST', '/sandboxes', {}), 400, 'validation_error', /user_id/],
    ['a user_id with a slash', () => api.create('../etc'), 400, 'validation_error', /user_id/],
    ['cpu out of range', () => api.create('u', { cpu: 1000 }), 400, 'validation_error', /config\.cpu/],
    ['memory out of range', () => api.create('u', { memory_mb: 1 }), 400, 'validation_error', /config\.memory_mb/],
    ['ttl out of range', () => api.create('u', { ttl_seconds: 10 }), 400, 'validation_error', /config\.ttl_seconds/],
    ['an unknown field', () => api.call('POST', '/sandboxes', { user_id: 'u', bogus: 1 }), 400, 'validation_error', /bogus/],
    ['exec timeout out of range', () => api.exec(live, 'true', { timeout: 601 }), 400, 'validation_error', /timeout/],
    ['exec timeout zero', () => api.exec(live, 'true', { timeout: 0 }), 400, 'validation_error', /timeout/],
    ['an empty command', () => api.exec(live, ''), 400, 'validation_error', /command/],
    ['a relative cwd', () => api.exec(live, 'true', { cwd: 'tmp' }), 400, 'validation_error', /cwd/],
    ['a bad user', () => api.exec(live, 'true', { user: 'root; rm -rf /' }), 400, 'validation_error', /user/],
    ['a missing key', () => apiClient(stack.url, undefined).call('GET', '/sandboxes'), 401, 'missing_api_key'],
    ['a wrong key', () => apiClient(stack.url, 'esk_wrongwrong_' + 'x'.repeat(43)).call('GET', '/sandboxes'), 403, 'invalid_api_key'],
    ['an unknown sandbox', () => api.get('sbx-aaaaaaaaaaaaaaaaaaaa'), 404, 'not_found'],
    ['a malformed sandbox id', () => api.get('not-an-id'), 404, 'not_found'],
    ['exec on an unknown sandbox', () => api.exec('sbx-aaaaaaaaaaaaaaaaaaaa', 'true'), 404, 'not_found'],
    ['a body over the limit', () => api.exec(live, 'x'.repeat(300 * 1024)), 413, 'payload_too_large'],
    // A REST API answers an unknown method like an unknown route (the deployed gateway is configured so).
    ['a wrong method', () => api.call('PUT', '/sandboxes'), 404, 'not_found'],
    ['an unknown route', () => api.call('GET', '/nope'), 404, 'not_found'],
    ['a bad list status', () => api.call('GET', '/sandboxes?status=zombie'), 400, 'validation_error', /status/],
    ['a forged page token', () => api.call('GET', '/sandboxes?next_token=eyJ0Ijoib3RoZXIifQ'), 400, 'validation_error', /next_token/],
    ['a bad graceful flag', () => api.call('DELETE', `/sandboxes/${live}?graceful=maybe`), 400, 'validation_error', /graceful/],
  ];
  for (const [name, call, status, code, message] of cases) {
    it(`answers ${status} ${code} for ${name}`, async () => {
      const res = await call();
      assert.equal(res.status, status, JSON.stringify(res.body));
      assert.equal(res.body.error.code, code);
      assert.equal(typeof res.body.error.message, 'string');
      if (message) assert.match(res.body.error.message, message);
    });
  }
});
