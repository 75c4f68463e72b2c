/**
 * The warm pool through an image rollout (a real registry on loopback, the
 * fleet's image parameter on the local SSM endpoint, the host daemon's image
 * loop): the pool answers to the digest creates name, follows the host to the
 * new image, and leaves nothing that keeps the replaced one from being pruned.
 * Run: npm run build && node --import tsx --test test/lifecycle/image-rollout-pool.test.ts
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { containerLabels } from '../../contract/host-protocol';
import { getHost } from '../../lambdas/shared/host-store';
import { startLocalStack, type LocalStack } from '../../lib/local/stack';
import { apiClient, type ApiClient } from '../support/api-client';
import { docker as dockerApi } from '../support/docker';
import { docker, startLocalRegistry, type LocalRegistry } from '../support/registry';
import { poolLabel } from '../../host-agent/src/warm-pool';
import { sandboxImage } from '../host-agent/fixture';
import { uniqueUser, waitFor } from './lifecycle-support';

let registry: LocalRegistry;
let stack: LocalStack;
let api: ApiClient;
let v1: { ref: string; digestRef: string };
let v2: { ref: string; digestRef: string } | undefined;
const v2Source = `ephemeral-sandbox-rollout-pool-v2:${randomBytes(4).toString('hex')}`;

/** The image ids of this stack's unclaimed pool containers. */
async function poolImages(): Promise<string[]> {
  const list = await dockerApi.listContainers({ filters: { label: [poolLabel, `${containerLabels.hostId}=${stack.hostId}`] } });
  return list.filter((c) => c.Names[0]!.startsWith('/sbxpool-')).map((c) => c.ImageID);
}

const imageId = async (ref: string) => (await docker('image', 'inspect', '--format', '{{.Id}}', ref)).trim();
const hasImage = async (ref: string) =>
  docker('image', 'inspect', ref)
    .then(() => true)
    .catch(() => false);

before(async () => {
  registry = await startLocalRegistry();
  v1 = await registry.push(await sandboxImage({ minimal: true }), 'ephemeral-sandbox-rollout-pool', 'v1');
  await docker('rmi', v1.digestRef).catch(() => undefined);
  const container = await docker('create', await sandboxImage({ minimal: true }), 'true');
  await docker('commit', '--change', 'LABEL ephemeral-sandbox-rollout=pool-v2', container, v2Source);
  await docker('rm', container);
  stack = await startLocalStack({ port: 0, reaperIntervalMs: 0, warmContainers: 1, env: { SANDBOX_IMAGE: v1.ref, PRUNE_SANDBOX_IMAGES: '1' } });
  api = apiClient(stack.url, stack.apiKey);
});
after(async () => {
  await stack?.close();
  for (const ref of [v1?.ref, v1?.digestRef, v2?.digestRef, v2Source]) if (ref) await docker('rmi', ref).catch(() => undefined);
  await registry?.close();
});

describe('the warm pool through an image rollout (a real registry on loopback)', () => {
  it('a create naming the digest its host recorded claims the pool container made from the tag', async () => {
    await waitFor('the host to record v1 by digest', async () => ((await getHost(stack.hostId))?.image === v1.digestRef ? true : undefined), 90_000);
    const v1Id = await imageId(v1.digestRef);
    await waitFor('a pool container of v1', async () => ((await poolImages()).includes(v1Id) ? true : undefined), 90_000);
    const res = await api.createReady(uniqueUser('pool-rollout'), { idle_timeout_seconds: 600 });
    assert.equal(res.status, 201, res.text);
    const container = await dockerApi.getContainer(res.body.sandbox_id).inspect();
    assert.equal(container.Image, v1Id);
    assert.ok(container.Config.Labels?.[poolLabel], 'the sandbox is a claimed pool container');
    const { final } = await api.destroyAndWait(res.body.sandbox_id, false);
    assert.ok(['stopped', 'expired', 'failed'].includes(final.body.status), final.text);
  });

  it('after a deploy of v2 the pool is made of v2, and v1 is pruned (no pool container holds it)', async () => {
    v2 = await registry.push(v2Source, 'ephemeral-sandbox-rollout-pool', 'v2');
    await docker('rmi', v2.digestRef).catch(() => undefined);
    await stack.deployImage(v2.ref);
    await waitFor('the host to record v2', async () => ((await getHost(stack.hostId))?.image === v2!.digestRef ? true : undefined), 90_000);
    const v2Id = await imageId(v2.digestRef);
    await waitFor(
      'the pool to be made of v2 only',
      async () => {
        const images = await poolImages();
        return images.length > 0 && images.every((i) => i === v2Id) ? true : undefined;
      },
      90_000,
    );
    await waitFor('v1 to be pruned', async () => ((await hasImage(v1.digestRef)) ? undefined : true), 60_000);
    const res = await api.createReady(uniqueUser('pool-rollout-v2'), { idle_timeout_seconds: 600 });
    assert.equal(res.status, 201, res.text);
    const container = await dockerApi.getContainer(res.body.sandbox_id).inspect();
    assert.equal(container.Image, v2Id);
    assert.ok(container.Config.Labels?.[poolLabel], 'claimed from the pool');
    await api.destroyAndWait(res.body.sandbox_id, false);
  });
});
