/**
 * Issue 15: a burst of concurrent creates against one host. Every create ends
 * ready (201, or 202 followed to ready: never an error), the ones beyond the
 * warm pool are made cold (the pool degrades to the cold path, never to a
 * failure), no container is shared, and the pool is full again afterwards.
 * Sized for a 2-core machine: the smallest home (64 MB) and BURST_CREATES (50).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { poolLabel } from '../../host-agent/src/warm-pool';
import { startLocalStack, type LocalStack } from '../../lib/local/stack';
import { apiClient, type ApiClient } from '../support/api-client';
import { docker, inspect } from '../support/docker';
import { waitFor } from './lifecycle-support';

const burst = Number(process.env.BURST_CREATES ?? 50);
const depth = 4;
let stack: LocalStack;
let api: ApiClient;
const made: string[] = [];

before(async () => {
  stack = await startLocalStack({
    port: 0,
    reaperIntervalMs: 0,
    slots: burst + 8,
    warmContainers: depth,
    // A sync pass over fifty homes is not what this test is about.
    env: { MAX_SANDBOXES_PER_TENANT: String(burst + 8), HOT_SYNC_INTERVAL_SECONDS: '0' },
  });
  api = apiClient(stack.url, stack.apiKey);
});
after(async () => {
  await Promise.all(made.map((id) => api?.destroy(id, false).catch(() => undefined)));
  await stack?.close();
});

async function readyPool(): Promise<number> {
  const list = await docker.listContainers({ filters: { label: [poolLabel, `dev.ephemeral-sandbox.host-id=${stack.hostId}`] } });
  return list.filter((c) => c.Names[0]!.startsWith('/sbxpool-')).length;
}

describe(`a burst of ${burst} concurrent creates against one host`, () => {
  it('makes every sandbox (the pool first, then cold), each in its own container, and the pool fills up again', async () => {
    await waitFor('the warm pool to be full', async () => (await readyPool()) >= depth, 120_000, 100);
    const answers = await Promise.all(Array.from({ length: burst }, (_, i) => api.createReady(`burst-${i}`, { disk_mb: 64 }, 300_000)));
    for (const a of answers) if (a.body?.sandbox_id) made.push(a.body.sandbox_id);
    const failed = answers.filter((a) => a.status !== 201);
    assert.deepEqual(failed.map((a) => `${a.status} ${a.text.slice(0, 200)}`), [], 'every create ends ready');

    const containers = await Promise.all(made.map((id) => inspect(id)));
    assert.equal(new Set(containers.map((c) => c.Id)).size, burst, 'no container serves two sandboxes');
    const pooled = containers.filter((c) => c.Config.Labels[poolLabel]).length;
    assert.ok(pooled >= 1 && pooled < burst, `some creates claimed the pool (${pooled}), the rest were made cold`);

    const commands = await Promise.all(made.map((id) => api.exec(id, 'echo "$SANDBOX_ID"')));
    commands.forEach((c, i) => assert.equal(c.body?.stdout, `${made[i]}\n`, c.text));

    await waitFor('the warm pool to be full again', async () => (await readyPool()) >= depth, 180_000, 200);
    const ended = await Promise.all(made.splice(0).map((id) => api.destroy(id, false)));
    for (const e of ended) assert.ok([202, 204].includes(e.status), e.text);
  });
});
