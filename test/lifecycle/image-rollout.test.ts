/**
 * Issue 13 on the real local stack: a host whose SANDBOX_IMAGE is a tag in a
 * registry (a real one on loopback; on AWS, ECR) pulls it before it registers,
 * records the digest it resolved on its host item, and creates name that
 * digest, so every sandbox runs exactly the image the host checked.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { getHost } from '../../lambdas/shared/host-store';
import { startLocalStack, type LocalStack } from '../../lib/local/stack';
import { apiClient, type ApiClient } from '../support/api-client';
import { docker as dockerApi } from '../support/docker';
import { docker, startLocalRegistry, type LocalRegistry } from '../support/registry';
import { sandboxImage } from '../host-agent/fixture';
import { uniqueUser } from './lifecycle-support';

let registry: LocalRegistry;
let stack: LocalStack;
let api: ApiClient;
let pushed: { ref: string; digestRef: string };
const made: string[] = [];

before(async () => {
  registry = await startLocalRegistry();
  // The small test image (a Debian with the agent user): pushing the full sandbox image would cost minutes here.
  pushed = await registry.push(await sandboxImage({ minimal: true }), 'ephemeral-sandbox-rollout', 'v1');
  await docker('rmi', pushed.digestRef).catch(() => undefined);
  stack = await startLocalStack({ port: 0, reaperIntervalMs: 0, env: { SANDBOX_IMAGE: pushed.ref } });
  api = apiClient(stack.url, stack.apiKey);
});
after(async () => {
  for (const id of made) await api?.destroy(id, false).catch(() => undefined);
  await stack?.close();
  await docker('rmi', pushed?.ref ?? 'none').catch(() => undefined);
  await docker('rmi', pushed?.digestRef ?? 'none').catch(() => undefined);
  await registry?.close();
});

describe('image rollout (a real registry on loopback)', () => {
  it('the host pulled the configured tag before registering and records the digest it resolved', async () => {
    const host = await getHost(stack.hostId);
    assert.equal(host?.image, pushed.digestRef);
    assert.equal(host?.image_ref, pushed.ref);
  });

  it('a create names the image by that digest', async () => {
    const res = await api.createReady(uniqueUser('rollout'), { idle_timeout_seconds: 600 });
    assert.equal(res.status, 201, res.text);
    made.push(res.body.sandbox_id);
    const info = await dockerApi.getContainer(res.body.sandbox_id).inspect();
    assert.equal(info.Config.Image, pushed.digestRef);
  });
});
