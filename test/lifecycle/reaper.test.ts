/**
 * Issue 5 on the real local stack: the reaper on its timer (like the
 * EventBridge schedule) ends idle and over-age sandboxes within one period of
 * their deadline, and never a sandbox that is busy or paused by its owner.
 * The scenarios run side by side: each needs real time to pass.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startLocalStack, type LocalStack } from '../../lib/local/stack';
import { apiClient, type ApiClient } from '../support/api-client';
import { containerExists, inspect } from '../support/docker';
import { record, sandboxToken, sleep, uniqueUser, waitForStatus } from './lifecycle-support';

const reaperPeriodMs = 2000;
/** Room for one reaper run in progress (a graceful destroy) and the test's own polling. */
const marginMs = 5000;

let stack: LocalStack;
let api: ApiClient;
const made: string[] = [];

async function create(user: string, config: Record<string, unknown>): Promise<any> {
  const res = await api.create(user, config);
  assert.equal(res.status, 201, res.text);
  made.push(res.body.sandbox_id);
  return res.body;
}

const ending = (status: string) => status === 'shutting_down' || status === 'expired' || status === 'stopped' || status === 'failed';

/**
 * Watches a sandbox's status every 200 ms until it has ended (or `stopWatching` says so):
 * when it was last seen alive and first seen ending.
 */
async function watch(id: string, timeoutMs: number, stopWatching: () => boolean = () => false) {
  let lastAlive = 0;
  let firstEnding = 0;
  const statuses = new Set<string>();
  const started = Date.now();
  while (Date.now() - started < timeoutMs && !stopWatching()) {
    const seenAt = Date.now();
    const status = (await record(id)).status;
    statuses.add(status);
    if (ending(status)) {
      firstEnding = seenAt;
      break;
    }
    lastAlive = seenAt;
    await sleep(200);
  }
  return { lastAlive, firstEnding, statuses };
}

before(async () => {
  stack = await startLocalStack({ port: 0, reaperIntervalMs: reaperPeriodMs });
  api = apiClient(stack.url, stack.apiKey);
});
after(async () => {
  for (const id of made) await api?.destroy(id, false).catch(() => undefined);
  await stack?.close();
});

describe('the reaper on its schedule', { concurrency: true }, () => {
  it('keeps a heartbeating sandbox, then reaps it within one reaper period after its idle deadline', async (t) => {
    const s = await create(uniqueUser('idle'), { idle_timeout_seconds: 30, ttl_seconds: 600 });
    const asSandbox = apiClient(stack.url, await sandboxToken(s.sandbox_id));
    // Heartbeats for 40 s, past the first idle deadline: each one moves the deadline.
    const firstDeadline = Date.parse(s.idle_expires_at);
    let idleDeadline = firstDeadline;
    while (Date.now() < firstDeadline + 10_000) {
      const beat = await asSandbox.call('POST', `/sandboxes/${s.sandbox_id}/heartbeat`);
      assert.equal(beat.status, 200, beat.text);
      assert.ok(Date.parse(beat.body.idle_expires_at) >= idleDeadline, 'a heartbeat never pulls the deadline in');
      idleDeadline = Date.parse(beat.body.idle_expires_at);
      await sleep(5000);
    }
    assert.equal((await record(s.sandbox_id)).status, 'running', 'heartbeats kept it alive past its first idle deadline');

    // Silence: it must live until its deadline and end within one period after it.
    const seen = await watch(s.sandbox_id, 60_000);
    assert.ok(seen.firstEnding > 0, 'it was reaped');
    assert.ok(seen.lastAlive >= idleDeadline - 1000, `alive until ${seen.lastAlive - idleDeadline} ms from its deadline`);
    const late = seen.firstEnding - idleDeadline;
    assert.ok(late <= reaperPeriodMs + marginMs, `reaped ${late} ms after its idle deadline (period ${reaperPeriodMs} ms)`);
    t.diagnostic(`reaped ${late} ms after its idle deadline (reaper period ${reaperPeriodMs} ms)`);

    const ended = await waitForStatus(s.sandbox_id, 'expired', 30_000);
    assert.equal(ended.stop_reason, 'idle_timeout');
    assert.equal(ended.deadline_at, undefined);
    assert.equal(await containerExists(s.sandbox_id), false);
    const view = await api.get(s.sandbox_id);
    assert.equal(view.body.status, 'expired');
    assert.equal(view.body.stop_reason, 'idle_timeout');
  });

  it('does not reap a sandbox with a 30 s idle timeout while a 60 s exec runs in it', async () => {
    const s = await create(uniqueUser('long-exec'), { idle_timeout_seconds: 30, ttl_seconds: 600 });
    let execDone = false;
    const started = Date.now();
    // Longer than an API call may last: /exec answers 202 and the command is followed to its end.
    const execution = (async () => {
      const res = await api.exec(s.sandbox_id, 'sleep 60; echo survived', { timeout: 150 });
      assert.equal(res.status, 202, res.text);
      for (;;) {
        const g = await api.call('GET', `/sandboxes/${s.sandbox_id}/commands/${res.body.command_id}?wait=20`);
        if (!['pending', 'running'].includes(g.body.status)) return g;
      }
    })().finally(() => (execDone = true));
    const seen = await watch(s.sandbox_id, 200_000, () => execDone);
    const res = await execution;
    assert.ok(Date.now() - started >= 60_000);
    assert.equal(res.status, 200, res.text);
    assert.equal(res.body.exit_code, 0, res.body.stderr);
    assert.equal(res.body.stdout, 'survived\n');
    assert.equal(seen.firstEnding, 0, `never reaped during the exec (saw ${[...seen.statuses].join(', ')})`);
    assert.ok(seen.lastAlive - started > 30_000 + reaperPeriodMs * 2, 'watched it alive well past its idle timeout');

    const after = await record(s.sandbox_id);
    assert.equal(after.status, 'ready');
    assert.equal((await inspect(s.sandbox_id)).State.Running, true);
    assert.deepEqual(after.execs, {}, 'the finished exec is no longer in flight');
    // The idle clock starts again from the end of the exec.
    assert.equal(after.deadline_at, after.last_activity_at + 30_000);
    assert.ok(after.last_activity_at >= started + 60_000);
  });

  it('ends a sandbox at its TTL although it heartbeats and runs an exec', async (t) => {
    const s = await create(uniqueUser('ttl'), { idle_timeout_seconds: 30, ttl_seconds: 60 });
    const expiresAt = Date.parse(s.expires_at);
    const asSandbox = apiClient(stack.url, await sandboxToken(s.sandbox_id));
    let stop = false;
    /** Each heartbeat's answer and when it was sent. */
    const beats: { status: number; sentAt: number }[] = [];
    const heartbeats = (async () => {
      while (!stop) {
        const sentAt = Date.now();
        const beat = await asSandbox.call('POST', `/sandboxes/${s.sandbox_id}/heartbeat`);
        if (Date.now() < expiresAt - 1000) assert.equal(beat.status, 200, beat.text);
        beats.push({ status: beat.status, sentAt });
        await sleep(3000);
      }
    })();
    // An exec still running at the TTL does not hold it either.
    const longExec = api.exec(s.sandbox_id, 'sleep 100', { timeout: 110 });
    const seen = await watch(s.sandbox_id, 120_000);
    stop = true;
    await heartbeats;
    assert.ok(seen.firstEnding > 0, 'it was ended');
    assert.ok(seen.lastAlive >= expiresAt - 1000, 'alive until its TTL');
    const late = seen.firstEnding - expiresAt;
    assert.ok(late <= reaperPeriodMs + marginMs, `ended ${late} ms after its TTL`);
    t.diagnostic(`ended ${late} ms after its TTL (reaper period ${reaperPeriodMs} ms)`);
    // Accepted until then: one every 3 s plus its round trip, so a loaded machine sends fewer; what counts is that
    // they went on being accepted into the TTL's last seconds (a count of 15 failed with 14 on a busy CI machine).
    const accepted = beats.filter((b) => b.status === 200);
    const lastAccepted = Math.max(...accepted.map((b) => b.sentAt));
    assert.ok(
      accepted.length >= 5 && lastAccepted >= expiresAt - 10_000,
      `heartbeats were accepted until then: ${accepted.length} accepted, the last sent ${expiresAt - lastAccepted} ms before the TTL (${beats.map((b) => b.status).join(',')})`,
    );

    const ended = await waitForStatus(s.sandbox_id, 'expired', 30_000);
    assert.equal(ended.stop_reason, 'ttl_expired');
    assert.equal(await containerExists(s.sandbox_id), false);
    const cut = await longExec;
    t.diagnostic(`the exec cut by the TTL answered ${cut.status} ${cut.text.slice(0, 200)}`);
    assert.equal(cut.status, 202, 'longer than an API call: answered with the command to follow');
    const command = await api.call('GET', `/sandboxes/${s.sandbox_id}/commands/${cut.body.command_id}`);
    assert.deepEqual([command.body.status, command.body.end_reason], ['killed', 'sandbox_ended'], 'the end of the sandbox ended the command');
    const late409 = await asSandbox.call('POST', `/sandboxes/${s.sandbox_id}/heartbeat`);
    assert.ok([403, 409].includes(late409.status), `a heartbeat after the end is refused (${late409.status})`);
  });

  it('does not reap a paused sandbox for idleness; resume brings it back', async () => {
    const s = await create(uniqueUser('paused'), { idle_timeout_seconds: 30, ttl_seconds: 600 });
    const stopped = await api.call('POST', `/sandboxes/${s.sandbox_id}/pause`);
    assert.equal(stopped.status, 200, stopped.text);
    const idleDeadline = Date.parse(s.idle_expires_at);
    await sleep(Math.max(0, idleDeadline - Date.now()) + reaperPeriodMs * 3);
    const r = await record(s.sandbox_id);
    assert.equal(r.status, 'paused');
    assert.equal(r.deadline_at, r.expires_at_ms);
    assert.equal(await containerExists(s.sandbox_id), true);
    const started = await api.call('POST', `/sandboxes/${s.sandbox_id}/resume`);
    assert.equal(started.status, 200, started.text);
    assert.equal(started.body.status, 'ready');
  });
});
