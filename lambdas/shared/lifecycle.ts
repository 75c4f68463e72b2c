/**
 * Lifecycle calls: heartbeat, complete, error, timeout refresh, pause and
 * resume. Complete and error record why and hand the graceful end
 * to the reaper (due at once), so the caller inside the sandbox gets its answer
 * before its container stops.
 */
import { config } from './config';
import { ApiError, invalidState } from './errors';
import { hostFailure, hosts } from './host-calls';
import { HostDispatchError } from './host-dispatch';
import { isActive, isSettled, isTerminal, settledStatuses } from './sandbox-state';
import { toView, type SandboxRecord, type SandboxView } from './sandbox-record';
import { activityDeadline, createTimeoutSeconds, idleDeadline, pauseResumeLease, settledDeadline } from './reaper-rules';
import { getTenantSandbox, latest, transition, TransitionRejectedError, updateSandbox } from './sandbox-store';
import { storageFor, waitSecondsUntil } from './sandboxes';
import { placeMovedSandbox, resumeRequestFor } from './relocation';

function rejected(err: unknown, action: string): never {
  if (err instanceof TransitionRejectedError) {
    throw invalidState(`sandbox ${err.sandboxId} is ${err.current?.status ?? 'gone'}; cannot ${action}`);
  }
  throw err;
}

export async function heartbeat(tenantId: string, sandboxId: string): Promise<SandboxView> {
  const r = await getTenantSandbox(tenantId, sandboxId);
  if (!isActive(r.status)) throw invalidState(`sandbox ${sandboxId} is ${r.status}; heartbeats need a ready or running sandbox`);
  const now = Date.now();
  const set = { last_activity_at: now, heartbeat_at: new Date(now).toISOString(), deadline_at: activityDeadline(r, now) };
  try {
    // The first heartbeat moves ready -> running; later ones only refresh.
    const updated =
      r.status === 'ready'
        ? await transition(sandboxId, 'heartbeat', { set }).catch((err) => {
            if (err instanceof TransitionRejectedError && err.current?.status === 'running') {
              return updateSandbox(sandboxId, 'heartbeat', { set }, ['running']);
            }
            throw err;
          })
        : await updateSandbox(sandboxId, 'heartbeat', { set }, ['running']);
    return toView(updated);
  } catch (err) {
    rejected(err, 'heartbeat');
  }
}

/** complete / error: record the outcome and end the sandbox gracefully (via the reaper, due now). */
export async function signalEnd(
  tenantId: string,
  sandboxId: string,
  outcome: { kind: 'completed'; result?: Record<string, unknown> } | { kind: 'agent_error'; error: string; details?: Record<string, unknown> },
): Promise<SandboxView> {
  const r = await getTenantSandbox(tenantId, sandboxId);
  if (r.status === 'shutting_down' || isTerminal(r.status)) return toView(r);
  try {
    const updated = await transition(sandboxId, 'begin_shutdown', {
      set: {
        stop_reason: outcome.kind,
        ...(outcome.kind === 'completed'
          ? outcome.result
            ? { result: outcome.result }
            : {}
          : { stop_detail: outcome.error, ...(outcome.details ? { result: { error_details: outcome.details } } : {}) }),
        deadline_at: Date.now(),
      },
    });
    return toView(updated);
  } catch (err) {
    if (err instanceof TransitionRejectedError && err.current) return toView(err.current);
    throw err;
  }
}

/** Refreshes the idle timer; optionally changes the idle timeout or the TTL (capped by configuration). */
export async function refreshTimeout(tenantId: string, sandboxId: string, body: { idle_timeout_seconds?: number; ttl_seconds?: number }): Promise<SandboxView> {
  const r = await getTenantSandbox(tenantId, sandboxId);
  if (!isSettled(r.status)) throw invalidState(`sandbox ${sandboxId} is ${r.status}; cannot change its timeout`);
  const maxTtl = config().limits.maxTtlSeconds;
  const createdMs = Date.parse(r.created_at);
  const ttl = body.ttl_seconds ?? r.config.ttl_seconds;
  if (ttl > maxTtl) throw new ApiError(400, 'validation_error', `ttl_seconds: at most ${maxTtl}`);
  const expiresMs = createdMs + ttl * 1000;
  const now = Date.now();
  if (expiresMs <= now) throw new ApiError(400, 'validation_error', 'ttl_seconds: would end the sandbox in the past; destroy it instead');
  const idle = body.idle_timeout_seconds ?? r.idle_timeout_s;
  const next: SandboxRecord = { ...r, idle_timeout_s: idle, expires_at_ms: expiresMs };
  try {
    const updated = await updateSandbox(
      sandboxId,
      'timeout',
      {
        set: {
          idle_timeout_s: idle,
          expires_at_ms: expiresMs,
          expires_at: new Date(expiresMs).toISOString(),
          config: { ...r.config, ttl_seconds: ttl, idle_timeout_seconds: idle },
          last_activity_at: now,
          deadline_at: settledDeadline(next, r.status, now),
        },
      },
      settledStatuses,
    );
    return toView(updated);
  } catch (err) {
    rejected(err, 'change its timeout');
  }
}

/**
 * pause: the container stops (CPU and memory freed), its filesystem and home
 * stay. `done` when it is paused before `deadline`; else it is `pausing` and
 * its host records `paused` (or `ready` again, if the pause failed).
 */
export async function pauseSandbox(tenantId: string, sandboxId: string, deadline: number): Promise<{ done: boolean; view: SandboxView }> {
  const r = await getTenantSandbox(tenantId, sandboxId);
  if (r.status === 'paused') return { done: true, view: toView(r) };
  if (r.status === 'pausing') return { done: false, view: toView(r) };
  if (!isActive(r.status)) throw invalidState(`sandbox ${sandboxId} is ${r.status}; only a ready or running sandbox can be paused`);
  let pausing: SandboxRecord;
  try {
    pausing = await transition(sandboxId, 'pause', { set: { deadline_at: pauseResumeLease(Date.now()) } });
  } catch (err) {
    rejected(err, 'pause');
  }
  let notKept: string[] = [];
  try {
    const paused = await hosts().dispatch(
      r.host_id,
      'pause',
      { sandboxId, storage: storageFor(r.tenant_id, r.user_id) },
      { timeoutSeconds: 120, waitSeconds: waitSecondsUntil(deadline) },
    );
    notKept = paused.tmp?.warnings ?? [];
  } catch (err) {
    if (err instanceof HostDispatchError && err.code === 'still_running') return { done: false, view: toView((await latest(sandboxId)) ?? pausing) };
    // The host keeps the container running when its pause fails (and records that); a pause it never got is undone here.
    const after = await settleOrUndo(sandboxId, 'pause_failed', { last_activity_at: Date.now(), deadline_at: idleDeadline(pausing, Date.now()) });
    throw endedMeanwhile(after, 'pause') ?? hostFailure(err, 'pause');
  }
  // What of /tmp could not be kept is said on the record (the host records it too, for a pause it finished later).
  const after = await settleOrUndo(sandboxId, 'paused', { deadline_at: pausing.expires_at_ms, ...(notKept.length > 0 ? { tmp_not_kept: notKept } : {}) });
  return { done: after.status === 'paused', view: toView(after) };
}

/**
 * resume: the paused container runs again with every file it had. `done`
 * when it is ready before `deadline`; else it is `resuming` and its host
 * records `ready` (or `paused` again, if the resume failed).
 */
export async function resumeSandbox(tenantId: string, sandboxId: string, deadline: number): Promise<{ done: boolean; view: SandboxView }> {
  const r = await getTenantSandbox(tenantId, sandboxId);
  if (isActive(r.status)) return { done: true, view: toView(r) };
  if (r.status === 'resuming') return { done: false, view: toView(r) };
  if (r.status !== 'paused') throw invalidState(`sandbox ${sandboxId} is ${r.status}; only a paused sandbox can be resumed`);
  let resuming: SandboxRecord;
  const resumingUntil = pauseResumeLease(Date.now());
  if (!r.host_id) {
    // Moved off a drained host while paused: placed like a create, made again from its staged state.
    resuming = await placeMovedSandbox(r, resumingUntil);
  } else {
    try {
      // Only on the host it was read on: a drain that moved it off meanwhile leaves it to be placed again.
      resuming = await transition(sandboxId, 'resume', {
        set: { deadline_at: resumingUntil },
        condition: 'host_id = :seenHost',
        values: { ':seenHost': r.host_id },
      });
    } catch (err) {
      if (err instanceof TransitionRejectedError && err.current?.status === 'paused' && !err.current.host_id)
        return resumeSandbox(tenantId, sandboxId, deadline);
      rejected(err, 'resume');
    }
  }
  let notRestored: string[] = [];
  try {
    const resumed = await hosts().dispatch(
      resuming.host_id,
      'resume',
      resumeRequestFor(resuming),
      // Made again elsewhere (an image pull, the home synced down) takes as long as a create may.
      { timeoutSeconds: resuming.paused_state ? createTimeoutSeconds : 120, waitSeconds: waitSecondsUntil(deadline) },
    );
    notRestored = resumed.tmp?.warnings ?? [];
  } catch (err) {
    if (err instanceof HostDispatchError && err.code === 'still_running') return { done: false, view: toView((await latest(sandboxId)) ?? resuming) };
    const after = await settleOrUndo(sandboxId, 'resume_failed', { deadline_at: resuming.expires_at_ms });
    throw endedMeanwhile(after, 'resume') ?? hostFailure(err, 'resume');
  }
  const now = Date.now();
  const after = await settleOrUndo(
    sandboxId,
    'resumed',
    {
      last_activity_at: now,
      deadline_at: idleDeadline(resuming, now),
      ...(notRestored.length > 0 ? { tmp_not_restored: notRestored } : {}),
    },
    ['paused_state'],
  );
  return { done: isActive(after.status), view: toView(after) };
}

/**
 * A pause or resume whose host call failed because a destroy ended the
 * sandbox meanwhile (its container was gone when the call arrived) is the
 * caller's race, answered 409 with the status it ended in, not a host error.
 */
function endedMeanwhile(after: SandboxRecord, action: string): ApiError | undefined {
  if (after.status !== 'shutting_down' && !isTerminal(after.status)) return undefined;
  return invalidState(`sandbox ${after.sandbox_id} is ${after.status}; cannot ${action}`);
}

/**
 * Applies the outcome of a pause or resume the host finished (the host records
 * it too; whichever lands first wins), answering the record as it stands.
 */
async function settleOrUndo(
  sandboxId: string,
  event: 'paused' | 'pause_failed' | 'resumed' | 'resume_failed',
  set: Record<string, unknown>,
  remove: readonly string[] = [],
): Promise<SandboxRecord> {
  try {
    return await transition(sandboxId, event, { set, ...(remove.length > 0 ? { remove } : {}) });
  } catch (err) {
    if (err instanceof TransitionRejectedError && err.current) return err.current;
    throw err;
  }
}
