/**
 * Lifecycle events carry ids, statuses, reasons, codes, times and durations,
 * and nothing a caller sent; each state-machine change publishes at most one.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { CommandRecord } from '../../lambdas/shared/command-state';
import { commandFinishedEvent, eventForTransition, hostLostEvent, sandboxEvent } from '../../lambdas/shared/events';
import type { SandboxRecord } from '../../lambdas/shared/sandbox-record';
import { sandboxStatuses, type SandboxEvent } from '../../lambdas/shared/sandbox-state';

const secret = 'caller-secret-value';

const sandbox = {
  sandbox_id: 'sbx-1',
  tenant_id: 'acme',
  user_id: 'user-1',
  tenant_user: 'acme#user-1',
  status: 'stopped',
  host_id: 'i-0abc',
  created_at: '2025-01-01T00:00:00.000Z',
  updated_at: '2025-01-01T00:01:00.000Z',
  stop_reason: 'agent_error',
  stop_detail: secret,
  result: { answer: secret },
  config: { env: { TOKEN: secret }, labels: { note: secret } },
  token_hash: secret,
  cwd: `/home/agent/${secret}`,
} as unknown as SandboxRecord;

const command = {
  sandbox_id: 'sbx-1',
  command_id: 'cmd-1',
  tenant_id: 'acme',
  host_id: 'i-0abc',
  origin: 'commands',
  status: 'exited',
  command: `echo ${secret}`,
  env: { TOKEN: secret },
  stdin: secret,
  cwd: `/tmp/${secret}`,
  final_cwd: `/tmp/${secret}`,
  end_detail: secret,
  exit_code: 2,
  created_at: '2025-01-01T00:00:00.000Z',
  started_at: '2025-01-01T00:00:00.100Z',
  ended_at: '2025-01-01T00:00:01.100Z',
  duration_ms: 1000,
  stdout_bytes: 10,
  stderr_bytes: 0,
} as unknown as CommandRecord;

describe('lifecycle events', () => {
  it('sandbox.ended carries ids, status, stop_reason and lifetime, and no caller data', () => {
    const e = sandboxEvent('sandbox.ended', sandbox, new Date('2025-01-01T00:02:00.000Z'));
    assert.deepEqual(e.detail, {
      sandbox_id: 'sbx-1',
      tenant_id: 'acme',
      user_id: 'user-1',
      host_id: 'i-0abc',
      status: 'stopped',
      at: '2025-01-01T00:02:00.000Z',
      created_at: '2025-01-01T00:00:00.000Z',
      stop_reason: 'agent_error',
      lifetime_ms: 120_000,
    });
  });

  it('command.finished carries ids, status, exit code and durations, never the command, its env, stdin or cwd', () => {
    const e = commandFinishedEvent(command, new Date('2025-01-01T00:00:02.000Z'));
    assert.equal(e.type, 'command.finished');
    assert.ok(!JSON.stringify(e).includes(secret), JSON.stringify(e));
    assert.equal(e.detail.sandbox_id, 'sbx-1');
    assert.equal((e.detail as { exit_code: number }).exit_code, 2);
    assert.equal((e.detail as { duration_ms: number }).duration_ms, 1000);
    assert.equal((e.detail as { total_ms: number }).total_ms, 1100);
  });

  it('host.lost names the host and when it last heartbeat', () => {
    const e = hostLostEvent('i-0abc', Date.parse('2025-01-01T00:00:00.000Z'), new Date('2025-01-01T00:02:00.000Z'));
    assert.deepEqual(e.detail, { host_id: 'i-0abc', at: '2025-01-01T00:02:00.000Z', last_heartbeat_at: '2025-01-01T00:00:00.000Z' });
  });

  it('maps the state machine: ready on created, paused, resumed, and ended on every way into a terminal status', () => {
    const expected: Partial<Record<SandboxEvent, string>> = {
      created: 'sandbox.ready',
      paused: 'sandbox.paused',
      resumed: 'sandbox.resumed',
      stopped: 'sandbox.ended',
      expired: 'sandbox.ended',
      fail: 'sandbox.ended',
    };
    const all: SandboxEvent[] = [
      'created',
      'heartbeat',
      'begin_shutdown',
      'stopped',
      'expired',
      'fail',
      'pause',
      'paused',
      'pause_failed',
      'resume',
      'resumed',
      'resume_failed',
    ];
    for (const event of all) assert.equal(eventForTransition(event), expected[event], event);
    assert.ok(sandboxStatuses.includes('stopped'));
  });
});
