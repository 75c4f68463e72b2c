/**
 * The reaper's rules on a fake clock: `now` is a plain number, every row one
 * rule at one edge (just before, at, just after its deadline). No stack, no
 * I/O: test/lifecycle/reaper*.test.ts check the same rules end to end.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { HostRecord } from '../../lambdas/shared/host-store';
import {
  activityDeadline,
  createDeadline,
  createTimeoutSeconds,
  decide,
  endEventOf,
  execStartDeadline,
  failedShutdownRetry,
  hostIsLost,
  idleDeadline,
  isDue,
  settledDeadline,
  shutdownLease,
  signalled,
  type ReapAction,
  type ReapedRecord,
  type ReaperSettings,
} from '../../lambdas/shared/reaper-rules';

const T = Date.parse('2026-01-01T00:00:00.000Z');
const s = (seconds: number) => seconds * 1000;
const iso = (ms: number) => new Date(ms).toISOString();
const settings: ReaperSettings = { signalExecGraceSeconds: 30, shutdownRetrySeconds: 120, failedShutdownRetrySeconds: 10, hostLostAfterSeconds: 90 };
const lease = T + s(120);

/** A running sandbox, idle 5 min (its deadline exactly now), an hour of TTL left, on an active host. */
function sandbox(over: Partial<ReapedRecord> = {}): ReapedRecord {
  return {
    status: 'running',
    deadline_at: T,
    expires_at_ms: T + s(3600),
    idle_timeout_s: 300,
    last_activity_at: T - s(300),
    execs: {},
    updated_at: iso(T - s(300)),
    live_host_id: 'h-1',
    ...over,
  };
}

/** complete / error just recorded by signalEnd at `at`: due at once. */
function signalledAt(at: number, over: Partial<ReapedRecord> = {}): ReapedRecord {
  return sandbox({ status: 'shutting_down', stop_reason: 'completed', deadline_at: at, updated_at: iso(at), ...over });
}

const active: Pick<HostRecord, 'status'> = { status: 'active' };
const draining: Pick<HostRecord, 'status'> = { status: 'draining' };
const lost: Pick<HostRecord, 'status'> = { status: 'lost' };

interface Row {
  name: string;
  record: ReapedRecord | undefined;
  host?: Pick<HostRecord, 'status'>;
  now: number;
  want: ReapAction;
}

// biome-ignore format: one case per line reads as a table of the rules
const rows: Row[] = [
  // What the query found may have moved on by the time it is read again.
  { name: 'a record gone since the query: nothing', record: undefined, now: T, want: { kind: 'nothing', why: 'ended' } },
  { name: 'a record ended since the query (no deadline): nothing', record: sandbox({ deadline_at: undefined }), now: T, want: { kind: 'nothing', why: 'ended' } },
  { name: 'claim race: another reaper claimed it (deadline moved out by its lease): nothing', record: sandbox({ status: 'shutting_down', stop_reason: 'user_requested', deadline_at: lease }), now: T + s(1), want: { kind: 'nothing', why: 'not_due' } },
  { name: 'deadline 1 ms ahead: not due yet', record: sandbox({ deadline_at: T + 1 }), now: T, want: { kind: 'nothing', why: 'not_due' } },
  { name: 'a status the reaper has no rule for (a terminal record still indexed): nothing', record: sandbox({ status: 'stopped' }), now: T, want: { kind: 'nothing', why: 'no_rule' } },

  // Idle.
  { name: 'idle: activity 1 ms short of the idle timeout defers to the idle deadline', record: sandbox({ last_activity_at: T - s(300) + 1 }), host: active, now: T, want: { kind: 'defer', until: T + 1, busy: false } },
  { name: 'idle: at the idle deadline it ends (idle_timeout, with a shutdown lease)', record: sandbox(), host: active, now: T, want: { kind: 'end', reason: 'idle_timeout', leaseUntil: lease } },
  { name: 'idle: past the idle deadline it ends', record: sandbox({ last_activity_at: T - s(900) }), host: active, now: T, want: { kind: 'end', reason: 'idle_timeout', leaseUntil: lease } },
  { name: 'idle: a ready sandbox (never heartbeated) ends the same', record: sandbox({ status: 'ready' }), host: active, now: T, want: { kind: 'end', reason: 'idle_timeout', leaseUntil: lease } },
  { name: 'idle: an idle deadline past the TTL is cut to the TTL', record: sandbox({ last_activity_at: T, expires_at_ms: T + s(60) }), host: active, now: T, want: { kind: 'defer', until: T + s(60), busy: false } },

  // A running command keeps idleness away.
  { name: 'exec in flight (ends 1 ms from now): defers to its end, busy', record: sandbox({ execs: { c1: T + 1 } }), host: active, now: T, want: { kind: 'defer', until: T + 1, busy: true } },
  { name: 'execs in flight: defers to the last one to end', record: sandbox({ execs: { c1: T + s(10), c2: T + s(40) } }), host: active, now: T, want: { kind: 'defer', until: T + s(40), busy: true } },
  { name: 'exec in flight past the TTL: defers to the TTL, not past it', record: sandbox({ execs: { c1: T + s(7200) } }), host: active, now: T, want: { kind: 'defer', until: T + s(3600), busy: true } },
  { name: 'exec whose end is now is over: idle rules apply', record: sandbox({ execs: { c1: T } }), host: active, now: T, want: { kind: 'end', reason: 'idle_timeout', leaseUntil: lease } },

  // TTL.
  { name: 'TTL 1 ms ahead: idle rules still apply', record: sandbox({ expires_at_ms: T + 1, last_activity_at: T }), host: active, now: T, want: { kind: 'defer', until: T + 1, busy: false } },
  { name: 'TTL at now: ends (ttl_expired)', record: sandbox({ expires_at_ms: T }), host: active, now: T, want: { kind: 'end', reason: 'ttl_expired', leaseUntil: lease } },
  { name: 'TTL passed with an exec in flight: the TTL wins', record: sandbox({ expires_at_ms: T - 1, execs: { c1: T + s(60) } }), host: active, now: T, want: { kind: 'end', reason: 'ttl_expired', leaseUntil: lease } },
  { name: 'paused before its TTL: only the TTL applies (defers to it)', record: sandbox({ status: 'paused', last_activity_at: T - s(9000) }), host: active, now: T, want: { kind: 'defer', until: T + s(3600), busy: false } },
  { name: 'paused at its TTL: ends (ttl_expired)', record: sandbox({ status: 'paused', expires_at_ms: T }), host: active, now: T, want: { kind: 'end', reason: 'ttl_expired', leaseUntil: lease } },

  // Signalled (complete / error) and the grace its exec gets.
  { name: 'signalled with its exec running, 1 ms inside the grace: waits', record: signalledAt(T - s(30) + 1, { execs: { c1: T + s(5) } }), host: active, now: T, want: { kind: 'wait', why: 'signal_grace' } },
  { name: 'signalled with its exec running, at the end of the grace: driven (stopped)', record: signalledAt(T - s(30), { execs: { c1: T + s(5) } }), host: active, now: T, want: { kind: 'finish_shutdown', outcome: 'stopped' } },
  { name: 'signalled, no exec running: driven at once', record: signalledAt(T), host: active, now: T, want: { kind: 'finish_shutdown', outcome: 'stopped' } },
  { name: 'signalled by error with its exec running: waits', record: signalledAt(T, { stop_reason: 'agent_error', execs: { c1: T + s(5) } }), host: active, now: T, want: { kind: 'wait', why: 'signal_grace' } },
  { name: 'signalled whose deadline was re-set 1 s after (due within the second): still signalled', record: signalledAt(T - s(10), { deadline_at: T - s(9), execs: { c1: T + s(5) } }), host: active, now: T, want: { kind: 'wait', why: 'signal_grace' } },

  // Shutdown retries: a shutdown someone started and did not finish.
  { name: 'stuck shutdown (destroy whose lease ran out), exec still listed: driven again', record: sandbox({ status: 'shutting_down', stop_reason: 'user_requested', updated_at: iso(T - s(120)), deadline_at: T, execs: { c1: T + s(5) } }), host: active, now: T, want: { kind: 'finish_shutdown', outcome: 'stopped' } },
  { name: 'signalled, then claimed and failed (deadline past the signal): no grace, driven again', record: signalledAt(T - s(20), { deadline_at: T - s(10), execs: { c1: T + s(5) } }), host: active, now: T, want: { kind: 'finish_shutdown', outcome: 'stopped' } },
  { name: 'stuck idle shutdown: ends as expired', record: sandbox({ status: 'shutting_down', stop_reason: 'idle_timeout' }), host: active, now: T, want: { kind: 'finish_shutdown', outcome: 'expired' } },
  { name: 'stuck TTL shutdown: ends as expired', record: sandbox({ status: 'shutting_down', stop_reason: 'ttl_expired' }), host: active, now: T, want: { kind: 'finish_shutdown', outcome: 'expired' } },
  { name: 'container exited on its own (due now): ends as stopped', record: sandbox({ status: 'shutting_down', stop_reason: 'container_exited', updated_at: iso(T) }), host: active, now: T, want: { kind: 'finish_shutdown', outcome: 'stopped' } },

  // Stops and starts whose host never reported back.
  { name: 'pausing past its lease: the stop is asked again', record: sandbox({ status: 'pausing' }), host: active, now: T, want: { kind: 'redrive', verb: 'pause' } },
  { name: 'resuming past its lease: the start is asked again', record: sandbox({ status: 'resuming' }), host: active, now: T, want: { kind: 'redrive', verb: 'resume' } },

  // Creates.
  { name: 'a create that never finished: claimed, removed, failed', record: sandbox({ status: 'creating' }), host: active, now: T, want: { kind: 'fail_create' } },
  { name: 'a create no host took within the capacity wait: fails no_capacity', record: sandbox({ status: 'creating', waiting: 'capacity', live_host_id: undefined }), now: T, want: { kind: 'fail', reason: 'no_capacity' } },
  { name: 'a waiting create 1 ms before its wait ends: nothing', record: sandbox({ status: 'creating', waiting: 'capacity', live_host_id: undefined, deadline_at: T + 1 }), now: T, want: { kind: 'nothing', why: 'not_due' } },

  // Hosts.
  { name: 'lost host: its running sandbox fails host_lost, whatever its timers say', record: sandbox({ execs: { c1: T + s(60) } }), host: lost, now: T, want: { kind: 'fail', reason: 'host_lost' } },
  { name: 'lost host: a shutdown on it fails host_lost (no host to ask)', record: signalledAt(T), host: lost, now: T, want: { kind: 'fail', reason: 'host_lost' } },
  { name: 'lost host: a create on it fails host_lost', record: sandbox({ status: 'creating' }), host: lost, now: T, want: { kind: 'fail', reason: 'host_lost' } },
  { name: 'lost host but the sandbox no longer holds it: its own rules apply', record: sandbox({ live_host_id: undefined }), host: lost, now: T, want: { kind: 'end', reason: 'idle_timeout', leaseUntil: lease } },
  { name: 'lost host, sandbox not due: nothing (the lost-host sweep fails it)', record: sandbox({ deadline_at: T + 1 }), host: lost, now: T, want: { kind: 'nothing', why: 'not_due' } },
  { name: 'draining host: its sandboxes follow their own rules (the drain ends them)', record: sandbox({ execs: { c1: T + s(5) } }), host: draining, now: T, want: { kind: 'defer', until: T + s(5), busy: true } },
  { name: 'unknown host (no record): its sandboxes follow their own rules', record: sandbox(), now: T, want: { kind: 'end', reason: 'idle_timeout', leaseUntil: lease } },
];

describe('decide: what the reaper does with a due sandbox', () => {
  for (const row of rows) {
    it(row.name, () => {
      assert.deepEqual(decide(row.record, row.host, row.now, settings), row.want);
    });
  }

  it('takes its grace and lease from the settings it is given', () => {
    const longer = { ...settings, signalExecGraceSeconds: 60, shutdownRetrySeconds: 300 };
    assert.deepEqual(decide(signalledAt(T - s(30), { execs: { c1: T + s(5) } }), active, T, longer), { kind: 'wait', why: 'signal_grace' });
    assert.deepEqual(decide(sandbox(), active, T, longer), { kind: 'end', reason: 'idle_timeout', leaseUntil: T + s(300) });
  });
});

describe('deadline rules', () => {
  const r = { idle_timeout_s: 300, expires_at_ms: T + s(3600), execs: { c1: T + s(600), c2: T + s(100), old: T - 1 } };

  it('idle deadline: activity plus the idle timeout, never past the TTL', () => {
    assert.equal(idleDeadline(r, T), T + s(300));
    assert.equal(idleDeadline(r, T + s(3400)), T + s(3600));
  });

  it('activity deadline: covers the execs in flight (within the TTL), except the one ending', () => {
    assert.equal(activityDeadline(r, T), T + s(600));
    assert.equal(activityDeadline(r, T, 'c1'), T + s(300), 'c2 ends before the idle deadline');
    assert.equal(activityDeadline({ ...r, execs: { long: T + s(9999) } }, T), T + s(3600));
    assert.equal(activityDeadline({ ...r, execs: {} }, T), T + s(300));
    assert.equal(activityDeadline({ idle_timeout_s: 300, expires_at_ms: T + s(3600) }, T), T + s(300), 'a record without execs');
  });

  it('exec start deadline: covers the new exec within the TTL, at least the idle deadline', () => {
    assert.equal(execStartDeadline(r, T + s(1000), T), T + s(1000));
    assert.equal(execStartDeadline(r, T + s(10), T), T + s(300));
    assert.equal(execStartDeadline(r, T + s(9999), T), T + s(3600));
  });

  it('settled deadline: paused keeps only the TTL, ready and running the activity deadline', () => {
    assert.equal(settledDeadline(r, 'paused', T), T + s(3600));
    assert.equal(settledDeadline(r, 'running', T), T + s(600));
    assert.equal(settledDeadline(r, 'ready', T), T + s(600));
  });

  it('create deadline: the create timeout on a host, the capacity wait without one', () => {
    assert.equal(createDeadline(T, { onHost: true, capacityWaitSeconds: 600 }), T + s(createTimeoutSeconds));
    assert.equal(createDeadline(T, { onHost: false, capacityWaitSeconds: 600 }), T + s(600));
  });

  it('leases: a claimed shutdown is due again after its lease, a failed one sooner', () => {
    assert.equal(shutdownLease(T, settings), T + s(120));
    assert.equal(failedShutdownRetry(T, settings), T + s(10));
    assert.ok(failedShutdownRetry(T, settings) < shutdownLease(T, settings));
  });

  it("end event: the reaper's own ends are expired, every other end stopped", () => {
    assert.equal(endEventOf('idle_timeout'), 'expired');
    assert.equal(endEventOf('ttl_expired'), 'expired');
    for (const reason of ['user_requested', 'completed', 'agent_error', 'container_exited', 'host_draining', undefined] as const) {
      assert.equal(endEventOf(reason), 'stopped', String(reason));
    }
  });

  it('due: at its deadline and after, not 1 ms before, never once ended', () => {
    assert.equal(isDue({ deadline_at: T }, T), true);
    assert.equal(isDue({ deadline_at: T - 1 }, T), true);
    assert.equal(isDue({ deadline_at: T + 1 }, T), false);
    assert.equal(isDue({}, T), false);
  });

  it('signalled: only complete / error whose deadline is still the one they set', () => {
    assert.equal(signalled(signalledAt(T)), true);
    assert.equal(signalled(signalledAt(T, { deadline_at: T + 1000 })), true);
    assert.equal(signalled(signalledAt(T, { deadline_at: T + 1001 })), false);
    assert.equal(signalled(signalledAt(T, { stop_reason: 'user_requested' })), false);
    assert.equal(signalled(signalledAt(T, { deadline_at: undefined })), false);
  });
});

describe('lost hosts', () => {
  const cutoff = T - s(90);
  it('an active or draining host is lost once its last heartbeat is older than hostLostAfterSeconds', () => {
    assert.equal(hostIsLost({ status: 'active', last_heartbeat_at: cutoff - 1 }, T, settings), true);
    assert.equal(hostIsLost({ status: 'active', last_heartbeat_at: cutoff }, T, settings), false);
    assert.equal(hostIsLost({ status: 'draining', last_heartbeat_at: cutoff - 1 }, T, settings), true);
    assert.equal(hostIsLost({ status: 'draining', last_heartbeat_at: cutoff + 1 }, T, settings), false);
  });

  it('a host already lost is not lost again', () => {
    assert.equal(hostIsLost({ status: 'lost', last_heartbeat_at: cutoff - s(1000) }, T, settings), false);
  });
});
