/**
 * Issue 5 on the real local stack: the host daemon registers and heartbeats
 * its host, reconciles containers with records (nothing leaks either way),
 * and a host whose daemon dies is marked lost by the reaper, its sandboxes
 * failed after a last hot sync.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { getHost } from '../../lambdas/shared/host-store';
import { beginShutdown, markEnded } from '../../lambdas/shared/sandboxes';
import { containerLabels, ownerLabelValue } from '../../contract/host-protocol';
import { newSandboxId } from '../../contract/ids';
import { startLocalStack, type LocalStack } from '../../lib/local/stack';
import { apiClient, type ApiClient } from '../support/api-client';
import { containerExists, docker } from '../support/docker';
import { hotPrefix, record, s3Text, sleep, uniqueUser, waitFor, waitForStatus } from './lifecycle-support';

const heartbeatMs = 1000; // also the reconcile period
const reaperPeriodMs = 1000;
const graceSeconds = 4;
const lostAfterSeconds = 5;
/** Room for a reconcile or reaper pass already in progress and the test's polling. */
const marginMs = 5000;

let stack: LocalStack;
let api: ApiClient;
const made: string[] = [];
const extraContainers: string[] = [];

before(async () => {
  stack = await startLocalStack({
    port: 0,
    reaperIntervalMs: reaperPeriodMs,
    hostHeartbeatMs: heartbeatMs,
    env: {
      RECONCILE_GRACE_SECONDS: String(graceSeconds),
      HOST_LOST_AFTER_SECONDS: String(lostAfterSeconds),
      // No periodic hot sync: what reaches S3 got there through the path under test.
      HOT_SYNC_INTERVAL_SECONDS: '0',
    },
  });
  api = apiClient(stack.url, stack.apiKey);
});
after(async () => {
  for (const name of extraContainers)
    await docker
      .getContainer(name)
      .remove({ force: true })
      .catch(() => undefined);
  for (const id of made) await api?.destroy(id, false).catch(() => undefined);
  await stack?.close();
});

async function create(user: string): Promise<string> {
  const res = await api.create(user, { idle_timeout_seconds: 600 });
  assert.equal(res.status, 201, res.text);
  made.push(res.body.sandbox_id);
  return res.body.sandbox_id;
}

async function writeHome(id: string, file: string, text: string): Promise<void> {
  const res = await api.exec(id, `printf '%s\\n' '${text}' > /home/agent/${file}`);
  assert.equal(res.status, 200, res.text);
  assert.equal(res.body.exit_code, 0, res.body.stderr);
}

/** A container made behind the system's back, carrying the owner's labels. */
async function startLabelled(name: string, labels: Record<string, string>): Promise<void> {
  const container = await docker.createContainer({
    name,
    Image: stack.env.SANDBOX_IMAGE,
    Cmd: ['sleep', 'infinity'],
    Labels: { [containerLabels.owner]: ownerLabelValue, ...labels },
    HostConfig: { NetworkMode: 'none' },
  });
  extraContainers.push(name);
  await container.start();
}

describe('the host daemon', () => {
  it('registers its host (instance id, capacity, running sandboxes) and heartbeats it', async () => {
    const id = await create(uniqueUser('register'));
    const first = await getHost(stack.hostId);
    assert.equal(first?.status, 'active');
    assert.equal(first?.capacity.sandboxes, 16);
    assert.ok(first!.capacity.cpu_milli > 0 && first!.capacity.memory_mb > 0 && first!.capacity.disk_mb > 0, JSON.stringify(first!.capacity));
    assert.deepEqual(Object.keys(first!.allocations), [id], 'its one sandbox holds an allocation');
    assert.match(first!.host_id, /^mi-[0-9a-f]{17}$/);
    const later = await waitFor(
      'two more heartbeats',
      async () => {
        const h = await getHost(stack.hostId);
        return h && h.last_heartbeat_at >= first!.last_heartbeat_at + 2 * heartbeatMs ? h : undefined;
      },
      10_000,
    );
    const running = await docker.listContainers({ filters: { label: [`${containerLabels.hostId}=${stack.hostId}`] } });
    assert.equal(later.running_sandboxes, running.length);
    assert.ok(running.some((c) => c.Names.includes(`/${id}`)));
  });

  it('marks a record failed within one reconcile period when its container is removed behind its back', async (t) => {
    const id = await create(uniqueUser('vanish'));
    // Past the grace a create gets to record its container.
    await sleep(graceSeconds * 1000);
    await docker.getContainer(id).remove({ force: true });
    const removedAt = Date.now();
    const failed = await waitForStatus(id, 'failed', heartbeatMs + marginMs + 5000);
    const took = Date.now() - removedAt;
    assert.ok(took <= heartbeatMs + marginMs, `recorded ${took} ms after the removal (reconcile period ${heartbeatMs} ms)`);
    t.diagnostic(`record failed ${took} ms after docker rm -f (reconcile period ${heartbeatMs} ms)`);
    assert.equal(failed.stop_reason, 'container_vanished');
    assert.match(failed.stop_detail ?? '', new RegExp(stack.hostId));
    assert.equal(failed.live_host_id, undefined);
    assert.equal(failed.deadline_at, undefined);
    const exec = await api.exec(id, 'true');
    assert.equal(exec.status, 409);
  });

  it('ends a sandbox whose container exited on its own: its home synced, its record stopped with the reason', async () => {
    const user = uniqueUser('exited');
    const id = await create(user);
    await writeHome(id, 'before-exit.txt', 'kept although the container died');
    // The container's init dies (as an OOM kill of it would): the container exits; nothing asked for it.
    await docker.getContainer(id).kill({ signal: 'SIGKILL' });
    const ended = await waitFor(
      'the sandbox to end',
      async () => {
        const r = await record(id);
        return ['stopped', 'failed', 'expired'].includes(r.status) ? r : undefined;
      },
      heartbeatMs + reaperPeriodMs + marginMs * 3,
    );
    assert.deepEqual([ended.status, ended.stop_reason], ['stopped', 'container_exited']);
    assert.match(ended.stop_detail ?? '', /exited on its own/);
    assert.equal(await s3Text(stack, hotPrefix(stack, user) + 'before-exit.txt'), 'kept although the container died\n');
    assert.equal(await containerExists(id), false);
  });

  it('removes a container with the owner labels and no record after the grace period, and nothing of another host', async (t) => {
    const orphan = newSandboxId();
    const oddName = `lc-orphan-${randomBytes(4).toString('hex')}`;
    const otherHosts = newSandboxId();
    await startLabelled(oddName, { [containerLabels.hostId]: stack.hostId });
    await startLabelled(otherHosts, { [containerLabels.hostId]: 'mi-00000000000000bee', [containerLabels.sandboxId]: otherHosts });
    // The grace runs from the orphan's creation: it is made last, and looked at as soon as it runs. (Made first, with
    // the two above between it and the look, a loaded machine took longer than the grace to get there.)
    const started = Date.now();
    await startLabelled(orphan, {
      [containerLabels.hostId]: stack.hostId,
      [containerLabels.sandboxId]: orphan,
      [containerLabels.tenantId]: 't',
      [containerLabels.userId]: 'u',
    });
    const lookedAt = Date.now();
    const kept = await containerExists(orphan);
    // Docker reports creation times in whole seconds, so the daemon may count the grace from up to 1 s early: a look
    // later than that tells nothing (only a machine too busy to start one container in 3 s gets there).
    if (lookedAt - started < graceSeconds * 1000 - 1000) assert.equal(kept, true, 'kept during the grace period (a create may still be recording it)');
    else t.diagnostic(`the look came ${lookedAt - started} ms after the create, too late to tell whether the grace held`);

    await waitFor(
      'the orphans to be removed',
      async () => !(await containerExists(orphan)) && !(await containerExists(oddName)),
      graceSeconds * 1000 + heartbeatMs + marginMs,
    );
    assert.ok(Date.now() - started <= graceSeconds * 1000 + heartbeatMs + marginMs);
    await sleep(2 * heartbeatMs);
    assert.equal(await containerExists(otherHosts), true, "another host's container is not this daemon's to remove");
  });

  it('removes the container of a sandbox whose destroy never reached the host, saving its home first', async () => {
    const user = uniqueUser('lost-destroy');
    const id = await create(user);
    await writeHome(id, 'result.txt', 'saved by reconcile');
    // The record ends, the host never hears of it (as if the destroy's SSM command was lost).
    const shutting = await beginShutdown(await record(id), 'user_requested');
    assert.ok(shutting);
    assert.ok(await markEnded(shutting, { event: 'stopped' }));
    assert.equal(await containerExists(id), true);

    await waitFor('the container to be removed', async () => !(await containerExists(id)), heartbeatMs + marginMs + 10_000);
    assert.equal(await s3Text(stack, hotPrefix(stack, user) + 'result.txt'), 'saved by reconcile\n');
  });
});

describe('a host that stops heartbeating', () => {
  it('is marked lost; its sandboxes fail with host_lost after a last hot sync; the restarted daemon removes their containers', async (t) => {
    const users = [uniqueUser('lost-a'), uniqueUser('lost-b')];
    const ids = [await create(users[0]!), await create(users[1]!)];
    await Promise.all(ids.map((id, i) => writeHome(id, 'work.txt', `work of ${users[i]}`)));

    await stack.stopDaemon();
    const killedAt = Date.now();
    const lost = await waitFor(
      'the host to be marked lost',
      async () => {
        const h = await getHost(stack.hostId);
        return h?.status === 'lost' ? h : undefined;
      },
      lostAfterSeconds * 1000 + reaperPeriodMs + marginMs + 10_000,
    );
    t.diagnostic(`host marked lost ${Date.now() - killedAt} ms after its daemon was killed (lost after ${lostAfterSeconds} s)`);
    assert.ok(lost.lost_at);

    for (const [i, id] of ids.entries()) {
      const failed = await waitForStatus(id, 'failed', 30_000);
      assert.equal(failed.stop_reason, 'host_lost');
      assert.equal(failed.live_host_id, undefined);
      // The machine still answered (only its daemon died): the home was synced before the record was failed.
      assert.equal(await s3Text(stack, hotPrefix(stack, users[i]!) + 'work.txt'), `work of ${users[i]}\n`);
    }
    const view = await api.get(ids[0]!);
    assert.equal(view.body.status, 'failed');
    assert.equal(view.body.stop_reason, 'host_lost');

    // A lost host takes no new sandboxes (it is the only one here).
    const refused = await api.create(uniqueUser('while-lost'));
    assert.equal(refused.status, 503, refused.text);
    assert.equal(refused.body.error.code, 'no_capacity');
    for (const id of ids) assert.equal(await containerExists(id), true, 'the daemon is dead: nobody removed them yet');

    // The daemon comes back: the host registers again and its orphaned containers go.
    stack.startDaemon();
    await waitFor('the host to be active again', async () => (await getHost(stack.hostId))?.status === 'active', 30_000);
    await waitFor(
      'the failed sandboxes\u2019 containers to be removed',
      async () => {
        for (const id of ids) if (await containerExists(id)) return false;
        return true;
      },
      graceSeconds * 1000 + heartbeatMs + marginMs + 20_000,
    );

    const again = await api.create(uniqueUser('after-return'));
    assert.equal(again.status, 201, again.text);
    made.push(again.body.sandbox_id);
  });
});
