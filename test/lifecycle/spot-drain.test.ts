/**
 * Issue 13, a Spot interruption end to end on the real local stack: the
 * EventBridge "EC2 Spot Instance Interruption Warning" for a host's instance
 * reaches the real fleet-events handler, the host drains within the warning,
 * and a paused sandbox on it is moved (its state to S3) and resumes later on
 * another host with every file it had.
 * Stand-ins: EC2 and its Auto Scaling group are a local endpoint
 * (lib/local/autoscaling-endpoint.ts: it launches local hosts, sends the Spot
 * warning and takes the instance back after the notice), and EventBridge's
 * delivery is that endpoint calling the handler in the stack's process.
 * Everything else (API, handlers, DynamoDB, S3, SSM, host daemons, Docker) is real.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { getHost } from '../../lambdas/shared/host-store';
import { pausedStateKeys, pausedStatePrefix } from '../../lambdas/shared/relocation';
import { spotDrainSeconds } from '../../lambdas/shared/drain';
import { startLocalStack, type LocalStack } from '../../lib/local/stack';
import { apiClient, type ApiClient } from '../support/api-client';
import { containerExists } from '../support/docker';
import { hotPrefix, record, s3Keys, s3Text, uniqueUser, waitFor, waitForStatus } from './lifecycle-support';

const terminateHook = { name: 'drain-before-terminate', heartbeatTimeoutSeconds: 120, defaultResult: 'CONTINUE' as const };
const allocatable = { cpu: 2, memoryMb: 2048 };
/**
 * The notice the stand-in gives before it takes the instance: 45 s, not EC2's 120 s. Nothing on
 * our side reads the notice's length (the drain's budget, spotDrainSeconds, counts from the
 * warning), so a shorter one checks the same drain against a tighter clock and spares the file
 * seventy-five seconds of waiting for the instance to go.
 */
const noticeSeconds = 45;

let stack: LocalStack;
let api: ApiClient;
const made: string[] = [];

before(async () => {
  stack = await startLocalStack({
    port: 0,
    reaperIntervalMs: 1000,
    hostHeartbeatMs: 1000,
    slots: 4,
    allocatable,
    // One host in the group (the one the warning is for); a second joins outside the group before the warning.
    autoScaling: { minSize: 0, maxSize: 2, desiredCapacity: 1, terminateHook },
    env: { CAPACITY_WAIT_SECONDS: '240', HOT_SYNC_INTERVAL_SECONDS: '0', HOST_LOST_AFTER_SECONDS: '20' },
  });
  api = apiClient(stack.url, stack.apiKey);
  await stack.autoScaling!.settled(180_000);
});
after(async () => {
  for (const id of made) await api?.destroy(id, false).catch(() => undefined);
  await stack?.close();
});

describe('a Spot interruption warning (EC2 and its Auto Scaling group stood in by a local endpoint, with a 45 s notice for the 120 s one; EventBridge delivery by a direct call of the real fleet-events handler)', () => {
  let spotHost = '';
  let paused = '';
  let pausedUser = '';
  /** A second paused sandbox, destroyed while it has no host. */
  let dropped = '';

  it('drains the host within the warning: out of placement at once, the running sandbox synced and ended with host_draining, its command ended, the paused one moved off, a create during the drain on another host', async (t) => {
    const [groupHost] = stack.hosts();
    assert.ok(groupHost, 'the group launched its host');
    spotHost = groupHost.hostId;

    const runningUser = uniqueUser('spot-run');
    const running = await api.createReady(runningUser, { cpu: 0.5, memory_mb: 512, idle_timeout_seconds: 600 });
    assert.equal(running.status, 201, running.text);
    const runningId: string = running.body.sandbox_id;
    made.push(runningId);
    pausedUser = uniqueUser('spot-paused');
    const p = await api.createReady(pausedUser, { cpu: 0.5, memory_mb: 512, idle_timeout_seconds: 600 });
    assert.equal(p.status, 201, p.text);
    paused = p.body.sandbox_id;
    made.push(paused);
    const d = await api.createReady(uniqueUser('spot-dropped'), { cpu: 0.5, memory_mb: 512, idle_timeout_seconds: 600 });
    assert.equal(d.status, 201, d.text);
    dropped = d.body.sandbox_id;
    made.push(dropped);
    assert.equal((await record(runningId)).host_id, spotHost);
    assert.equal((await record(paused)).host_id, spotHost);
    assert.equal((await record(dropped)).host_id, spotHost);
    assert.equal((await api.exec(dropped, `printf x > /tmp/x`)).status, 200);
    assert.ok([200, 202].includes((await api.call('POST', `/sandboxes/${dropped}/pause`)).status));

    // The paused sandbox's files: its root file system is read-only, so /tmp, its home and its cold tier are all it can write.
    const wrote = await api.exec(
      paused,
      `printf 'tmp kept\\n' > /tmp/kept.txt && mkdir -p /tmp/dir && printf 'nested\\n' > /tmp/dir/n.txt && printf 'home kept\\n' > /home/agent/kept.txt && printf 'cold kept\\n' > /data/cold/kept.txt && ! touch /opt/nope 2>/dev/null`,
    );
    assert.equal(wrote.status, 200, wrote.text);
    assert.equal(wrote.body.exit_code, 0, `writes, and the root file system is read-only: ${wrote.body.stderr}`);
    const stopped = await api.call('POST', `/sandboxes/${paused}/pause`);
    assert.ok([200, 202].includes(stopped.status), stopped.text);
    await waitForStatus(paused, 'paused', 120_000);
    await waitForStatus(dropped, 'paused', 120_000);

    // A second host, outside the group: where the create during the drain, and the paused sandbox's resume, can go.
    const other = await stack.addHost({ slots: 4, allocatable });

    // Written just before the warning: the drain's sync must carry it.
    const last = await api.exec(runningId, `printf 'just before\\n' > /home/agent/last.txt`);
    assert.equal(last.status, 200, last.text);
    const command = await api.call('POST', `/sandboxes/${runningId}/commands`, { command: 'sleep 600' });
    assert.ok([200, 201, 202].includes(command.status), command.text);
    const commandId: string = command.body.command_id;

    const warned = Date.now();
    await stack.autoScaling!.spotInterruption(spotHost, noticeSeconds);
    // The handler marked it draining before it answered the delivery: no create may land there any more.
    assert.equal((await getHost(spotHost))?.status, 'draining', 'out of placement as soon as the warning was handled');
    assert.ok(
      (await getHost(spotHost))!.drain_deadline_at! <= warned + spotDrainSeconds * 1000 + 5_000,
      'the drain must be over before EC2 takes the instance',
    );

    const during = await api.create(uniqueUser('spot-during'), { cpu: 0.5, memory_mb: 512, idle_timeout_seconds: 600 });
    assert.ok([201, 202].includes(during.status), during.text);
    made.push(during.body.sandbox_id);
    const duringReady = await waitForStatus(during.body.sandbox_id, 'ready', 120_000);
    assert.notEqual(duringReady.host_id, spotHost, 'a create during the drain goes to another host');
    assert.equal(duringReady.host_id, other.hostId);

    const ended = await waitFor(
      'the running sandbox to end',
      async () => {
        const r = await record(runningId);
        return ['stopped', 'failed', 'expired'].includes(r.status) ? r : undefined;
      },
      120_000,
    );
    assert.equal(ended.stop_reason, 'host_draining');
    assert.equal(await s3Text(stack, hotPrefix(stack, runningUser) + 'last.txt'), 'just before\n', 'the home was synced before the sandbox ended');
    const home = await fetch(`${stack.url}/users/${runningUser}/home/files?path=${encodeURIComponent('last.txt')}`, {
      headers: { 'X-API-Key': stack.apiKey, Accept: 'application/octet-stream' },
    });
    assert.equal(home.status, 200);
    assert.equal(await home.text(), 'just before\n', 'readable through the home files API');
    const cmd = await api.call('GET', `/sandboxes/${runningId}/commands/${commandId}`);
    assert.equal(cmd.status, 200, cmd.text);
    assert.notEqual(cmd.body.status, 'running', 'the command ended with its sandbox');

    const moved = await waitFor(
      'the paused sandbox to leave the host',
      async () => {
        const r = await record(paused);
        return r.paused_state ? r : undefined;
      },
      120_000,
    );
    t.diagnostic(
      `drained ${Date.now() - warned} ms after the warning (Spot drain budget ${spotDrainSeconds} s of EC2's 120 s notice; ${noticeSeconds} s here)`,
    );
    assert.ok(Date.now() - warned < noticeSeconds * 1000, 'drained within the warning');
    assert.equal(moved.status, 'paused', 'a paused sandbox is kept, not ended');
    assert.equal(moved.host_id, '', 'released from the host');
    assert.equal(moved.live_host_id, undefined);
    assert.equal(moved.paused_state, pausedStatePrefix(moved));
    const keys = await s3Keys(stack, moved.paused_state!);
    const staged = pausedStateKeys(moved.paused_state!);
    assert.ok(keys.includes(staged.request) && keys.includes(staged.tmp), `its create request and /tmp archive are in S3: ${keys.join(', ')}`);
    const view = await api.get(paused);
    assert.equal(view.body.status, 'paused');
    assert.equal(view.body.host_id, null);
    const host = await getHost(spotHost);
    assert.equal(host?.allocations[paused], undefined, 'its share of the host was given back');
    assert.equal(host?.allocations[runningId], undefined);
    assert.equal(await containerExists(paused), false, 'its container is gone from the draining host');

    // Ended while it has no host: nothing on any host to remove, and its staged state goes with it.
    const droppedMoved = await waitFor('the second paused sandbox to leave the host', async () => (await record(dropped)).paused_state, 60_000);
    assert.ok((await s3Keys(stack, droppedMoved)).length > 0);
    const gone = await api.destroy(dropped);
    assert.equal(gone.status, 204, gone.text);
    assert.equal((await record(dropped)).status, 'stopped');
    assert.deepEqual(await s3Keys(stack, droppedMoved), [], 'the staged state of a moved sandbox is deleted when it ends');

    await waitFor(
      'the instance to be terminated at the end of the notice',
      async () => !stack.autoScaling!.describe().instances.some((i) => i.id === spotHost),
      noticeSeconds * 1000 + 30_000,
    );
    assert.ok(!stack.hosts().some((h) => h.hostId === spotHost), 'the local host is gone');
  });

  it('resumes the moved paused sandbox on another host with its /tmp, home and cold files, and its staged state is deleted', async () => {
    assert.ok(paused, 'the first test paused a sandbox');
    const started = await api.call('POST', `/sandboxes/${paused}/resume`);
    assert.ok([200, 202].includes(started.status), started.text);
    const ready = await waitForStatus(paused, 'ready', 180_000);
    assert.notEqual(ready.host_id, spotHost);
    assert.ok(
      stack.hosts().some((h) => h.hostId === ready.host_id),
      'placed on a running host',
    );
    assert.equal(ready.paused_state, undefined, 'no staged state on the record once it runs');
    assert.equal((await getHost(ready.host_id))?.allocations[paused]?.memory_mb, 512, 'its share taken on the new host');
    const read = await api.exec(paused, 'cat /tmp/kept.txt /tmp/dir/n.txt /home/agent/kept.txt /data/cold/kept.txt');
    assert.equal(read.status, 200, read.text);
    assert.equal(read.body.exit_code, 0, read.body.stderr);
    assert.equal(read.body.stdout, 'tmp kept\nnested\nhome kept\ncold kept\n');
    assert.deepEqual(await s3Keys(stack, pausedStatePrefix(ready)), [], 'the staged state is deleted once restored');
    // Pausing and resuming again works on its new host as on any.
    const stop = await api.call('POST', `/sandboxes/${paused}/pause`);
    assert.ok([200, 202].includes(stop.status), stop.text);
    await waitForStatus(paused, 'paused', 120_000);
    const again = await api.call('POST', `/sandboxes/${paused}/resume`);
    assert.ok([200, 202].includes(again.status), again.text);
    await waitForStatus(paused, 'ready', 120_000);
    const reread = await api.exec(paused, 'cat /tmp/kept.txt');
    assert.equal(reread.body.stdout, 'tmp kept\n');
  });
});
