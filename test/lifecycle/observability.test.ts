/**
 * Issue 16 on the real local stack: what an operator and a user's callback
 * see. A create, a command and a destroy put their events on the bus in
 * order and write their metric lines (EMF, as CloudWatch reads them); a host
 * that stops heartbeating shows as the host-lost metric and events; an event
 * the bus will not take is retried, then reported, and never fails the caller.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { publishEvent, sandboxEvent } from '../../lambdas/shared/events';
import { getHost } from '../../lambdas/shared/host-store';
import type { SandboxRecord } from '../../lambdas/shared/sandbox-record';
import type { BusEvent } from '../../lib/local/event-bus';
import { startLocalStack, type LocalStack } from '../../lib/local/stack';
import type { MetricRecord } from '../../lib/local/telemetry';
import { apiClient, type ApiClient } from '../support/api-client';
import { uniqueUser, waitFor } from './lifecycle-support';

const lostAfterSeconds = 3;

let stack: LocalStack;
let api: ApiClient;
const made: string[] = [];

before(async () => {
  stack = await startLocalStack({
    port: 0,
    // The tests run the reaper themselves.
    reaperIntervalMs: 0,
    hostHeartbeatMs: 1000,
    env: { HOST_LOST_AFTER_SECONDS: String(lostAfterSeconds), HOT_SYNC_INTERVAL_SECONDS: '0' },
  });
  api = apiClient(stack.url, stack.apiKey);
});

after(async () => {
  if (stack && !stack.daemon()) stack.startDaemon();
  for (const id of made) await api?.destroy(id, false).catch(() => undefined);
  await stack?.close();
});

const eventsOf = (sandboxId: string): BusEvent[] => stack.events.events.filter((e) => e.detail.sandbox_id === sandboxId);
const metric =
  (name: string, dims: Record<string, string> = {}, after = 0) =>
  (m: MetricRecord) =>
    m.seq > after && m.name === name && Object.entries(dims).every(([k, v]) => m.dimensions[k] === v);

describe('events and metrics of a sandbox', () => {
  it('a create, a command and a destroy put their events on the bus in order, with ids, statuses, codes and durations only', async () => {
    const user = uniqueUser('obs');
    const secret = `secret-${Date.now()}`;
    const created = await api.createReady(user, { idle_timeout_seconds: 600, labels: { note: secret }, env: { TOKEN: secret } });
    assert.equal(created.status, 201, created.text);
    const id = created.body.sandbox_id as string;
    made.push(id);
    const ran = await api.exec(id, `echo ${secret}; exit 3`, { env: { ALSO: secret } });
    assert.equal(ran.status, 200, ran.text);
    assert.equal(ran.body.exit_code, 3);
    const { final } = await api.destroyAndWait(id, true);
    assert.equal(final.body.status, 'stopped', final.text);

    await stack.events.waitFor((e) => e.detailType === 'sandbox.ended' && e.detail.sandbox_id === id);
    const events = eventsOf(id);
    assert.deepEqual(
      events.map((e) => e.detailType),
      ['sandbox.created', 'sandbox.ready', 'command.finished', 'sandbox.ended'],
    );
    assert.ok(events.every((e) => e.source === 'ephemeral-sandbox' && e.bus === stack.events.name));
    const [createdEvent, ready, finished, ended] = events as [BusEvent, BusEvent, BusEvent, BusEvent];
    assert.equal(createdEvent.detail.status, 'creating');
    assert.equal(ready.detail.status, 'ready');
    assert.equal(ready.detail.host_id, stack.hostId);
    assert.equal(finished.detail.command_id, ran.body.command_id);
    assert.equal(finished.detail.status, 'exited');
    assert.equal(finished.detail.exit_code, 3);
    assert.equal(finished.detail.origin, 'exec');
    assert.equal(typeof finished.detail.duration_ms, 'number');
    assert.equal(ended.detail.status, 'stopped');
    assert.equal(ended.detail.stop_reason, 'user_requested');
    assert.equal(typeof ended.detail.lifetime_ms, 'number');
    // Nothing the caller sent (command text, env values, labels) reaches the bus.
    assert.ok(!JSON.stringify(events).includes(secret), 'an event carries caller data');
    assert.ok(!events.some((e) => 'command' in e.detail || 'env' in e.detail || 'labels' in e.detail));
  });

  it('the same create, command and destroy write their metric lines, in order, in the environment namespace', async () => {
    const start = stack.telemetry.metrics.length;
    const user = uniqueUser('obs-metrics');
    const created = await api.createReady(user, { idle_timeout_seconds: 600 });
    assert.equal(created.status, 201, created.text);
    const id = created.body.sandbox_id as string;
    made.push(id);
    const ran = await api.exec(id, 'true');
    assert.equal(ran.status, 200, ran.text);
    const { final } = await api.destroyAndWait(id, true);
    assert.equal(final.body.status, 'stopped', final.text);

    const t = stack.telemetry;
    const createDispatch = await t.waitFor(metric('HostDispatch', { Verb: 'create', Outcome: 'ok' }, start));
    const creates = await t.waitFor(metric('SandboxCreates', { Outcome: 'ready', Start: 'cold' }, start));
    const createLatency = await t.waitFor(metric('CreateLatency', { Outcome: 'ready' }, start));
    const hotDown = await t.waitFor(metric('HotSyncBytes', { Direction: 'down' }, start));
    const execLatency = await t.waitFor(metric('ExecLatency', { Outcome: 'exited' }, start));
    const finished = await t.waitFor(metric('CommandsFinished', { Status: 'exited' }, start));
    const destroyDispatch = await t.waitFor(metric('HostDispatch', { Verb: 'destroy', Outcome: 'ok' }, start));
    const hotUp = await t.waitFor(metric('HotSyncBytes', { Direction: 'up' }, createLatency.seq));

    assert.equal(creates.source, 'create-sandbox');
    assert.equal(creates.value, 1);
    assert.equal(createLatency.unit, 'Milliseconds');
    assert.ok(createLatency.value > 0);
    assert.equal(hotDown.source, 'host-daemon');
    assert.equal(finished.source, 'host-daemon');
    assert.equal(execLatency.source, 'exec-sandbox');
    for (const m of [createDispatch, creates, createLatency, execLatency, finished, destroyDispatch, hotUp]) {
      assert.equal(m.namespace, 'EphemeralSandbox/local');
      assert.equal(m.dimensions.service, 'ephemeral-sandbox');
    }
    // In the order things happened: the create's dispatch before its answer, then the command, then the destroy.
    assert.ok(createDispatch.seq < creates.seq, 'create dispatch before the create metric');
    assert.ok(creates.seq < execLatency.seq, 'create before exec');
    assert.ok(finished.seq < destroyDispatch.seq, 'command before destroy');
    // Powertools' cold-start metric, from the middleware every function is wrapped in.
    await t.waitFor((m) => m.name === 'ColdStart' && m.dimensions.function_name === 'create-sandbox');
  });
});

describe('a host that fails', () => {
  it('is marked lost: the HostsLost metric, a host.lost event, and its sandbox ends with host_lost', async () => {
    const created = await api.createReady(uniqueUser('obs-lost'), { idle_timeout_seconds: 600 });
    assert.equal(created.status, 201, created.text);
    const id = created.body.sandbox_id as string;
    made.push(id);
    const start = stack.telemetry.metrics.length;

    await stack.stopDaemon();
    await waitFor(
      'the reaper to mark the host lost',
      async () => {
        await stack.runReaper();
        return (await getHost(stack.hostId))?.status === 'lost';
      },
      lostAfterSeconds * 1000 + 60_000,
      500,
    );

    const lost = await stack.telemetry.waitFor((m) => metric('HostsLost', {}, start)(m) && m.value >= 1);
    assert.ok(lost.value >= 1);
    const hostLost = await stack.events.waitFor((e) => e.detailType === 'host.lost' && e.detail.host_id === stack.hostId);
    assert.equal(typeof hostLost.detail.last_heartbeat_at, 'string');
    const ended = await stack.events.waitFor((e) => e.detailType === 'sandbox.ended' && e.detail.sandbox_id === id);
    assert.equal(ended.detail.stop_reason, 'host_lost');
    assert.equal(ended.detail.status, 'failed');
    assert.ok(hostLost.seq < ended.seq, 'the host is announced lost before its sandboxes end');

    // Back in service for the tests after this one.
    stack.startDaemon();
    await waitFor('the host to register again', async () => (await getHost(stack.hostId))?.status === 'active', 30_000);
  });
});

describe('publishing events', () => {
  const record = (id: string): SandboxRecord =>
    ({ sandbox_id: id, tenant_id: 't', user_id: 'u', host_id: stack.hostId, status: 'ready', created_at: new Date().toISOString() }) as SandboxRecord;

  it('retries an entry the bus refused', async () => {
    stack.events.refuseNextEntries(1);
    await publishEvent(sandboxEvent('sandbox.ready', record('sbx-retried')));
    const e = await stack.events.waitFor((x) => x.detail.sandbox_id === 'sbx-retried', 5_000);
    assert.equal(e.detailType, 'sandbox.ready');
  });

  it('reports an event the bus never takes (logged and counted) and does not throw to the caller', async () => {
    const start = stack.telemetry.metrics.length;
    stack.events.failNextCalls(100);
    try {
      await publishEvent(sandboxEvent('sandbox.ready', record('sbx-undelivered')));
    } finally {
      stack.events.failNextCalls(0);
    }
    const counted = await stack.telemetry.waitFor(metric('EventsNotDelivered', {}, start), 5_000);
    assert.equal(counted.value, 1);
    assert.ok(!stack.events.events.some((e) => e.detail.sandbox_id === 'sbx-undelivered'));
  });
});
