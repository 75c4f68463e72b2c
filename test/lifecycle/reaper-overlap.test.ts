/**
 * Issue 5 on the real local stack: the reaper is safe under overlap (two runs
 * at once, or a run and a user destroy, end each sandbox once and never
 * error), and its cost follows the number of expired sandboxes, not the size
 * of the table.
 *
 * The reaper timer is off here: the tests run reap() themselves, with a clock
 * set past the sandboxes' deadlines, as the scheduled run at that time would.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ListCommandInvocationsCommand } from '@aws-sdk/client-ssm';
import { BatchWriteCommand, QueryCommand } from '@aws-sdk/lib-dynamodb';
import type { DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import { dynamo } from '../../lambdas/shared/clients/dynamodb';
import { ssm } from '../../lambdas/shared/clients/ssm';
import { config } from '../../lambdas/shared/config';
import { dueSandboxes, reap, type ReapReport } from '../../lambdas/shared/reaper';
import { getHost, placeSandbox } from '../../lambdas/shared/host-store';
import { resourcesOf } from '../../lambdas/shared/placement';
import { reapShardOf, type SandboxRecord } from '../../lambdas/shared/sandbox-record';
import { storageFor } from '../../lambdas/shared/sandboxes';
import { newSandboxId } from '../../contract/ids';
import { recordWithTenantSlot } from '../../lambdas/shared/tenants';
import { indexName, reapShards, sandboxesTable } from '../../lambdas/shared/tables';
import { encodeInline } from '../../contract/host-protocol';
import { repoRoot } from '../../lib/paths';
import { startLocalStack, type LocalStack } from '../../lib/local/stack';
import { apiClient, type ApiClient } from '../support/api-client';
import { containerExists } from '../support/docker';
import { record, uniqueUser, waitFor } from './lifecycle-support';

let stack: LocalStack;
let api: ApiClient;
const made: string[] = [];

before(async () => {
  stack = await startLocalStack({
    port: 0,
    reaperIntervalMs: 0,
    // The runs below use a clock up to a minute ahead: the host must not look lost at that time.
    env: { HOST_LOST_AFTER_SECONDS: '3600' },
  });
  api = apiClient(stack.url, stack.apiKey);
});
after(async () => {
  for (const id of made) await api?.destroy(id, false).catch(() => undefined);
  await stack?.close();
});

async function create(config: Record<string, unknown>): Promise<string> {
  const res = await api.create(uniqueUser('overlap'), config);
  assert.equal(res.status, 201, res.text);
  made.push(res.body.sandbox_id);
  return res.body.sandbox_id;
}

/** Destroy commands the control plane sent to hosts so far, as the SSM endpoint recorded them. */
async function hostDestroys(): Promise<number> {
  let count = 0;
  let next: string | undefined;
  do {
    const page = await ssm().send(new ListCommandInvocationsCommand({ InstanceId: stack.hostId, MaxResults: 50, NextToken: next }));
    count += (page.CommandInvocations ?? []).filter((inv) => inv.Comment === 'host-agent destroy').length;
    next = page.NextToken;
  } while (next);
  return count;
}

function total(reports: ReapReport[], field: keyof ReapReport): number {
  return reports.reduce((sum, r) => sum + r[field], 0);
}

/** A sandbox record with every field a real one has (lambdas/shared/sandboxes.ts createSandbox). */
function sandboxRecord(o: {
  now: number;
  tenant: string;
  user: string;
  host: string;
  status: SandboxRecord['status'];
  deadline: number;
  lastActivity?: number;
  labels?: Record<string, string>;
}): SandboxRecord {
  const sandboxId = newSandboxId();
  const lastActivity = o.lastActivity ?? o.now;
  return {
    sandbox_id: sandboxId,
    tenant_id: o.tenant,
    user_id: o.user,
    tenant_user: `${o.tenant}#${o.user}`,
    status: o.status,
    host_id: o.host,
    ...(o.status === 'creating' ? {} : { container_id: randomBytes(32).toString('hex') }),
    created_at: new Date(o.now).toISOString(),
    updated_at: new Date(lastActivity).toISOString(),
    expires_at: new Date(o.now + 7_200_000).toISOString(),
    expires_at_ms: o.now + 7_200_000,
    idle_timeout_s: 900,
    last_activity_at: lastActivity,
    execs: {},
    reap_shard: reapShardOf(sandboxId),
    deadline_at: o.deadline,
    live_host_id: o.host,
    cwd: '/home/agent',
    config: { cpu: 1, memory_mb: 1024, ttl_seconds: 7200, idle_timeout_seconds: 900, network: 'bridge', env: {}, labels: o.labels ?? {} },
    token_hash: randomBytes(32).toString('hex'),
  };
}

describe('the reaper under overlap', () => {
  it('two reaper runs at once end each due sandbox exactly once, without errors', async () => {
    const idle = await create({ idle_timeout_seconds: 30, ttl_seconds: 600 });
    const overAge = await create({ idle_timeout_seconds: 30, ttl_seconds: 60 });
    const completed = await create({ idle_timeout_seconds: 300, ttl_seconds: 600 });
    assert.equal((await api.call('POST', `/sandboxes/${completed}/complete`, { result: { ok: true } })).status, 200);

    const before = await hostDestroys();
    const at = Date.now() + 61_000; // past the idle deadline and the 60 s TTL
    const reports = await Promise.all([reap(at), reap(at)]);
    const sent = (await hostDestroys()) - before;

    assert.equal(total(reports, 'errors'), 0, JSON.stringify(reports));
    assert.equal(sent, 3, 'one host destroy per sandbox');
    assert.equal(total(reports, 'expired'), 2);
    assert.equal(total(reports, 'stopped'), 1);
    const [a, b, c] = await Promise.all([record(idle), record(overAge), record(completed)]);
    assert.deepEqual([a.status, a.stop_reason], ['expired', 'idle_timeout']);
    assert.deepEqual([b.status, b.stop_reason], ['expired', 'ttl_expired']);
    assert.deepEqual([c.status, c.stop_reason], ['stopped', 'completed']);
    for (const id of [idle, overAge, completed]) assert.equal(await containerExists(id), false);

    // A later run finds nothing left to do.
    const again = await reap(at);
    assert.equal(again.candidates, 0);
    assert.equal((await hostDestroys()) - before, 3);
  });

  it('a reaper run and user destroys at once end each sandbox exactly once, without errors', async () => {
    const ids = await Promise.all([1, 2, 3].map(() => create({ idle_timeout_seconds: 30, ttl_seconds: 600 })));
    const before = await hostDestroys();
    const at = Date.now() + 31_000; // past the idle deadline
    const outcomes = await Promise.all(ids.map((id) => Promise.all([api.destroy(id, true), reap(at)])));
    const sent = (await hostDestroys()) - before;

    for (const [destroyed, report] of outcomes) {
      // 204: the destroy ended it; 202: the reaper was ending it already (its host records the end).
      assert.ok([202, 204].includes(destroyed.status), destroyed.text);
      assert.equal(report.errors, 0, JSON.stringify(report));
    }
    assert.equal(sent, ids.length, 'one host destroy per sandbox');
    for (const id of ids) {
      const r = await waitFor(
        `${id} to end`,
        async () => {
          const now = await record(id);
          return ['stopped', 'expired'].includes(now.status) ? now : undefined;
        },
        60_000,
      );
      // Whoever won records the end: the user (stopped) or the reaper (expired).
      assert.ok(
        (r.status === 'stopped' && r.stop_reason === 'user_requested') || (r.status === 'expired' && r.stop_reason === 'idle_timeout'),
        `${id}: ${r.status} ${r.stop_reason}`,
      );
      assert.equal(await containerExists(id), false);
    }
  });

  it('never ends a sandbox for idleness when a heartbeat lands during the run', async () => {
    const ids = await Promise.all([1, 2, 3, 4].map(() => create({ idle_timeout_seconds: 30, ttl_seconds: 600 })));
    const outcomes = await Promise.all(
      ids.map(async (id) => {
        // The run's clock is just past the idle deadline: any heartbeat after it makes the sandbox not idle.
        const at = (await record(id)).last_activity_at + 30_001;
        const [report, beat] = await Promise.all([reap(at), api.call('POST', `/sandboxes/${id}/heartbeat`)]);
        return { id, report, beat, after: await record(id) };
      }),
    );
    for (const { id, report, beat, after } of outcomes) {
      assert.equal(report.errors, 0, JSON.stringify(report));
      if (beat.status === 200) {
        // The heartbeat counted: the run either lost its conditional write or saw the new activity.
        assert.equal(after.status, 'running', `${id} was reaped although its heartbeat was accepted`);
      } else {
        // The run ended it first; the heartbeat was refused, not silently lost.
        assert.equal(beat.status, 409, beat.text);
        assert.equal(after.stop_reason, 'idle_timeout');
      }
    }
  });
});

describe('a create that died half-way', () => {
  it('(record creating, container up, its host gone before recording it) is failed by the reaper after the create timeout and its container removed', async () => {
    const user = uniqueUser('half-made');
    const now = Date.now();
    // The first half of a create, as lambdas/shared/sandboxes.ts does it: slots, record, host create...
    const placeholder = sandboxRecord({ now, tenant: stack.tenantId, user, host: '', status: 'creating', deadline: now + 120_000 });
    const host = await placeSandbox(placeholder.sandbox_id, resourcesOf(placeholder.config), { now });
    assert.ok(host, 'the local host has room');
    const r = { ...placeholder, host_id: host.host_id, live_host_id: host.host_id };
    await recordWithTenantSlot(r);
    // ...the host makes the container and dies before it records it (the host-agent run here with no
    // control plane configured: it makes the container and writes nothing, as a host that died would)...
    const request = {
      sandboxId: r.sandbox_id,
      tenantId: stack.tenantId,
      userId: user,
      image: config().sandboxImage,
      cpu: 1,
      memoryMb: 512,
      network: 'bridge',
      storage: storageFor(stack.tenantId, user),
    };
    const made = spawnSync(process.execPath, [join(repoRoot, 'dist', 'host-agent.mjs'), 'create', encodeInline(request)], {
      env: { ...process.env, ...stack.env, SANDBOXES_TABLE: '', HOST_AGENT_ENV_FILE: '' },
      encoding: 'utf8',
    });
    assert.match(made.stdout, /"ok":true/, made.stderr);
    assert.equal(await containerExists(r.sandbox_id), true);
    // ...so nothing records the container.
    assert.equal((await reap(now + 60_000)).errors, 0);
    assert.equal((await record(r.sandbox_id)).status, 'creating', 'left alone before the create timeout');

    const report = await reap(now + 121_000);
    assert.equal(report.errors, 0, JSON.stringify(report));
    const ended = await record(r.sandbox_id);
    assert.deepEqual([ended.status, ended.stop_reason], ['failed', 'create_failed']);
    assert.equal(ended.live_host_id, undefined);
    assert.equal(await containerExists(r.sandbox_id), false);
    assert.equal((await getHost(host.host_id))?.allocations[r.sandbox_id], undefined, 'its share of the host was given back');
  });
});

describe('the cost of a reaper run', () => {
  const liveCount = 5000;
  const expiredCount = 10;
  const otherHost = 'mi-00000000000000fee';

  function fakeRecord(i: number, now: number, expired: boolean): SandboxRecord {
    const host = expired ? stack.hostId : otherHost;
    const created = expired ? now - 20_000 : now - (i % 3600) * 1000;
    const lastActivity = expired ? now - 3_600_000 : now - (i % 600) * 1000;
    return sandboxRecord({
      now: created,
      tenant: 'cost-tenant',
      user: `u${i % 50}`,
      host,
      status: 'running',
      lastActivity,
      deadline: expired ? now - 1000 : lastActivity + 900_000 + 3_600_000,
      labels: { job: `job-${i}` },
    });
  }

  async function putAll(items: SandboxRecord[]): Promise<void> {
    const batches: SandboxRecord[][] = [];
    for (let i = 0; i < items.length; i += 25) batches.push(items.slice(i, i + 25));
    const table = config().tables.sandboxes;
    const worker = async () => {
      for (let batch = batches.shift(); batch; batch = batches.shift()) {
        let request: Record<string, any> = { [table]: batch.map((Item) => ({ PutRequest: { Item } })) };
        while (Object.keys(request).length > 0) {
          const out = await dynamo().send(new BatchWriteCommand({ RequestItems: request }));
          request = out.UnprocessedItems ?? {};
        }
      }
    };
    await Promise.all(Array.from({ length: 8 }, worker));
  }

  /** Read and write capacity of every DynamoDB call the control plane makes while `fn` runs. */
  async function metered<T>(fn: () => Promise<T>): Promise<{ value: T; read: number; write: number; commands: string[] }> {
    const doc = dynamo() as DynamoDBDocumentClient;
    const meter = { read: 0, write: 0, commands: [] as string[] };
    const name = `capacity-meter-${randomBytes(4).toString('hex')}`;
    doc.middlewareStack.add(
      (next, context) => async (args: any) => {
        args.input.ReturnConsumedCapacity ??= 'TOTAL';
        const out: any = await next(args);
        const used = [out.output?.ConsumedCapacity ?? []].flat().reduce((sum: number, c: any) => sum + (c?.CapacityUnits ?? 0), 0);
        const command = String(context.commandName);
        meter.commands.push(command);
        if (/^(Get|Query|Scan|BatchGet)/.test(command)) meter.read += used;
        else meter.write += used;
        return out;
      },
      { step: 'initialize', name },
    );
    try {
      const value = await fn();
      return { value, ...meter };
    } finally {
      doc.middlewareStack.remove(name);
    }
  }

  it(`reads about what ${expiredCount} items cost, not ${liveCount + expiredCount}: a Query on the sparse deadline index`, async (t) => {
    const now = Date.now();
    const live = Array.from({ length: liveCount }, (_, i) => fakeRecord(i, now, false));
    const expired = Array.from({ length: expiredCount }, (_, i) => fakeRecord(i, now, true));
    await putAll([...live, ...expired]);

    // What reading every live record through the same index would cost (a reaper that looked at all of them).
    let everyLive = 0;
    let everyLiveItems = 0;
    for (let shard = 0; shard < reapShards; shard++) {
      let startKey: Record<string, unknown> | undefined;
      do {
        const out = await dynamo().send(
          new QueryCommand({
            TableName: config().tables.sandboxes,
            IndexName: indexName(sandboxesTable, 'by-deadline'),
            KeyConditionExpression: 'reap_shard = :s',
            ExpressionAttributeValues: { ':s': String(shard) },
            ReturnConsumedCapacity: 'TOTAL',
            ExclusiveStartKey: startKey,
          }),
        );
        everyLive += out.ConsumedCapacity?.CapacityUnits ?? 0;
        everyLiveItems += out.Count ?? 0;
        startKey = out.LastEvaluatedKey;
      } while (startKey);
    }
    assert.ok(everyLiveItems >= liveCount + expiredCount);

    const due = await dueSandboxes(Date.now());
    assert.deepEqual(due.items.map((c) => c.sandbox_id).sort(), expired.map((r) => r.sandbox_id).sort(), 'exactly the expired ones');
    // One Query per shard: each costs at least 0.5 units; 10 small items fit in that.
    assert.ok(due.consumedReadUnits <= reapShards * 0.5 + 1, `the deadline query read ${due.consumedReadUnits} units`);
    assert.ok(everyLive >= 40 * due.consumedReadUnits, `reading all ${everyLiveItems} live records costs ${everyLive} units`);

    // The whole run, every DynamoDB call of it metered, ending the 10 through the real host.
    const run = await metered(() => reap(Date.now()));
    const report = run.value;
    assert.equal(report.errors, 0, JSON.stringify(report));
    assert.equal(report.candidates, expiredCount);
    assert.equal(report.expired, expiredCount);
    assert.ok(!run.commands.some((c) => c.startsWith('Scan')), `no Scan: ${[...new Set(run.commands)].join(', ')}`);
    // Per expired sandbox: one consistent GetItem (1 unit); plus the shard queries and one host read.
    const readBudget = reapShards * 0.5 + 1 + expiredCount * 1 + 2;
    assert.ok(run.read <= readBudget, `the run read ${run.read} units (budget ${readBudget} for ${expiredCount} expired)`);
    assert.ok(everyLive > 5 * run.read, `a run over the whole table would read ${everyLive} units, this one read ${run.read}`);
    t.diagnostic(
      `deadline query: ${due.consumedReadUnits} RCU for ${expiredCount} due of ${everyLiveItems} live; whole run: ${run.read} RCU read, ${run.write} WCU written; every live record through the index: ${everyLive} RCU`,
    );
    for (const r of expired) {
      const after = await record(r.sandbox_id);
      assert.deepEqual([after.status, after.stop_reason], ['expired', 'idle_timeout']);
    }
    const untouched = await record(live[0]!.sandbox_id);
    assert.equal(untouched.status, 'running');
  });
});
