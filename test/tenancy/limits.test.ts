/**
 * Per-tenant limits on the real local stack: the cap on sandboxes not yet
 * ended (one conditional write per create, given back at the end and on
 * every failed create), and the per-tenant request rate (the usage plan's
 * throttle), both answering 429 with Retry-After in the JSON error shape.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { UpdateCommand } from '@aws-sdk/lib-dynamodb';
import { createApiKey } from '../../lambdas/shared/api-keys';
import { dynamo } from '../../lambdas/shared/clients/dynamodb';
import { s3 } from '../../lambdas/shared/clients/s3';
import { config } from '../../lambdas/shared/config';
import { getHost } from '../../lambdas/shared/host-store';
import { getTenant, liveSandboxCount, setTenantSandboxLimit } from '../../lambdas/shared/tenants';
import { startLocalStack, type LocalStack } from '../../lib/local/stack';
import { apiClient, type ApiAnswer, type ApiClient } from '../support/api-client';
import { docker } from '../support/docker';
import { waitFor } from '../lifecycle/lifecycle-support';

let stack: LocalStack;
const live: { api: ApiClient; id: string }[] = [];

before(async () => {
  // MAX_SANDBOXES_PER_TENANT applies to tenants without their own max_sandboxes.
  // A usage plan of 5 requests a second with a burst of 20 (deployed: 50 and 100): a flood from this one
  // process on 2 cores outruns it for sure, while the cap tests' own calls stay well under it.
  stack = await startLocalStack({ port: 0, reaperIntervalMs: 0, rateLimit: 5, burstLimit: 20, env: { MAX_SANDBOXES_PER_TENANT: '3' } });
});
after(async () => {
  for (const { api, id } of live) await api.destroy(id, false).catch(() => undefined);
  await stack?.close();
});

async function keyFor(tenantId: string): Promise<ApiClient> {
  return apiClient(stack.url, (await createApiKey({ tenantId })).key);
}

function assertTooMany(res: ApiAnswer, message: RegExp) {
  assert.equal(res.status, 429, res.text);
  assert.equal(res.body.error.code, 'too_many_requests');
  assert.match(res.body.error.message, message);
  assert.match(res.headers.get('retry-after') ?? '', /^[1-9]\d*$/);
  assert.match(res.headers.get('content-type') ?? '', /application\/json/);
}

async function liveCount(tenantId: string): Promise<number> {
  return liveSandboxCount(await getTenant(tenantId));
}

async function tenantContainers(tenantId: string): Promise<number> {
  const list = await docker.listContainers({
    all: true,
    filters: { label: [`dev.ephemeral-sandbox.tenant-id=${tenantId}`, `dev.ephemeral-sandbox.host-id=${stack.hostId}`] },
  });
  return list.length;
}

describe('the cap on sandboxes per tenant', () => {
  it('lets exactly the cap through when more creates race for it', async () => {
    const api = await keyFor('capped');
    await setTenantSandboxLimit('capped', 2);
    const answers = await Promise.all(Array.from({ length: 5 }, () => api.create('racer')));
    const ok = answers.filter((a) => a.status === 201);
    for (const a of ok) live.push({ api, id: a.body.sandbox_id });
    assert.equal(ok.length, 2, answers.map((a) => `${a.status} ${a.text}`).join('\n'));
    // Which of the two are still creates when a refusal is written depends on the race; the count of slots does not.
    for (const a of answers.filter((x) => x.status !== 201))
      assertTooMany(
        a,
        /^tenant capped is at its limit of 2 sandboxes: (2 sandboxes not yet ended|2 sandboxes still being created|1 not yet ended and 1 still being created)/,
      );
    assert.equal(await liveCount('capped'), 2);
    assert.equal(await tenantContainers('capped'), 2, 'no container was made for a refused create');
  });

  it('gives a slot back when a sandbox ends, so the next create fits', async () => {
    const owner = live[0]!;
    assert.equal((await owner.api.destroy(owner.id, false)).status, 204);
    live.splice(live.indexOf(owner), 1);
    assert.equal(await liveCount('capped'), 1);
    const again = await owner.api.create('racer');
    assert.equal(again.status, 201, again.text);
    live.push({ api: owner.api, id: again.body.sandbox_id });
    assertTooMany(await owner.api.create('racer'), /is at its limit of 2 sandboxes: 2 sandboxes not yet ended; destroy one or retry later$/);
  });

  it('does not count sandboxes of other tenants', async () => {
    const other = await keyFor('uncapped-neighbour');
    const res = await other.create('someone');
    assert.equal(res.status, 201, res.text);
    live.push({ api: other, id: res.body.sandbox_id });
    assert.equal(await liveCount('uncapped-neighbour'), 1);
    assert.equal(await liveCount('capped'), 2);
  });

  it('applies MAX_SANDBOXES_PER_TENANT to a tenant without its own cap', async () => {
    const api = await keyFor('defaulted');
    for (let i = 0; i < 3; i++) {
      const res = await api.create('u');
      assert.equal(res.status, 201, res.text);
      live.push({ api, id: res.body.sandbox_id });
    }
    assertTooMany(await api.create('u'), /^tenant defaulted is at its limit of 3 sandboxes: 3 sandboxes not yet ended; destroy one or retry later$/);
  });

  it('tells sandboxes still being created from ones that exist, during a burst and after it', async () => {
    const api = await keyFor('burst');
    await setTenantSandboxLimit('burst', 2);
    // A home of many small files makes each create take a few seconds (the hot tier syncs down first).
    const home = 'tenants/burst/users/big-home/hot/';
    const keys = Array.from({ length: 3000 }, (_, i) => `${home}d${i % 30}/f${i}`);
    for (let i = 0; i < keys.length; i += 50) {
      await Promise.all(keys.slice(i, i + 50).map((Key) => s3().send(new PutObjectCommand({ Bucket: stack.env.STORAGE_BUCKET, Key, Body: 'x' }))));
    }
    const burst = [api.create('big-home'), api.create('big-home')];
    // Both creates hold their slots and have written their records, and neither has finished.
    await waitFor(
      'both creates to be in flight',
      async () => (await liveCount('burst')) === 2 && (await api.call('GET', '/sandboxes?status=creating')).body?.sandboxes?.length === 2,
      30_000,
      250,
    );
    assertTooMany(
      await api.create('big-home'),
      /^tenant burst is at its limit of 2 sandboxes: 2 sandboxes still being created \(a create that fails gives its slot back\); destroy one or retry later$/,
    );
    for (const res of await Promise.all(burst)) {
      // 202 when the create outlasted the API's time: the host finishes it and the sandbox is followed to ready.
      assert.ok(res.status === 201 || res.status === 202, res.text);
      live.push({ api, id: res.body.sandbox_id });
      if (res.status === 202)
        await waitFor(`${res.body.sandbox_id} to be ready`, async () => (await api.get(res.body.sandbox_id)).body.status === 'ready', 120_000, 250);
    }
    assertTooMany(await api.create('big-home'), /^tenant burst is at its limit of 2 sandboxes: 2 sandboxes not yet ended; destroy one or retry later$/);
  });

  it('counts back to zero when every sandbox of the tenant has ended', async () => {
    for (const entry of live.splice(0)) {
      const { answer, final } = await entry.api.destroyAndWait(entry.id, false);
      assert.ok(answer.status === 204 || answer.status === 202, answer.text);
      assert.equal(final.body.status, 'stopped', final.text);
    }
    for (const tenant of ['capped', 'uncapped-neighbour', 'defaulted', 'burst']) assert.equal(await liveCount(tenant), 0, tenant);
  });

  it('gives the slot back when no host has room (503)', async () => {
    const api = await keyFor('no-room');
    // The daemon's reconciliation would correct the allocation: hold it off while the host looks full.
    await stack.stopDaemon();
    const host = (await getHost(stack.hostId))!;
    const setUsed = (memoryMb: number) =>
      dynamo().send(
        new UpdateCommand({
          TableName: config().tables.hosts,
          Key: { host_id: stack.hostId },
          UpdateExpression: 'SET allocated.memory_mb = :n',
          ExpressionAttributeValues: { ':n': memoryMb },
        }),
      );
    try {
      await setUsed(host.capacity.memory_mb);
      const res = await api.create('u');
      assert.equal(res.status, 503, res.text);
      assert.equal(res.body.error.code, 'no_capacity');
      assert.equal(await liveCount('no-room'), 0);
    } finally {
      await setUsed(host.allocated.memory_mb);
      stack.startDaemon();
      await waitForHeartbeat();
    }
  });

  it('gives the slot back when the host fails the create', async () => {
    const api = await keyFor('host-fails');
    // A create names the image its host recorded (a rollout's digest): have the host record one it cannot
    // have or pull (a registry on a closed loopback port), so its create fails. The daemon, which would
    // record the real image again on its next pass, is held off meanwhile.
    await stack.stopDaemon();
    const host = (await getHost(stack.hostId))!;
    const setImage = (image: string | undefined) =>
      dynamo().send(
        new UpdateCommand({
          TableName: config().tables.hosts,
          Key: { host_id: stack.hostId },
          ...(image === undefined ? { UpdateExpression: 'REMOVE image' } : { UpdateExpression: 'SET image = :i', ExpressionAttributeValues: { ':i': image } }),
        }),
      );
    try {
      await setImage('127.0.0.1:9/no-such-image:latest');
      const res = await api.create('u');
      assert.ok(res.status >= 500 && res.status < 600, res.text);
      assert.match(res.body.error.code, /^host_/, res.text);
      assert.equal(await liveCount('host-fails'), 0);
      const list = await api.call('GET', '/sandboxes');
      assert.deepEqual(
        list.body.sandboxes.map((s: any) => [s.status, s.stop_reason]),
        [['failed', 'create_failed']],
      );
    } finally {
      await setImage(host.image);
      stack.startDaemon();
      await waitForHeartbeat();
    }
    const after = await api.create('u');
    assert.equal(after.status, 201, after.text);
    live.push({ api, id: after.body.sandbox_id });
    assert.equal(await liveCount('host-fails'), 1);
  });
});

async function waitForHeartbeat(): Promise<void> {
  const since = Date.now();
  while (Date.now() - since < 30_000) {
    const host = await getHost(stack.hostId);
    if (host?.status === 'active' && host.last_heartbeat_at >= since && stack.daemon()) {
      // The agent socket is served before the host registers.
      return;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('the host daemon did not come back within 30 s');
}

describe('the request rate per tenant (usage plan throttle)', () => {
  it('answers 429 with Retry-After once a tenant spends its burst, and other tenants are not slowed', async () => {
    const noisy = await keyFor('noisy');
    const quiet = await keyFor('quiet');
    const flood = Promise.all(Array.from({ length: 250 }, () => noisy.call('GET', '/sandboxes/sbx-aaaaaaaaaaaaaaaaaaaa')));
    const calm = quiet.call('GET', '/sandboxes');
    const [answers, quietAnswer] = await Promise.all([flood, calm]);
    const throttled = answers.filter((a) => a.status === 429);
    assert.ok(throttled.length > 0, 'the flood went over the burst');
    for (const a of throttled) assertTooMany(a, /^request rate limit exceeded: retry with backoff$/);
    for (const a of answers.filter((x) => x.status !== 429)) assert.equal(a.status, 404, a.text);
    assert.equal(quietAnswer.status, 200, quietAnswer.text);
  });
});
