/**
 * The deployed shape's limits, enforced by the local stack: the handlers run
 * as Lambda runs them (their bundles, stopped at the function's timeout: the
 * local Lambda runtime stands in for Lambda), SSM answers as slowly as the
 * test makes it (latency injected at the local SSM endpoint stands in for a
 * slow or throttled SSM), and the host's SSM agent runs 5 commands at once
 * (the local SSM endpoint stands in for the agent's CommandWorkersLimit).
 * Run: node --import tsx --test test/lifecycle/aws-limits.test.ts
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { GetCommand } from '@aws-sdk/lib-dynamodb';
import { dynamo } from '../../lambdas/shared/clients/dynamodb';
import { config } from '../../lambdas/shared/config';
import { getHost } from '../../lambdas/shared/host-store';
import { startLocalStack, type LocalStack } from '../../lib/local/stack';
import { type ApiAnswer, apiClient, type ApiClient } from '../support/api-client';
import { containerExists } from '../support/docker';
import { record, waitFor } from './lifecycle-support';

let stack: LocalStack;
let api: ApiClient;

before(async () => {
  stack = await startLocalStack({ port: 0, reaperIntervalMs: 0, ssmCommandWorkers: 5, functionTimeoutSeconds: 6, tenantId: 'limits' });
  api = apiClient(stack.url, stack.apiKey);
});
after(async () => {
  stack?.ssm.setLatency(0);
  await stack?.close();
});

/** Creates a sandbox and waits for it to be ready (with a 6 s function timeout, create may answer 202 creating). */
async function createReady(user: string): Promise<string> {
  const c = await api.create(user);
  assert.ok([201, 202].includes(c.status), c.text);
  const id = c.body.sandbox_id as string;
  if (c.status === 202) await waitFor(`${id} to be ready`, async () => (await record(id)).status === 'ready', 60_000);
  return id;
}

/** The sandboxes holding one of the tenant's slots. */
async function liveSandboxIdsOfTenant(): Promise<Set<string>> {
  const out = await dynamo().send(new GetCommand({ TableName: config().tables.tenants, Key: { tenant_id: 'limits' }, ConsistentRead: true }));
  return (out.Item?.live_sandbox_ids as Set<string> | undefined) ?? new Set();
}

async function liveSandboxesOfTenant(): Promise<number> {
  return (await liveSandboxIdsOfTenant()).size;
}

describe("the SSM agent's 5 commands at once do not hold commands back", () => {
  it('runs 8 concurrent 15 s commands on one host side by side, and all complete', async () => {
    const id = await createReady('workers-user');
    const started = Date.now();
    const answers = await Promise.all(
      Array.from({ length: 8 }, (_, i) => api.call('POST', `/sandboxes/${id}/commands`, { command: `sleep 15; echo done-${i}`, command_id: `long-${i}` })),
    );
    for (const a of answers) assert.equal(a.status, 202, a.text);
    const ends = await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        waitFor(
          `long-${i} to end`,
          async () => {
            const g = await api.call('GET', `/sandboxes/${id}/commands/long-${i}?wait=10`);
            return g.body.status === 'exited' ? g.body : undefined;
          },
          90_000,
          100,
        ),
      ),
    );
    for (const [i, e] of ends.entries()) assert.equal(e.stdout, `done-${i}\n`);
    const starts = ends.map((e) => Date.parse(e.started_at));
    assert.ok(Math.max(...starts) - Math.min(...starts) < 10_000, 'they started side by side, not 5 then 3');
    assert.ok(Date.now() - started < 2 * 15_000 + 15_000, 'they ran at once');
    const destroyed = await api.destroy(id);
    // 204 ended; with the 6 s function timeout, 202 (its host needs longer) or 502 (cut off: see cutOrInTime).
    assert.ok([204, 202, 502].includes(destroyed.status), `${destroyed.status} ${destroyed.text}`);
    // The answer may come before the end: the next tests count the tenant's live sandboxes, so this one must have
    // given its slot back first (it had not, once, on a busy machine).
    await waitFor(`${id} to give its tenant slot back`, async () => !(await liveSandboxIdsOfTenant()).has(id), 60_000);
  });
});

/** 202 with the record mid-transition (the handler answered at its deadline), or 502 (Lambda cut it off at its timeout). */
function cutOrInTime(res: { status: number; text: string; body: any }, status: string): void {
  if (res.status === 502) {
    assert.equal(res.body.error.code, 'internal_error');
    return;
  }
  assert.equal(res.status, 202, res.text);
  assert.equal(res.body.status, status, res.text);
}

describe('a handler cut off at its Lambda timeout leaves nothing half-done for good', () => {
  async function settle(id: string, status: string): Promise<void> {
    await waitFor(`${id} to be ${status}`, async () => (await record(id)).status === status, 60_000);
  }

  it('create: SSM slower than the function; the host still makes the sandbox and records it ready', async () => {
    const before = await liveSandboxesOfTenant();
    stack.ssm.setLatency(8_000);
    let res: ApiAnswer;
    try {
      res = await api.create('cut-create');
    } finally {
      stack.ssm.setLatency(0);
    }
    // The handler gives up on SSM at its deadline and answers 202 (the host may be at it); had Lambda cut it off
    // at its timeout, API Gateway would have answered 502 for it. Either way nothing may be left half-done.
    cutOrInTime(res, 'creating');
    const list = await api.call('GET', '/sandboxes?user_id=cut-create');
    assert.equal(list.body.sandboxes.length, 1);
    const id = list.body.sandboxes[0].sandbox_id;
    await settle(id, 'ready');
    assert.equal(await containerExists(id), true);
    assert.equal((await api.exec(id, 'echo alive')).body.stdout, 'alive\n');
    assert.equal(await liveSandboxesOfTenant(), before + 1);

    // destroy, cut off the same way: the host removes the container and records the end.
    stack.ssm.setLatency(8_000);
    let d: ApiAnswer;
    try {
      d = await api.destroy(id);
    } finally {
      stack.ssm.setLatency(0);
    }
    cutOrInTime(d, 'shutting_down');
    await settle(id, 'stopped');
    await waitFor('the container to go', async () => !(await containerExists(id)), 30_000);
    // The slots are given back just after the record's end (a give-back that never lands is healed at the tenant's cap).
    await waitFor('the tenant slot to come back', async () => (await liveSandboxesOfTenant()) === before, 10_000);
    const host = await getHost(stack.hostId);
    assert.equal(host?.allocations[id], undefined, 'its share of the host was given back');
  });

  it('pause: the host stops the container and records paused; resume then works', async () => {
    const id = await createReady('cut-stop');
    await api.exec(id, 'echo kept > ~/kept.txt');
    stack.ssm.setLatency(8_000);
    let res: ApiAnswer;
    try {
      res = await api.call('POST', `/sandboxes/${id}/pause`);
    } finally {
      stack.ssm.setLatency(0);
    }
    cutOrInTime(res, 'pausing');
    assert.equal((await record(id)).status, 'pausing', 'the record says a pause is at work');
    await settle(id, 'paused');
    const started = await api.call('POST', `/sandboxes/${id}/resume`);
    assert.ok([200, 202].includes(started.status), started.text);
    await settle(id, 'ready');
    assert.equal((await api.exec(id, 'cat ~/kept.txt')).body.stdout, 'kept\n');
    await api.destroy(id);
  });

  it('answers 202 (never the gateway timeout) for work the host needs longer for, and GET ?wait follows it', async () => {
    const id = await createReady('slow-host');
    // SSM as slow as the function's whole budget: the handler gives up waiting and answers 202.
    stack.ssm.setLatency(3_000);
    let res: ApiAnswer;
    try {
      res = await api.call('POST', `/sandboxes/${id}/pause`);
    } finally {
      stack.ssm.setLatency(0);
    }
    assert.ok([200, 202].includes(res.status), res.text);
    if (res.status === 202) assert.equal(res.body.status, 'pausing');
    const followed = await api.call('GET', `/sandboxes/${id}?wait=20`);
    assert.equal(followed.status, 200);
    await settle(id, 'paused');
    await api.destroy(id, false);
  });
});
