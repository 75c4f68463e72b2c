/**
 * The standing fault suite: the local stack on its real engines while its
 * parts fail under it (the host daemon killed mid-command, DynamoDB and S3
 * frozen with SIGSTOP mid-request and thawed, a container removed behind the
 * system's back, pause/resume/destroy/exec racing on one sandbox). Each case
 * ends with the same checks: no 500 or 502 a retry would fix, nothing leaked
 * (container, mount, home, host slot, tenant count), no data lost beyond what
 * the README promises. (Ctrl-C of the whole stack is test/lifecycle/ctrl-c.)
 * Run: node --import tsx --test test/faults/faults.test.ts
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { GetCommand } from '@aws-sdk/lib-dynamodb';
import { dynamo } from '../../lambdas/shared/clients/dynamodb';
import { config } from '../../lambdas/shared/config';
import { ApiError } from '../../lambdas/shared/errors';
import { resetHosts, wrapHosts } from '../../lambdas/shared/host-calls';
import { getHost } from '../../lambdas/shared/host-store';
import { resumeSandbox } from '../../lambdas/shared/lifecycle';
import { liveSandboxesOnHost } from '../../lambdas/shared/sandbox-store';
import { startLocalStack, type LocalStack } from '../../lib/local/stack';
import { apiClient, type ApiClient, type ApiAnswer } from '../support/api-client';
import { containerExists, docker } from '../support/docker';
import { hotPrefix, record, s3Text, sleep, uniqueUser, waitFor } from '../lifecycle/lifecycle-support';

let stack: LocalStack;
let api: ApiClient;
const tenant = 'faults';

before(async () => {
  stack = await startLocalStack({
    port: 0,
    tenantId: tenant,
    reaperIntervalMs: 2_000,
    hostHeartbeatMs: 1_000,
    env: { RECONCILE_GRACE_SECONDS: '3', HOT_SYNC_INTERVAL_SECONDS: '0' },
  });
  api = apiClient(stack.url, stack.apiKey);
});
after(async () => {
  thaw('dynamodb');
  thaw('s3');
  await stack?.close();
});

/** Freezes (SIGSTOP) or thaws (SIGCONT) a storage engine's whole process group: requests to it hang, then go on. */
function freeze(engine: 'dynamodb' | 's3'): void {
  process.kill(-stack[engine].pid, 'SIGSTOP');
}
function thaw(engine: 'dynamodb' | 's3'): void {
  try {
    process.kill(-stack[engine].pid, 'SIGCONT');
  } catch {
    // already gone (the stack closed)
  }
}

/** Answers a client may get while a part is down: success, a refusal it caused, or a 503 that says when to retry. */
function acceptable(res: ApiAnswer, what: string): void {
  assert.ok(res.status < 500 || res.status === 503, `${what}: ${res.status} ${res.text.slice(0, 300)}`);
  if (res.status === 503) assert.ok(res.headers.get('retry-after'), `${what}: a 503 says when to retry`);
}

async function tenantLiveCount(): Promise<number> {
  const out = await dynamo().send(new GetCommand({ TableName: config().tables.tenants, Key: { tenant_id: tenant }, ConsistentRead: true }));
  return (out.Item?.live_sandbox_ids as Set<string> | undefined)?.size ?? 0;
}

function mountsOf(id: string): string[] {
  return readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[1] ?? '')
    .filter((m) => m.includes(`/sandboxes/${id}`));
}

/**
 * The per-sandbox part of the egress firewall (the allow_all fast path, one
 * `-s <ip>/32` rule per sandbox) names only containers still on the network.
 */
async function strayFirewallRules(): Promise<string[]> {
  const info = await docker.getNetwork(`sbx-${stack.hostId.slice(-8)}`).inspect();
  const bridge: string = info.Options?.['com.docker.network.bridge.name'] ?? `br-${String(info.Id).slice(0, 12)}`;
  const live = new Set(Object.values(info.Containers ?? {}).map((c: any) => String(c.IPv4Address).split('/')[0]));
  return execFileSync('iptables-save', ['-t', 'filter'], { encoding: 'utf8' })
    .split('\n')
    .filter((rule) => rule.includes(`SBX-POL-${bridge} `))
    .filter((rule) => {
      const ip = / -s (\S+)\/32 /.exec(rule)?.[1];
      return ip !== undefined && !live.has(ip);
    });
}

/** Nothing of an ended sandbox left on the host or in the counts. */
async function assertNothingLeaked(ids: string[]): Promise<void> {
  for (const id of ids) {
    await waitFor(
      `${id} to leave nothing behind`,
      async () => {
        const r = await record(id);
        if (!['stopped', 'expired', 'failed'].includes(r.status)) return undefined;
        if (await containerExists(id)) return undefined;
        if (mountsOf(id).length > 0) return undefined;
        if (existsSync(join(stack.stateDir, 'sandboxes', id))) return undefined;
        return true;
      },
      90_000,
      500,
    );
  }
  await waitFor('no firewall rule for a container that is gone', async () => (await strayFirewallRules()).length === 0, 30_000).catch(async (err: Error) => {
    throw new Error(`${err.message}: ${(await strayFirewallRules()).join('; ')}`);
  });
  const live = await liveSandboxesOnHost(stack.hostId);
  const mine = live.filter((r) => r.tenant_id === tenant);
  await waitFor('the tenant count to match what is live', async () => (await tenantLiveCount()) === mine.length, 30_000).catch(async (err: Error) => {
    throw new Error(`${err.message}: count ${await tenantLiveCount()}, live ${JSON.stringify(mine.map((r) => [r.sandbox_id, r.status]))}`);
  });
  await waitFor(
    "the host's allocations to match what is live",
    async () => Object.keys((await getHost(stack.hostId))?.allocations ?? {}).length === live.length,
    30_000,
  );
}

async function createReady(user: string): Promise<string> {
  const res = await api.createReady(user, { idle_timeout_seconds: 600 });
  assert.equal(res.status, 201, res.text);
  return res.body.sandbox_id;
}

describe('faults', () => {
  it('the host daemon killed mid-command: the command is lost with what it wrote kept, its processes stopped, the host serves again', async () => {
    const id = await createReady(uniqueUser('daemon-kill'));
    const started = await api.call('POST', `/sandboxes/${id}/commands`, {
      command: 'echo before the crash; sleep 300; echo never',
      command_id: 'crashed',
    });
    assert.equal(started.status, 202, started.text);
    await waitFor(
      'its first line',
      async () => (await api.call('GET', `/sandboxes/${id}/commands/crashed?wait=5`)).body.stdout === 'before the crash\n',
      15_000,
    );

    await stack.stopDaemon(); // SIGKILL, as a crash
    try {
      // Meanwhile the API answers what it can: a command needs the daemon, so 503 with Retry-After.
      const meanwhile = await api.exec(id, 'true');
      acceptable(meanwhile, 'exec while the daemon is down');
      assert.equal(meanwhile.status, 503, meanwhile.text);
    } finally {
      stack.startDaemon();
    }

    const lost = await waitFor(
      'the command to be closed as lost',
      async () => {
        const g = await api.call('GET', `/sandboxes/${id}/commands/crashed`);
        return g.body.status === 'lost' ? g.body : undefined;
      },
      30_000,
    );
    assert.equal(lost.end_reason, 'host_daemon_restarted');
    assert.equal(lost.stdout, 'before the crash\n', 'what it wrote before the crash is kept');
    const left = await waitFor(
      'the sandbox to run commands again',
      async () => {
        const res = await api.exec(id, 'pgrep -c -f "^sleep 300" || true');
        return res.status === 200 ? res : undefined;
      },
      30_000,
    );
    assert.equal(left.body.stdout.trim(), '0', "the lost command's processes were stopped");
    assert.equal((await api.destroyAndWait(id)).final.body.status, 'stopped');
    await assertNothingLeaked([id]);
  });

  it('DynamoDB frozen mid-request: 503 with Retry-After, never a 500; a command that ran meanwhile is recorded with its output once it is back', async () => {
    const id = await createReady(uniqueUser('ddb-freeze'));
    const started = await api.call('POST', `/sandboxes/${id}/commands`, { command: 'sleep 2; echo ran while the table was away', command_id: 'during' });
    assert.equal(started.status, 202, started.text);
    freeze('dynamodb');
    let during: ApiAnswer[];
    try {
      during = await Promise.all([api.get(id), api.exec(id, 'true'), api.call('GET', `/sandboxes/${id}/commands/during`), api.create(uniqueUser('refused'))]);
    } finally {
      thaw('dynamodb');
    }
    for (const [i, res] of during.entries()) acceptable(res, `request ${i} while DynamoDB was frozen`);
    assert.ok(
      during.some((res) => res.status === 503),
      'the frozen table is reported, not hidden',
    );
    const done = await waitFor(
      'the command to be recorded',
      async () => {
        const g = await api.call('GET', `/sandboxes/${id}/commands/during`);
        return g.body.status === 'exited' ? g.body : undefined;
      },
      60_000,
    );
    assert.equal(done.stdout, 'ran while the table was away\n');
    // A create refused while the table was away (or made once it came back) leaves the counts straight.
    for (const s of (await api.call('GET', '/sandboxes')).body.sandboxes)
      if (!['stopped', 'expired', 'failed'].includes(s.status)) await api.destroyAndWait(s.sandbox_id, false);
    await assertNothingLeaked([id]);
  });

  it('S3 frozen during a graceful end: the end finishes (or keeps the home to sync later) and every file reaches S3 once it is back', async () => {
    const user = uniqueUser('s3-freeze');
    const id = await createReady(user);
    const wrote = await api.exec(id, 'for i in $(seq 1 50); do echo "file $i" > ~/f$i.txt; done');
    assert.equal(wrote.status, 200, wrote.text);
    freeze('s3');
    let ended: ApiAnswer;
    try {
      ended = await api.call('DELETE', `/sandboxes/${id}?graceful=true`);
    } finally {
      setTimeout(() => thaw('s3'), 5_000);
    }
    acceptable(ended, 'a graceful destroy while S3 was frozen');
    await sleep(6_000);
    thaw('s3');
    await waitFor('every file in S3', async () => (await s3Text(stack, hotPrefix(stack, user) + 'f50.txt')) === 'file 50\n', 120_000, 1_000);
    assert.equal(await s3Text(stack, hotPrefix(stack, user) + 'f1.txt'), 'file 1\n');
    await assertNothingLeaked([id]);
  });

  it("a container removed behind the system's back: the record fails, the home is synced, nothing stays on the host", async () => {
    const user = uniqueUser('rm-f');
    // allow_all: the sandbox has a firewall rule of its own, which must go with it.
    const res = await api.createReady(user, { idle_timeout_seconds: 600, network: { egress: 'allow_all' } });
    assert.equal(res.status, 201, res.text);
    const id: string = res.body.sandbox_id;
    assert.ok((await strayFirewallRules()).length === 0);
    await api.exec(id, 'echo kept > ~/kept.txt');
    await docker.getContainer(id).remove({ force: true });
    await waitFor('the record to fail', async () => (await record(id)).status === 'failed', 30_000);
    assert.equal((await record(id)).stop_reason, 'container_vanished');
    await assertNothingLeaked([id]);
    assert.equal(await s3Text(stack, hotPrefix(stack, user) + 'kept.txt'), 'kept\n', 'the home on the host was synced before it went');
  });

  it('a resume that reaches its host after a destroy took the container: 409 with the status it ended in, not a host error (a dispatcher wrapper stands in for SSM delivering the resume late)', async () => {
    const id = await createReady(uniqueUser('late-resume'));
    const paused = await api.call('POST', `/sandboxes/${id}/pause`);
    assert.equal(paused.status, 200, paused.text);
    wrapHosts((inner) => ({
      async dispatch(instanceId, verb, request, opts) {
        if (verb === 'resume') {
          const ended = await api.call('DELETE', `/sandboxes/${id}?graceful=false`);
          assert.ok([200, 202].includes(ended.status), ended.text);
          await waitFor('the container to go', async () => !(await containerExists(id)), 30_000);
        }
        return inner.dispatch(instanceId, verb, request, opts);
      },
    }));
    try {
      await assert.rejects(resumeSandbox(tenant, id, Date.now() + 25_000), (err: unknown) => {
        assert.ok(err instanceof ApiError, String(err));
        assert.equal(err.status, 409, err.message);
        assert.match(err.message, /is (shutting_down|stopped); cannot resume/);
        return true;
      });
    } finally {
      resetHosts();
    }
    await waitFor('the record to end', async () => (await record(id)).status === 'stopped', 30_000);
    await assertNothingLeaked([id]);
  });

  it('pause, resume, destroy and exec racing on one sandbox: only success, 409 or 503 with Retry-After, and it ends clean', async () => {
    const ids = await Promise.all([1, 2].map(() => createReady(uniqueUser('race'))));
    for (const id of ids) {
      const calls: (() => Promise<ApiAnswer>)[] = [];
      for (let i = 0; i < 16; i++) {
        calls.push(
          () => api.call('POST', `/sandboxes/${id}/pause`),
          () => api.call('POST', `/sandboxes/${id}/resume`),
          () => api.exec(id, 'echo hi'),
          () => api.call('POST', `/sandboxes/${id}/commands`, { command: 'sleep 1' }),
        );
      }
      calls.splice(40, 0, () => api.call('DELETE', `/sandboxes/${id}?graceful=true`));
      const answers = await Promise.all(calls.map((c, i) => sleep(i * 30).then(c)));
      for (const [i, res] of answers.entries()) acceptable(res, `race call ${i}`);
      const after = await api.destroyAndWait(id);
      assert.ok(['stopped', 'expired'].includes(after.final.body.status), after.final.text);
    }
    await assertNothingLeaked(ids);
    assert.deepEqual(
      readdirSync(join(stack.stateDir, 'sandboxes')).filter((d) => ids.includes(d)),
      [],
    );
  });
});
