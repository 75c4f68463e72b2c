/**
 * The lifecycle's timing rules, as pure functions of a record, its host and
 * the clock: when a sandbox is due (idle, TTL, a create or a shutdown that
 * never finished), and what the reaper does with one it finds due. No I/O
 * here: reaper.ts reads, calls `decide()` and applies the action with
 * conditional writes, so these rules are tested on a fake clock in
 * milliseconds (test/unit/reaper-rules.test.ts) instead of on a live stack.
 */
import type { HostRecord } from './host-store';
import type { SandboxRecord } from './sandbox-record';
import type { StopReason } from './sandbox-state';

/** How long a host may take to create a sandbox before the reaper cleans up. */
export const createTimeoutSeconds = 120;
/** How long a shutdown may stay unfinished (a claim's lease) before the reaper drives it again. */
export const shutdownRetrySeconds = 120;
/** How long a pause or resume may stay unfinished before the reaper drives it again. */
const pauseResumeRetrySeconds = 120;
/** How long a complete/error waits for the execs still running in the sandbox (the one that sent it, usually). */
export const signalExecGraceSeconds = 30;
/** How soon a shutdown that failed on the host is tried again (the claim's lease is longer). */
export const failedShutdownRetrySeconds = 10;

/** What the rules need from configuration (defaults above; HOST_LOST_AFTER_SECONDS from config). */
export interface ReaperSettings {
  signalExecGraceSeconds: number;
  shutdownRetrySeconds: number;
  failedShutdownRetrySeconds: number;
  hostLostAfterSeconds: number;
}

/** The fields of a record the rules read. */
export type ReapedRecord = Pick<
  SandboxRecord,
  'status' | 'deadline_at' | 'expires_at_ms' | 'idle_timeout_s' | 'last_activity_at' | 'execs' | 'stop_reason' | 'updated_at' | 'waiting' | 'live_host_id'
>;

/** What the reaper does with one candidate of the deadline index. */
export type ReapAction =
  /** Nothing: it ended, its deadline moved past now since the query (activity, or another reaper's claim), or the reaper has no rule for its status. */
  | { kind: 'nothing'; why: 'ended' | 'not_due' | 'no_rule' }
  /** Fail it where it stands: its host is lost (no host to ask), or no host took its create within the capacity wait. */
  | { kind: 'fail'; reason: Extract<StopReason, 'host_lost' | 'no_capacity'> }
  /** A create that never finished: claim it, remove what the host made, fail it (create_failed). */
  | { kind: 'fail_create' }
  /** complete/error was sent by an exec still running: it gets its answer first; looked at again next run. */
  | { kind: 'wait'; why: 'signal_grace' }
  /** A due shutdown (signalled, or a try that did not finish): claim it and end it on its host. */
  | { kind: 'finish_shutdown'; outcome: EndEvent }
  /** A pause or resume whose host never reported back: claim it and ask the host again. */
  | { kind: 'redrive'; verb: 'pause' | 'resume' }
  /** End it now (TTL, or idle with no activity since it was read); a shutdown left unfinished is due again at `leaseUntil`. */
  | { kind: 'end'; reason: Extract<StopReason, 'ttl_expired' | 'idle_timeout'>; leaseUntil: number }
  /** Not yet: its deadline moves to `until`; `busy` when an exec in flight is what holds it. */
  | { kind: 'defer'; until: number; busy: boolean };

/** The terminal event a shutdown ends with: the reaper's own ends are `expired`, every other end `stopped`. */
export type EndEvent = 'stopped' | 'expired';

export function endEventOf(stopReason: StopReason | undefined): EndEvent {
  return stopReason === 'idle_timeout' || stopReason === 'ttl_expired' ? 'expired' : 'stopped';
}

/** Idle deadline after activity at `at`, never past the TTL. */
export function idleDeadline(r: Pick<SandboxRecord, 'idle_timeout_s' | 'expires_at_ms'>, at: number): number {
  return Math.min(at + r.idle_timeout_s * 1000, r.expires_at_ms);
}

/** When each exec still in flight at `now` must have ended. */
function execsInFlight(r: Pick<SandboxRecord, 'execs'>, now: number, except?: string): number[] {
  return Object.entries(r.execs ?? {})
    .filter(([id, ends]) => id !== except && ends > now)
    .map(([, ends]) => ends);
}

/**
 * The deadline after activity at `now` (heartbeat, file call, timeout
 * refresh, an exec ending: `except` is that exec): the idle deadline, or
 * later while an exec in flight runs, never past the TTL.
 */
export function activityDeadline(r: Pick<SandboxRecord, 'idle_timeout_s' | 'expires_at_ms' | 'execs'>, now: number, except?: string): number {
  return Math.max(idleDeadline(r, now), ...execsInFlight(r, now, except).map((ends) => Math.min(ends, r.expires_at_ms)));
}

/**
 * The deadline when an exec starts at `now` and must end by `endsBy`: it
 * covers that exec (within the TTL). Other execs in flight are not counted:
 * the reaper re-checks `execs` before it ends anything and defers to them.
 */
export function execStartDeadline(r: Pick<SandboxRecord, 'idle_timeout_s' | 'expires_at_ms'>, endsBy: number, now: number): number {
  return Math.max(idleDeadline(r, now), Math.min(endsBy, r.expires_at_ms));
}

/** The deadline of a sandbox that just settled in `status` (paused: only its TTL applies). */
export function settledDeadline(
  r: Pick<SandboxRecord, 'idle_timeout_s' | 'expires_at_ms' | 'execs'>,
  status: 'ready' | 'running' | 'paused',
  now: number,
): number {
  return status === 'paused' ? r.expires_at_ms : activityDeadline(r, now);
}

/** The deadline of a create just asked for: the create timeout on a host, the capacity wait without one. */
export function createDeadline(now: number, o: { onHost: boolean; capacityWaitSeconds: number }): number {
  return now + (o.onHost ? createTimeoutSeconds : o.capacityWaitSeconds) * 1000;
}

/** A claim's lease: whoever drives a shutdown has until then before the reaper takes it over. */
export function shutdownLease(now: number, s: Pick<ReaperSettings, 'shutdownRetrySeconds'> = { shutdownRetrySeconds }): number {
  return now + s.shutdownRetrySeconds * 1000;
}

/** A pause or resume in progress: the reaper drives it again after this. */
export function pauseResumeLease(now: number): number {
  return now + pauseResumeRetrySeconds * 1000;
}

/** Where a claimed shutdown that failed on its host goes: due again soon, not after the whole lease. */
export function failedShutdownRetry(now: number, s: Pick<ReaperSettings, 'failedShutdownRetrySeconds'>): number {
  return now + s.failedShutdownRetrySeconds * 1000;
}

/** A shutdown the sandbox asked for (complete / error) and nobody has started driving yet (its deadline is still the one signalEnd set). */
export function signalled(r: Pick<SandboxRecord, 'stop_reason' | 'deadline_at' | 'updated_at'>): boolean {
  return (r.stop_reason === 'completed' || r.stop_reason === 'agent_error') && r.deadline_at !== undefined && r.deadline_at <= Date.parse(r.updated_at) + 1000;
}

/** Whether a record read again is still due: its deadline (still there: it has not ended) is not past `now`. */
export function isDue(r: Pick<SandboxRecord, 'deadline_at'>, now: number): boolean {
  return r.deadline_at !== undefined && r.deadline_at <= now;
}

/** Heartbeats before this cutoff mean a host is gone (a daemon that restarts is back long before). */
export function lostHostCutoff(now: number, s: Pick<ReaperSettings, 'hostLostAfterSeconds'>): number {
  return now - s.hostLostAfterSeconds * 1000;
}

/** Whether an active or draining host stopped heartbeating long enough to be lost. */
export function hostIsLost(host: Pick<HostRecord, 'status' | 'last_heartbeat_at'>, now: number, s: Pick<ReaperSettings, 'hostLostAfterSeconds'>): boolean {
  return (host.status === 'active' || host.status === 'draining') && host.last_heartbeat_at < lostHostCutoff(now, s);
}

/**
 * What the reaper does with a candidate, read again just now: `host` is its
 * host's record (undefined when it holds no host, or the host is unknown).
 * Every action is applied with a conditional write on the deadline or the
 * activity it read, so a race with another reaper or a caller is lost cleanly.
 */
export function decide(r: ReapedRecord | undefined, host: Pick<HostRecord, 'status'> | undefined, now: number, s: ReaperSettings): ReapAction {
  if (!r || r.deadline_at === undefined) return { kind: 'nothing', why: 'ended' };
  // Moved on since the query: activity pushed it out, or another reaper (or a destroy) claimed it.
  if (r.deadline_at > now) return { kind: 'nothing', why: 'not_due' };
  // Missed by the run that marked its host lost (e.g. that run was cut short): no host to ask.
  if (r.live_host_id !== undefined && host?.status === 'lost') return { kind: 'fail', reason: 'host_lost' };

  switch (r.status) {
    case 'creating':
      // No host took it within the capacity wait: nothing exists on any host.
      if (r.waiting) return { kind: 'fail', reason: 'no_capacity' };
      return { kind: 'fail_create' };
    case 'shutting_down':
      if (signalled(r) && execsInFlight(r, now).length > 0 && now - Date.parse(r.updated_at) < s.signalExecGraceSeconds * 1000) {
        return { kind: 'wait', why: 'signal_grace' };
      }
      return { kind: 'finish_shutdown', outcome: endEventOf(r.stop_reason) };
    case 'pausing':
      return { kind: 'redrive', verb: 'pause' };
    case 'resuming':
      return { kind: 'redrive', verb: 'resume' };
    case 'ready':
    case 'running':
    case 'paused': {
      if (r.expires_at_ms <= now) return { kind: 'end', reason: 'ttl_expired', leaseUntil: shutdownLease(now, s) };
      if (r.status === 'paused') return { kind: 'defer', until: r.expires_at_ms, busy: false };
      const inFlight = execsInFlight(r, now);
      // Never reap a sandbox for idleness while an exec runs.
      if (inFlight.length > 0) return { kind: 'defer', until: Math.min(Math.max(...inFlight), r.expires_at_ms), busy: true };
      const idleEnds = idleDeadline(r, r.last_activity_at);
      if (idleEnds > now) return { kind: 'defer', until: idleEnds, busy: false };
      return { kind: 'end', reason: 'idle_timeout', leaseUntil: shutdownLease(now, s) };
    }
    default:
      return { kind: 'nothing', why: 'no_rule' };
  }
}
