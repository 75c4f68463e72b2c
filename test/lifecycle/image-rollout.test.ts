/**
 * Issue 13 on the real local stack: a host whose SANDBOX_IMAGE is a tag in a
 * registry (a real one on loopback; on AWS, ECR) pulls it before it registers,
 * records the digest it resolved on its host item, and creates name that
 * digest, so every sandbox runs exactly the image the host checked. Then a
 * deploy of a new tag (the image parameter the running host reads, as on AWS,
 * and the functions' SANDBOX_IMAGE): creates keep running the digest the host
 * has until it pre-pulled the new one, then run the new one, and the old image
 * is pruned once no container uses it (PRUNE_SANDBOX_IMAGES=1, as on AWS: the
 * repository is this test's own).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { getHost } from '../../lambdas/shared/host-store';
import { startLocalStack, type LocalStack } from '../../lib/local/stack';
import { apiClient, type ApiClient } from '../support/api-client';
import { docker as dockerApi } from '../support/docker';
import { docker, startLocalRegistry, type LocalRegistry } from '../support/registry';
import { sandboxImage } from '../host-agent/fixture';
import { uniqueUser, waitFor } from './lifecycle-support';

let registry: LocalRegistry;
let stack: LocalStack;
let api: ApiClient;
let pushed: { ref: string; digestRef: string };
/** A second image (the first plus a label: another digest), tagged locally until the "deploy" pushes it. */
const v2Source = `ephemeral-sandbox-rollout-v2:${randomBytes(4).toString('hex')}`;
let v2: { ref: string; digestRef: string } | undefined;
const made: string[] = [];

async function createdImage(user: string): Promise<{ id: string; image: string }> {
  const res = await api.createReady(uniqueUser(user), { idle_timeout_seconds: 600 });
  assert.equal(res.status, 201, res.text);
  made.push(res.body.sandbox_id);
  return { id: res.body.sandbox_id, image: (await dockerApi.getContainer(res.body.sandbox_id).inspect()).Config.Image };
}

const hasImage = async (ref: string) =>
  await docker('image', 'inspect', ref)
    .then(() => true)
    .catch(() => false);

before(async () => {
  registry = await startLocalRegistry();
  // The small test image (a Debian with the agent user): pushing the full sandbox image would cost minutes here.
  pushed = await registry.push(await sandboxImage({ minimal: true }), 'ephemeral-sandbox-rollout', 'v1');
  await docker('rmi', pushed.digestRef).catch(() => undefined);
  const container = await docker('create', await sandboxImage({ minimal: true }), 'true');
  await docker('commit', '--change', 'LABEL ephemeral-sandbox-rollout=v2', container, v2Source);
  await docker('rm', container);
  stack = await startLocalStack({ port: 0, reaperIntervalMs: 0, env: { SANDBOX_IMAGE: pushed.ref, PRUNE_SANDBOX_IMAGES: '1' } });
  api = apiClient(stack.url, stack.apiKey);
});
after(async () => {
  for (const id of made) await api?.destroy(id, false).catch(() => undefined);
  await stack?.close();
  await docker('rmi', pushed?.ref ?? 'none').catch(() => undefined);
  await docker('rmi', pushed?.digestRef ?? 'none').catch(() => undefined);
  await docker('rmi', v2?.digestRef ?? 'none').catch(() => undefined);
  await docker('rmi', v2Source).catch(() => undefined);
  await registry?.close();
});

describe('image rollout (a real registry on loopback)', () => {
  it('the host pulled the configured tag before registering and records the digest it resolved', async () => {
    const host = await getHost(stack.hostId);
    assert.equal(host?.image, pushed.digestRef);
    assert.equal(host?.image_ref, pushed.ref);
  });

  it('a create names the image by that digest', async () => {
    assert.equal((await createdImage('rollout')).image, pushed.digestRef);
  });

  it('a deploy of a new tag: creates run the digest the host has until it pre-pulled the new one, then the new one; the old one is pruned once unused', async () => {
    const earlier = await createdImage('rollout-before');
    assert.equal(earlier.image, pushed.digestRef);
    const v2Ref = `${registry.host}/ephemeral-sandbox-rollout:v2`;
    // The deploy names v2 before the registry has it: the host's passes cannot pull it, so the window in which
    // the host is behind the control plane stays open for as long as this test needs (on AWS it lasts one pull).
    await stack.deployImage(v2Ref);
    const hostId = stack.hostId;
    await new Promise((r) => setTimeout(r, 6_000)); // more than a pass (the local hosts' period is 5 s)
    const behind = await getHost(hostId);
    assert.equal(behind?.image, pushed.digestRef, 'the host records no image it does not hold');
    assert.equal(behind?.image_ref, pushed.ref);
    const during = await createdImage('rollout-during');
    assert.equal(during.image, pushed.digestRef, 'a create during the rollout runs the digest the host has, never the new tag');

    v2 = await registry.push(v2Source, 'ephemeral-sandbox-rollout', 'v2');
    assert.equal(v2.ref, v2Ref);
    assert.notEqual(v2.digestRef, pushed.digestRef);
    await docker('rmi', v2.digestRef).catch(() => undefined);
    const pushedAt = Date.now();
    const ready = await waitFor(
      'the host to pre-pull v2 and record its digest',
      async () => {
        const h = await getHost(hostId);
        return h?.image === v2!.digestRef ? h : undefined;
      },
      60_000,
    );
    assert.equal(ready.image_ref, v2Ref);
    // Within a pass or two of the image being there (5 s each, and a pull from loopback).
    assert.ok(Date.now() - pushedAt < 20_000, `recorded after ${Date.now() - pushedAt} ms`);
    assert.ok(await hasImage(v2.digestRef), 'pulled before it was recorded');

    const afterwards = await createdImage('rollout-after');
    assert.equal(afterwards.image, v2.digestRef);

    // The old digest is in use by the sandboxes made before: kept. Once they are gone, pruned (a pass or two).
    await new Promise((r) => setTimeout(r, 6_000));
    assert.ok(await hasImage(pushed.digestRef), 'an image a container uses is never pruned');
    for (const id of made.filter((m) => m !== afterwards.id)) {
      const { final } = await api.destroyAndWait(id, false);
      assert.ok(['stopped', 'expired', 'failed'].includes(final.body.status), final.text);
    }
    await waitFor('the old image to be pruned', async () => ((await hasImage(pushed.digestRef)) ? undefined : true), 30_000);
    assert.ok(await hasImage(v2.digestRef), 'the current image stays');
  });
});
