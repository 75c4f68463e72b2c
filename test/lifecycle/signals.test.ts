/**
 * Issue 5 on the real local stack: the signals a sandbox sends about itself
 * (heartbeat / complete / error, with its own token, from inside it), the
 * idle timeout and TTL API, stop/start, and idempotent create.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { PutCommand } from '@aws-sdk/lib-dynamodb';
import { containerLabels } from '../../contract/host-protocol';
import { dynamo } from '../../lambdas/shared/clients/dynamodb';
import { config } from '../../lambdas/shared/config';
import { startLocalStack, type LocalStack } from '../../lib/local/stack';
import { apiClient, type ApiClient } from '../support/api-client';
import { containerExists, docker, inspect } from '../support/docker';
import { containerEnv, hotPrefix, record, s3Text, sandboxToken, uniqueUser, waitForStatus } from './lifecycle-support';

let stack: LocalStack;
let api: ApiClient;
const made: string[] = [];

async function create(user: string, config?: Record<string, unknown>, headers?: Record<string, string>): Promise<string> {
  const res = await api.create(user, config, headers);
  assert.equal(res.status, 201, res.text);
  made.push(res.body.sandbox_id);
  return res.body.sandbox_id;
}

async function exec(id: string, command: string): Promise<{ exit_code: number; stdout: string; stderr: string }> {
  const res = await api.exec(id, command, { timeout: 60 });
  assert.equal(res.status, 200, res.text);
  return res.body;
}

before(async () => {
  stack = await startLocalStack({
    port: 0,
    reaperIntervalMs: 1000,
    // No periodic hot sync: whatever reaches S3 got there through the graceful end under test.
    env: { HOT_SYNC_INTERVAL_SECONDS: '0' },
  });
  api = apiClient(stack.url, stack.apiKey);
});
after(async () => {
  for (const id of made) await api?.destroy(id, false).catch(() => undefined);
  await stack?.close();
});

describe('the sandbox token', () => {
  let id: string;
  let other: string;
  before(async () => {
    id = await create(uniqueUser('token'));
    other = await create(uniqueUser('token-other'));
  });

  it('is injected into the container with the API URL; the caller API key is nowhere in it', async () => {
    const env = await containerEnv(id);
    assert.equal(env.SANDBOX_ID, id);
    assert.equal(env.SANDBOX_API_URL, stack.sandboxApiUrl);
    assert.match(env.SANDBOX_TOKEN!, new RegExp(`^sbt_${id}_[A-Za-z0-9_-]{32,}$`));
    assert.notEqual(env.SANDBOX_TOKEN, (await containerEnv(other)).SANDBOX_TOKEN, 'each sandbox has its own token');
    for (const [name, value] of Object.entries(env)) assert.ok(!value.includes(stack.apiKey), `${name} carries the API key`);
    // What any process inside can read: its own environment and PID 1's.
    const inside = await exec(id, 'env; tr "\\0" "\\n" < /proc/1/environ');
    assert.ok(inside.stdout.includes(`SANDBOX_TOKEN=${env.SANDBOX_TOKEN}`));
    assert.ok(!inside.stdout.includes(stack.apiKey), 'the API key is not visible inside the sandbox');
  });

  it('lets `sandbox heartbeat`, run inside the sandbox, reach the API: ready -> running, heartbeat recorded', async () => {
    assert.equal((await record(id)).status, 'ready');
    const before = Date.now();
    const res = await exec(id, 'sandbox heartbeat');
    assert.equal(res.exit_code, 0, res.stderr);
    const answered = JSON.parse(res.stdout);
    assert.equal(answered.sandbox_id, id);
    assert.equal(answered.status, 'running');
    const r = await record(id);
    assert.equal(r.status, 'running');
    assert.ok(Date.parse(r.heartbeat_at!) >= before - 1000, 'heartbeat_at is the heartbeat just sent');
    // A second heartbeat only refreshes.
    const again = await exec(id, 'sandbox heartbeat');
    assert.equal(again.exit_code, 0, again.stderr);
    assert.equal((await record(id)).status, 'running');
  });

  it('cannot call exec, get, list, destroy, create, timeout, pause or resume (403), by their old names stop and start neither', async () => {
    const asSandbox = apiClient(stack.url, await sandboxToken(id));
    const calls: [string, Promise<{ status: number; body: any }>][] = [
      ['exec', asSandbox.exec(id, 'id')],
      ['get', asSandbox.get(id)],
      ['list', asSandbox.call('GET', '/sandboxes')],
      ['destroy', asSandbox.destroy(id, false)],
      ['create', asSandbox.create('someone')],
      ['timeout', asSandbox.call('POST', `/sandboxes/${id}/timeout`, {})],
      ['pause', asSandbox.call('POST', `/sandboxes/${id}/pause`)],
      ['resume', asSandbox.call('POST', `/sandboxes/${id}/resume`)],
      ['stop', asSandbox.call('POST', `/sandboxes/${id}/stop`)],
      ['start', asSandbox.call('POST', `/sandboxes/${id}/start`)],
    ];
    for (const [name, call] of calls) {
      const res = await call;
      assert.equal(res.status, 403, `${name}: ${JSON.stringify(res.body)}`);
      // API Gateway's ACCESS_DENIED answer (the authorizer's policy does not cover the route).
      assert.equal(res.body.error.code, 'invalid_api_key', name);
    }
    assert.equal(await containerExists(id), true, 'the sandbox is untouched');
    assert.equal((await record(id)).status, 'running');
  });

  it('cannot signal another sandbox (403), and the other sandbox is untouched', async () => {
    const asSandbox = apiClient(stack.url, await sandboxToken(id));
    for (const action of ['heartbeat', 'complete', 'error']) {
      const res = await asSandbox.call('POST', `/sandboxes/${other}/${action}`, action === 'error' ? { error: 'x' } : {});
      assert.equal(res.status, 403, `${action}: ${JSON.stringify(res.body)}`);
    }
    const r = await record(other);
    assert.equal(r.status, 'ready');
    assert.equal(r.stop_reason, undefined);
  });

  it('is refused when forged: right sandbox id, wrong secret (403)', async () => {
    const forged = `sbt_${id}_${'A'.repeat(43)}`;
    const res = await apiClient(stack.url, forged).call('POST', `/sandboxes/${id}/heartbeat`);
    assert.equal(res.status, 403);
    assert.equal(res.body.error.code, 'invalid_api_key');
  });

  it('from inside the sandbox, reaches only its three routes', async () => {
    const script = [
      "python3 - <<'PY'",
      'import json, os, urllib.request, urllib.error',
      "base, sid, tok = os.environ['SANDBOX_API_URL'], os.environ['SANDBOX_ID'], os.environ['SANDBOX_TOKEN']",
      'def call(method, path, body=None):',
      '    data = None if body is None else json.dumps(body).encode()',
      "    req = urllib.request.Request(base + path, method=method, data=data, headers={'X-API-Key': tok, 'Content-Type': 'application/json'})",
      '    try:',
      '        with urllib.request.urlopen(req, timeout=10) as r: return r.status',
      '    except urllib.error.HTTPError as e: return e.code',
      'print(json.dumps({',
      "  'exec': call('POST', f'/sandboxes/{sid}/exec', {'command': 'id'}),",
      "  'get': call('GET', f'/sandboxes/{sid}'),",
      "  'destroy': call('DELETE', f'/sandboxes/{sid}'),",
      `  'other_heartbeat': call('POST', '/sandboxes/${other}/heartbeat', {}),`,
      "  'own_heartbeat': call('POST', f'/sandboxes/{sid}/heartbeat', {}),",
      '}))',
      'PY',
    ].join('\n');
    const res = await exec(id, script);
    assert.equal(res.exit_code, 0, res.stderr);
    assert.deepEqual(JSON.parse(res.stdout), { exec: 403, get: 403, destroy: 403, other_heartbeat: 403, own_heartbeat: 200 });
  });
});

describe('complete and error end the sandbox gracefully and record why', () => {
  it('`sandbox complete --result` inside: hot tier synced, then stopped with reason completed and the result', async () => {
    const user = uniqueUser('complete');
    const id = await create(user);
    // The exec that signals keeps running a little: the graceful end waits for it.
    const res = await exec(id, `echo "kept after complete" > /home/agent/notes.txt && sandbox complete --result '{"a":1}' && sleep 3 && echo exec-finished`);
    assert.equal(res.exit_code, 0, res.stderr);
    const [answerLine, tail] = res.stdout.trim().split('\n');
    const answered = JSON.parse(answerLine!);
    assert.equal(answered.status, 'shutting_down', 'the caller gets its answer before its container stops');
    assert.equal(answered.stop_reason, 'completed');
    assert.equal(tail, 'exec-finished', 'the container was not stopped under the exec that signalled');

    const ended = await waitForStatus(id, 'stopped', 30_000);
    assert.equal(ended.stop_reason, 'completed');
    assert.deepEqual(ended.result, { a: 1 });
    assert.ok(ended.ended_at);
    assert.equal(ended.deadline_at, undefined, 'out of the reaper index');
    assert.equal(ended.live_host_id, undefined, 'out of the host index');
    const view = await api.get(id);
    assert.equal(view.body.status, 'stopped');
    assert.deepEqual(view.body.result, { a: 1 });
    assert.equal(await containerExists(id), false);
    assert.equal(await s3Text(stack, hotPrefix(stack, user) + 'notes.txt'), 'kept after complete\n', 'the home was synced up');
  });

  it('`sandbox error MESSAGE --details` inside: stopped with reason agent_error, the message and details', async () => {
    const user = uniqueUser('error');
    const id = await create(user);
    const res = await exec(id, `echo "partial work" > /home/agent/partial.txt && sandbox error "tests failed: 3 of 10" --details '{"failed":3}'`);
    assert.equal(res.exit_code, 0, res.stderr);
    assert.equal(JSON.parse(res.stdout).status, 'shutting_down');

    const ended = await waitForStatus(id, 'stopped', 30_000);
    assert.equal(ended.stop_reason, 'agent_error');
    assert.equal(ended.stop_detail, 'tests failed: 3 of 10');
    assert.deepEqual(ended.result, { error_details: { failed: 3 } });
    assert.equal(await containerExists(id), false);
    assert.equal(await s3Text(stack, hotPrefix(stack, user) + 'partial.txt'), 'partial work\n');
  });

  it('complete with the API key works too; repeating it changes nothing', async () => {
    const id = await create(uniqueUser('complete-key'));
    const first = await api.call('POST', `/sandboxes/${id}/complete`, { result: { n: 1 } });
    assert.equal(first.status, 200, first.text);
    // Seed 000's orchestrator answers {status: "shutting_down", sandbox_id}: so does this API (beside its own fields).
    assert.equal(first.body.status, 'shutting_down');
    assert.equal(first.body.sandbox_id, id);
    const second = await api.call('POST', `/sandboxes/${id}/complete`, { result: { n: 2 } });
    assert.equal(second.status, 200, second.text);
    const ended = await waitForStatus(id, 'stopped', 30_000);
    assert.deepEqual(ended.result, { n: 1 }, 'the first outcome is the one recorded');
    const late = await api.call('POST', `/sandboxes/${id}/heartbeat`);
    assert.equal(late.status, 409);
    assert.equal(late.body.error.code, 'invalid_state');
  });

  it('rejects malformed signal bodies with 400 and leaves the sandbox alone', async () => {
    const id = await create(uniqueUser('bad-signal'));
    const noMessage = await api.call('POST', `/sandboxes/${id}/error`, {});
    assert.equal(noMessage.status, 400);
    assert.match(noMessage.body.error.message, /error/);
    const notObject = await api.call('POST', `/sandboxes/${id}/complete`, { result: [1, 2] });
    assert.equal(notObject.status, 400);
    const helper = await exec(id, `sandbox complete --result '[1]'; echo "exit=$?"`);
    assert.match(helper.stdout, /exit=2/, 'the helper refuses a non-object result itself');
    assert.equal((await record(id)).status, 'ready');
  });
});

describe('idle timeout and TTL', () => {
  it('gives a sandbox created without ttl_seconds a 2 h TTL', async () => {
    const res = await api.create(uniqueUser('default-ttl'));
    assert.equal(res.status, 201, res.text);
    made.push(res.body.sandbox_id);
    assert.equal(res.body.config.ttl_seconds, 7200);
    assert.equal(Date.parse(res.body.expires_at) - Date.parse(res.body.created_at), 7200 * 1000);
  });

  it('POST /timeout refreshes the idle deadline and may change the idle timeout', async () => {
    const id = await create(uniqueUser('timeout'), { ttl_seconds: 600, idle_timeout_seconds: 60 });
    const before = Date.now();
    const res = await api.call('POST', `/sandboxes/${id}/timeout`, { idle_timeout_seconds: 300 });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.body.config.idle_timeout_seconds, 300);
    const idleEnds = Date.parse(res.body.idle_expires_at);
    assert.ok(idleEnds >= before + 300_000 && idleEnds <= Date.now() + 300_000, `idle deadline ${res.body.idle_expires_at}`);
    const r = await record(id);
    assert.equal(r.deadline_at, idleEnds, 'the reaper index follows the refreshed deadline');

    // Asking for more idle time than the TTL leaves: the TTL still wins.
    const longer = await api.call('POST', `/sandboxes/${id}/timeout`, { idle_timeout_seconds: 3600 });
    assert.equal(longer.status, 200, longer.text);
    assert.equal(longer.body.idle_expires_at, longer.body.expires_at);
  });

  it('extends the TTL up to the configured cap and never past it', async () => {
    const id = await create(uniqueUser('ttl-cap'), { ttl_seconds: 600, idle_timeout_seconds: 60 });
    const created = await api.get(id);
    const cap = 86_400; // MAX_TTL_SECONDS default
    const up = await api.call('POST', `/sandboxes/${id}/timeout`, { ttl_seconds: cap });
    assert.equal(up.status, 200, up.text);
    assert.equal(Date.parse(up.body.expires_at) - Date.parse(created.body.created_at), cap * 1000);

    const past = await api.call('POST', `/sandboxes/${id}/timeout`, { ttl_seconds: cap + 1 });
    assert.equal(past.status, 400);
    assert.equal(past.body.error.code, 'validation_error');
    assert.match(past.body.error.message, /ttl_seconds/);
    assert.equal((await api.get(id)).body.expires_at, up.body.expires_at, 'a refused extension changes nothing');

    const atCreate = await api.create(uniqueUser('ttl-cap'), { ttl_seconds: cap + 1 });
    assert.equal(atCreate.status, 400);
    const heartbeat = await api.call('POST', `/sandboxes/${id}/heartbeat`);
    assert.equal(heartbeat.status, 200);
    assert.equal(heartbeat.body.expires_at, up.body.expires_at, 'heartbeats never move the TTL');
  });
});

describe('pause and resume', () => {
  it('pause frees the container (not running) and keeps every file, /tmp too; resume brings them back', async () => {
    const id = await create(uniqueUser('pause'), { idle_timeout_seconds: 300 });
    const write = await exec(
      id,
      'mkdir -p /home/agent/project/src && echo "print(42)" > /home/agent/project/src/main.py && head -c 300000 /dev/urandom > /home/agent/blob.bin && sha256sum /home/agent/blob.bin /home/agent/project/src/main.py',
    );
    assert.equal(write.exit_code, 0, write.stderr);
    // /tmp is a tmpfs: the host keeps it across the pause in an archive.
    const scratch = await exec(
      id,
      'mkdir -p /tmp/build/obj && head -c 200000 /dev/urandom > /tmp/build/obj/cache.bin && chmod 0600 /tmp/build/obj/cache.bin && sha256sum /tmp/build/obj/cache.bin && stat -c "%a %s %Y" /tmp/build/obj/cache.bin',
    );
    assert.equal(scratch.exit_code, 0, scratch.stderr);

    const paused = await api.call('POST', `/sandboxes/${id}/pause`);
    assert.equal(paused.status, 200, paused.text);
    assert.equal(paused.body.status, 'paused');
    const info = await inspect(id);
    assert.equal(info.State.Running, false, 'no process holds CPU or memory');
    assert.equal((await record(id)).deadline_at, Date.parse(paused.body.expires_at), 'only the TTL applies while paused');
    const execWhilePaused = await api.exec(id, 'true');
    assert.equal(execWhilePaused.status, 409);

    const resumed = await api.call('POST', `/sandboxes/${id}/resume`);
    assert.equal(resumed.status, 200, resumed.text);
    assert.equal(resumed.body.status, 'ready');
    assert.equal((await inspect(id)).State.Running, true);
    const check = await exec(id, 'sha256sum /home/agent/blob.bin /home/agent/project/src/main.py && python3 /home/agent/project/src/main.py');
    assert.equal(check.exit_code, 0, check.stderr);
    const [sums, printed] = [check.stdout.split('\n').slice(0, 2).join('\n') + '\n', check.stdout.split('\n')[2]];
    assert.equal(sums, write.stdout, 'every file came back byte for byte');
    assert.equal(printed, '42');
    const scratchBack = await exec(id, 'sha256sum /tmp/build/obj/cache.bin && stat -c "%a %s %Y" /tmp/build/obj/cache.bin');
    assert.equal(scratchBack.stdout, scratch.stdout, 'the /tmp file came back byte for byte, with its mode and time');
  });

  it("keeps other users' /tmp files through pause and resume, and the pause answer names what it could not keep", async () => {
    const id = await create(uniqueUser('pause-users'));
    const theirs = await api.exec(id, 'umask 077 && f=$(mktemp) && echo private > "$f" && d=$(mktemp -d) && echo nested > "$d/in" && echo "$f $d"', {
      user: 'nobody',
    });
    assert.equal(theirs.status, 200, theirs.text);
    const [file, dir] = theirs.body.stdout.trim().split(' ');
    const locked = await exec(id, 'echo unreadable > /tmp/locked && chmod 000 /tmp/locked');
    assert.equal(locked.exit_code, 0, locked.stderr);

    const paused = await api.call('POST', `/sandboxes/${id}/pause`);
    assert.equal(paused.status, 200, paused.text);
    assert.deepEqual(paused.body.tmp_not_kept, ['tar: locked: Warning: Cannot open: Permission denied'], 'a file its own owner cannot read is named');
    const resumed = await api.call('POST', `/sandboxes/${id}/resume`);
    assert.equal(resumed.status, 200, resumed.text);
    assert.equal(resumed.body.tmp_not_restored, undefined);
    const back = await api.exec(id, `stat -c '%U %a' ${file} ${dir} && cat ${file} ${dir}/in`, { user: 'nobody' });
    assert.equal(back.body.stdout, 'nobody 600\nnobody 700\nprivate\nnested\n', back.text);
  });

  it('pause and resume are idempotent, and resume refuses a sandbox that ended', async () => {
    const id = await create(uniqueUser('pause-twice'));
    assert.equal((await api.call('POST', `/sandboxes/${id}/pause`)).status, 200);
    const again = await api.call('POST', `/sandboxes/${id}/pause`);
    assert.equal(again.status, 200);
    assert.equal(again.body.status, 'paused');
    assert.equal((await api.call('POST', `/sandboxes/${id}/resume`)).status, 200);
    assert.equal((await api.call('POST', `/sandboxes/${id}/resume`)).body.status, 'ready');
    assert.equal((await api.destroy(id, false)).status, 204);
    const late = await api.call('POST', `/sandboxes/${id}/resume`);
    assert.equal(late.status, 409);
  });

  it('answers the deprecated /stop and /start exactly as /pause and /resume', async () => {
    const id = await create(uniqueUser('pause-aliases'));
    const call = (verb: string) => api.call('POST', `/sandboxes/${id}/${verb}`);
    const same = async (alias: string, route: string) => {
      const [a, b] = [await call(alias), await call(route)];
      assert.deepEqual({ status: a.status, body: a.body }, { status: b.status, body: b.body }, `/${alias} answers as /${route}`);
      return a;
    };
    // Each alias does the work (ready -> paused -> ready), then both names answer the settled sandbox alike.
    const paused = await same('stop', 'pause');
    assert.equal(paused.status, 200, paused.text);
    assert.equal(paused.body.status, 'paused');
    assert.equal((await inspect(id)).State.Running, false, '/stop paused the container');
    const resumed = await same('start', 'resume');
    assert.equal(resumed.status, 200, resumed.text);
    assert.equal(resumed.body.status, 'ready');
    assert.equal((await inspect(id)).State.Running, true, '/start resumed it');
    // And the new names do the work the old ones answer to.
    assert.equal((await same('pause', 'stop')).body.status, 'paused');
    assert.equal((await same('resume', 'start')).body.status, 'ready');
    // The refusals are the same too.
    assert.equal((await api.destroy(id, false)).status, 204);
    assert.equal((await same('start', 'resume')).status, 409);
    const refused = await same('stop', 'pause');
    assert.equal(refused.status, 409);
    assert.equal(refused.body.error.code, 'invalid_state');
    assert.match(refused.body.error.message, /only a ready or running sandbox can be paused/);
  });
});

describe('idempotent create', () => {
  async function containersOf(user: string): Promise<number> {
    const list = await docker.listContainers({ all: true, filters: { label: [`${containerLabels.userId}=${user}`] } });
    return list.length;
  }

  it('the same Idempotency-Key twice makes one sandbox and answers it both times', async () => {
    const user = uniqueUser('idem');
    const key = `retry-${user}`;
    const first = await api.create(user, { labels: { try: 'x' } }, { 'Idempotency-Key': key });
    assert.equal(first.status, 201, first.text);
    made.push(first.body.sandbox_id);
    const second = await api.create(user, { labels: { try: 'x' } }, { 'Idempotency-Key': key });
    assert.equal(second.status, 201, second.text);
    assert.equal(second.body.sandbox_id, first.body.sandbox_id);
    assert.equal(await containersOf(user), 1);
    const listed = await api.call('GET', `/sandboxes?user_id=${user}`);
    assert.equal(listed.body.total, 1);
  });

  it('two concurrent creates with one key make one container; the retry answers it as it stands, without waiting', async () => {
    const user = uniqueUser('idem-race');
    const key = `race-${user}`;
    const [a, b] = await Promise.all([api.create(user, undefined, { 'Idempotency-Key': key }), api.create(user, undefined, { 'Idempotency-Key': key })]);
    // One of them made it (201 ready, or 202 if its host needed longer); the other answered the same
    // sandbox as it stood then (202 creating, or 201 once ready).
    for (const res of [a, b]) assert.ok([201, 202].includes(res.status), res.text);
    made.push(a.body.sandbox_id);
    assert.equal(a.body.sandbox_id, b.body.sandbox_id);
    await waitForStatus(a.body.sandbox_id, 'ready', 60_000);
    assert.equal(await containersOf(user), 1);
    assert.equal((await api.call('GET', `/sandboxes?user_id=${user}`)).body.total, 1);
  });

  it('reusing a key with a different body is a 409, and makes nothing', async () => {
    const user = uniqueUser('idem-conflict');
    const key = `conflict-${user}`;
    const first = await api.create(user, undefined, { 'Idempotency-Key': key });
    made.push(first.body.sandbox_id);
    const other = await api.create(user, { cpu: 2 }, { 'Idempotency-Key': key });
    assert.equal(other.status, 409);
    assert.equal(other.body.error.code, 'conflict');
    assert.equal(await containersOf(user), 1);
  });

  it('a key whose first create died mid-way (claim left in progress) is taken over once that create is surely over', async () => {
    const user = uniqueUser('idem-abandoned');
    const key = `abandoned-${user}`;
    const body = { user_id: user };
    // The claim a create leaves behind when its process dies, from 10 minutes ago.
    await dynamo().send(
      new PutCommand({
        TableName: config().tables.idempotency,
        Item: {
          idempotency_key: `${stack.tenantId}#${key}`,
          fingerprint: createHash('sha256').update(JSON.stringify(body)).digest('hex'),
          state: 'in_progress',
          created_at: new Date(Date.now() - 600_000).toISOString(),
          expires_at_s: Math.floor(Date.now() / 1000) + 86_400,
        },
      }),
    );
    const retried = await api.create(user, undefined, { 'Idempotency-Key': key });
    assert.equal(retried.status, 201, retried.text);
    made.push(retried.body.sandbox_id);
    const again = await api.create(user, undefined, { 'Idempotency-Key': key });
    assert.equal(again.body.sandbox_id, retried.body.sandbox_id);
    assert.equal(await containersOf(user), 1);
  });

  it('without a key, two creates are two sandboxes', async () => {
    const user = uniqueUser('no-key');
    made.push(await create(user), await create(user));
    assert.equal(await containersOf(user), 2);
  });
});
