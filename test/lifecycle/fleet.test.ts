/**
 * Issue 13 on the real local stack: a fleet that rests at zero, launches a
 * host when a create finds no room, and drains a host before it goes.
 * EC2 Auto Scaling cannot run here: a local endpoint (lib/local/autoscaling-
 * endpoint.ts) stands in for its API, launching and terminating local hosts;
 * everything else (API, handlers, DynamoDB, S3, SSM, host daemons, Docker) is real.
 */
import assert from 'node:assert/strict';
import { TerminateInstanceInAutoScalingGroupCommand } from '@aws-sdk/client-auto-scaling';
import { after, before, describe, it } from 'node:test';
import { autoScaling } from '../../lambdas/shared/clients/autoscaling';
import { getHost } from '../../lambdas/shared/host-store';
import { startLocalStack, type LocalStack } from '../../lib/local/stack';
import { apiClient, type ApiClient } from '../support/api-client';
import { containerExists } from '../support/docker';
import { hotPrefix, record, s3Text, uniqueUser, waitFor, waitForStatus } from './lifecycle-support';

const terminateHook = { name: 'drain-before-terminate', heartbeatTimeoutSeconds: 120, defaultResult: 'CONTINUE' as const };

let stack: LocalStack;
let api: ApiClient;
const made: string[] = [];

before(async () => {
  stack = await startLocalStack({
    port: 0,
    reaperIntervalMs: 1000,
    hostHeartbeatMs: 1000,
    slots: 4,
    autoScaling: { minSize: 0, maxSize: 2, desiredCapacity: 0, terminateHook },
    env: { CAPACITY_WAIT_SECONDS: '240', HOT_SYNC_INTERVAL_SECONDS: '0' },
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
    const res = await api.create(user, { idle_timeout_seconds: 600 });
    assert.equal(res.status, 202, res.text);
    assert.equal(res.body.status, 'creating');
    assert.equal(res.body.status_detail, 'waiting_for_capacity');
    sandboxId = res.body.sandbox_id;
    made.push(sandboxId);

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
    await waitFor('the host to be protected from scale-in', async () => stack.autoScaling!.describe().instances.find((i) => i.id === host!.hostId)?.protectedFromScaleIn, 30_000);
  });

  it('drains a host the group terminates: out of placement, its sandbox synced and ended with host_draining, then the termination goes ahead', async () => {
    assert.ok(sandboxId, 'the first test made a sandbox');
    const hostId = stack.hosts()[0]!.hostId;
    const wrote = await api.exec(sandboxId, `printf 'before the drain\\n' > /home/agent/drained.txt`);
    assert.equal(wrote.status, 200, wrote.text);

    // An operator (or an instance refresh) terminates the instance: the termination hook holds it for the drain.
    await autoScaling().send(new TerminateInstanceInAutoScalingGroupCommand({ InstanceId: hostId, ShouldDecrementDesiredCapacity: true }));
    await waitFor('the host to be draining', async () => (await getHost(hostId))?.status === 'draining', 30_000);

    const ended = await waitFor('the sandbox to end', async () => {
      const r = await record(sandboxId);
      return ['stopped', 'failed', 'expired'].includes(r.status) ? r : undefined;
    }, 120_000);
    assert.equal(ended.stop_reason, 'host_draining');
    assert.equal(await s3Text(stack, hotPrefix(stack, user) + 'drained.txt'), 'before the drain\n', 'its home was synced before it ended');

    await waitFor('the instance to be terminated', async () => stack.autoScaling!.describe().instances.length === 0, 60_000);
    const calls = stack.autoScaling!.calls.map((c) => c.action);
    assert.ok(calls.includes('CompleteLifecycleAction'), `the host completed the lifecycle action: ${calls.join(', ')}`);
    assert.equal(stack.hosts().length, 0);
  });
});
