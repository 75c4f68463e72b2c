/**
 * Issue 13 on the real local stack: a fleet that rests at zero, launches a
 * host when a create finds no room, and drains a host before it goes.
 * EC2 Auto Scaling cannot run here: a local endpoint (lib/local/autoscaling-
 * endpoint.ts) stands in for its API, launching and terminating local hosts;
 * everything else (API, handlers, DynamoDB, S3, SSM, host daemons, Docker) is real.
 */
import assert from 'node:assert/strict';
import { TerminateInstanceInAutoScalingGroupCommand } from '@aws-sdk/client-auto-scaling';
import { UpdateCommand } from '@aws-sdk/lib-dynamodb';
import { after, before, describe, it } from 'node:test';
import { autoScaling } from '../../lambdas/shared/clients/autoscaling';
import { dynamo } from '../../lambdas/shared/clients/dynamodb';
import { config } from '../../lambdas/shared/config';
import { getHost } from '../../lambdas/shared/host-store';
import { startLocalStack, type LocalStack } from '../../lib/local/stack';
import { apiClient, type ApiClient } from '../support/api-client';
import { containerExists } from '../support/docker';
import { hotPrefix, record, s3Text, uniqueUser, waitFor, waitForStatus } from './lifecycle-support';

const terminateHook = { name: 'drain-before-terminate', heartbeatTimeoutSeconds: 120, defaultResult: 'CONTINUE' as const };

/**
 * The lines this process prints while `run` runs and a second after: the functions' and host daemons' log lines
 * reach it through the stack's telemetry as text, as a function's would reach CloudWatch Logs (the test runner's
 * own reports, written as bytes, are left out).
 */
async function printedDuring<T>(run: () => Promise<T>): Promise<{ value: T; printed: string }> {
  let printed = '';
  const restores = [process.stdout, process.stderr].map((stream) => {
    const write = stream.write;
    stream.write = ((chunk: unknown, ...rest: unknown[]) => {
      if (typeof chunk === 'string') printed += chunk;
      return (write as (...args: unknown[]) => boolean).call(stream, chunk, ...rest);
    }) as typeof stream.write;
    return () => {
      stream.write = write;
    };
  });
  try {
    const value = await run();
    await new Promise((r) => setTimeout(r, 1000));
    return { value, printed };
  } finally {
    for (const restore of restores) restore();
  }
}

/** Longer than a daemon restart takes here (2 s, then its start), far shorter than the default 90 s. */
const lostAfterSeconds = 20;

let stack: LocalStack;
let api: ApiClient;
const made: string[] = [];

before(async () => {
  stack = await startLocalStack({
    port: 0,
    reaperIntervalMs: 1000,
    hostHeartbeatMs: 1000,
    slots: 4,
    // Each local host claims a slice of this machine, so placement by memory shows with small sandboxes.
    allocatable: { cpu: 2, memoryMb: 2048 },
    autoScaling: { minSize: 0, maxSize: 2, desiredCapacity: 0, terminateHook },
    env: { CAPACITY_WAIT_SECONDS: '240', HOT_SYNC_INTERVAL_SECONDS: '0', HOST_LOST_AFTER_SECONDS: String(lostAfterSeconds) },
  });
  api = apiClient(stack.url, stack.apiKey);
});
after(async () => {
  for (const id of made) await api?.destroy(id, false).catch(() => undefined);
  await stack?.close();
});

describe('a fleet that rests at zero (EC2 Auto Scaling stood in by a local endpoint)', () => {
  let sandboxId = '';
  let user = '';

  it('answers a create 202 waiting_for_capacity, asks the group for a host, and the sandbox becomes ready on the host launched for it', async (t) => {
    assert.equal(stack.hosts().length, 0, 'no host at rest');
    user = uniqueUser('zero');
    const asked = Date.now();
    const { value: res, printed } = await printedDuring(() => api.create(user, { idle_timeout_seconds: 600 }));
    assert.equal(res.status, 202, res.text);
    assert.equal(res.body.status, 'creating');
    assert.equal(res.body.status_detail, 'waiting_for_capacity');
    sandboxId = res.body.sandbox_id;
    made.push(sandboxId);
    // Waiting for a host is how a fleet at rest starts: logged at info, not as a warning (LOG_LEVEL is warn here).
    assert.doesNotMatch(printed, /no host took the sandbox/);

    const set = stack.autoScaling!.calls.find((c) => c.action === 'SetDesiredCapacity');
    assert.equal(set?.params.DesiredCapacity, '1', 'the create asked the group for one host');
    const ready = await waitForStatus(sandboxId, 'ready', 180_000);
    t.diagnostic(`ready ${Date.now() - asked} ms after the create (host launch, registration, create)`);
    const [host] = stack.hosts();
    assert.equal(ready.host_id, host?.hostId, 'made on the host the group launched');
    assert.equal(ready.status_detail, undefined);
    assert.equal(await containerExists(sandboxId), true);
    const view = await api.get(sandboxId);
    assert.equal(view.body.status, 'ready');
    assert.equal(view.body.status_detail, undefined);

    // A host with sandboxes is protected from scale-in, so only empty or drained hosts go.
    await waitFor(
      'the host to be protected from scale-in',
      async () => stack.autoScaling!.describe().instances.find((i) => i.id === host!.hostId)?.protectedFromScaleIn,
      30_000,
    );
  });

  it('keeps a sandbox, its cold mount and its data when the host daemon is killed and restarted by its service', async () => {
    const host = stack.hosts()[0]!;
    const wrote = await api.exec(sandboxId, `printf 'cold before\\n' > /data/cold/kept.txt && printf 'hot before\\n' > /home/agent/kept.txt`);
    assert.equal(wrote.status, 200, wrote.text);
    assert.equal(wrote.body.exit_code, 0, wrote.body.stderr);
    const heartbeatBefore = (await getHost(host.hostId))!.last_heartbeat_at;

    const restarted = host.service.nextStart();
    host.service.crash('SIGKILL');
    await restarted;
    await waitFor('the restarted daemon to heartbeat', async () => (await getHost(host.hostId))!.last_heartbeat_at > heartbeatBefore + 2000, 60_000);

    const r = await record(sandboxId);
    assert.equal(r.status, 'ready', 'the sandbox was not failed');
    assert.equal((await getHost(host.hostId))?.status, 'active', 'the host was never declared lost');
    const read = await api.exec(sandboxId, 'cat /data/cold/kept.txt /home/agent/kept.txt && printf after > /data/cold/after.txt && cat /data/cold/after.txt');
    assert.equal(read.status, 200, read.text);
    assert.equal(read.body.exit_code, 0, read.body.stderr);
    assert.equal(read.body.stdout, 'cold before\nhot before\nafter', 'the cold mount still serves its files and takes new ones');
  });

  it('places by memory: a sandbox that fits on no running host waits while the group launches a second host, then runs there', async () => {
    const first = stack.hosts()[0]!.hostId;
    const big = uniqueUser('big');
    // 1536 MiB does not fit in the 1024 MiB the first host has left (2048 allocatable, 1024 taken).
    const res = await api.create(big, { memory_mb: 1536, idle_timeout_seconds: 600 });
    assert.equal(res.status, 202, res.text);
    assert.equal(res.body.status_detail, 'waiting_for_capacity');
    made.push(res.body.sandbox_id);
    const ready = await waitForStatus(res.body.sandbox_id, 'ready', 180_000);
    assert.notEqual(ready.host_id, first, 'not on the host without room');
    assert.equal(stack.autoScaling!.describe().desired, 2);
    const second = await getHost(ready.host_id);
    assert.equal(second?.allocations[res.body.sandbox_id]?.memory_mb, 1536);
    const firstHost = await getHost(first);
    assert.ok(firstHost!.allocated.memory_mb <= firstHost!.capacity.memory_mb, 'memory is never overcommitted');
  });

  it('drains a host the group terminates: out of placement, its sandbox synced and ended with host_draining, then the termination goes ahead', async () => {
    assert.ok(sandboxId, 'the first test made a sandbox');
    const hostId = stack.hosts()[0]!.hostId;
    const wrote = await api.exec(sandboxId, `printf 'before the drain\\n' > /home/agent/drained.txt`);
    assert.equal(wrote.status, 200, wrote.text);

    // An operator (or an instance refresh) terminates the instance: the termination hook holds it for the drain.
    await autoScaling().send(new TerminateInstanceInAutoScalingGroupCommand({ InstanceId: hostId, ShouldDecrementDesiredCapacity: true }));
    await waitFor('the host to be draining', async () => (await getHost(hostId))?.status === 'draining', 30_000);

    const ended = await waitFor(
      'the sandbox to end',
      async () => {
        const r = await record(sandboxId);
        return ['stopped', 'failed', 'expired'].includes(r.status) ? r : undefined;
      },
      120_000,
    );
    assert.equal(ended.stop_reason, 'host_draining');
    assert.equal(await s3Text(stack, hotPrefix(stack, user) + 'drained.txt'), 'before the drain\n', 'its home was synced before it ended');

    await waitFor('the instance to be terminated', async () => !stack.autoScaling!.describe().instances.some((i) => i.id === hostId), 60_000);
    const calls = stack.autoScaling!.calls.map((c) => c.action);
    assert.ok(calls.includes('CompleteLifecycleAction'), `the host completed the lifecycle action: ${calls.join(', ')}`);
    assert.ok(!stack.hosts().some((h) => h.hostId === hostId), 'the local host is gone');
  });

  it('fails over the sandboxes of a host that vanishes within HOST_LOST_AFTER_SECONDS, and the group replaces the host', async (t) => {
    const host = stack.hosts()[0]!;
    const survivor = (await getHost(host.hostId))!;
    const [onIt] = Object.keys(survivor.allocations);
    assert.ok(onIt, 'the second host holds the big sandbox');
    const gone = Date.now();
    await host.vanish();
    const failed = await waitForStatus(onIt, 'failed', (lostAfterSeconds + 30) * 1000);
    t.diagnostic(`failed ${Date.now() - gone} ms after its host vanished (HOST_LOST_AFTER_SECONDS ${lostAfterSeconds}, reaper every 1 s)`);
    assert.equal(failed.stop_reason, 'host_lost');
    assert.equal((await getHost(host.hostId))?.status, 'lost');
    const health = stack.autoScaling!.calls.find((c) => c.action === 'SetInstanceHealth' && c.params.InstanceId === host.hostId);
    assert.equal(health?.params.HealthStatus, 'Unhealthy', 'the reaper reported the lost host to its group');
    await waitFor(
      'the group to replace it',
      async () => stack.hosts().some((h) => h.hostId !== host.hostId) && !stack.hosts().some((h) => h.hostId === host.hostId),
      120_000,
    );
  });

  it('fails a create that no host can take with no_capacity once its wait is over, leaving nothing behind', async () => {
    // Larger than any host of this group: the group is not asked for hosts that could never hold it.
    const res = await api.create(uniqueUser('too-big'), { memory_mb: 4096 });
    assert.equal(res.status, 202, res.text);
    const id = res.body.sandbox_id;
    made.push(id);
    assert.equal(res.body.status_detail, 'waiting_for_capacity');
    // CAPACITY_WAIT_SECONDS (240 here) passing, without waiting it out: the wait's deadline moves to now.
    await dynamo().send(
      new UpdateCommand({
        TableName: config().tables.sandboxes,
        Key: { sandbox_id: id },
        UpdateExpression: 'SET deadline_at = :now',
        ExpressionAttributeValues: { ':now': Date.now() },
      }),
    );
    const failed = await waitForStatus(id, 'failed', 30_000);
    assert.equal(failed.stop_reason, 'no_capacity');
    assert.equal(failed.status_detail, undefined);
    const view = await api.get(id);
    assert.equal(view.body.status, 'failed');
    assert.equal(view.body.stop_reason, 'no_capacity');
  });
});
