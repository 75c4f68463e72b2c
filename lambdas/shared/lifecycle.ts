/**
 * Lifecycle calls: heartbeat, complete, error, timeout refresh, stop (pause)
 * and start (resume). Complete and error record why and hand the graceful end
 * to the reaper (due at once), so the caller inside the sandbox gets its answer
 * before its container stops.
 */
import { config } from './config';
import { ApiError, invalidState } from './errors';
import { hostFailure, hosts } from './host-calls';
import { isActive, isTerminal } from './sandbox-state';
import { idleDeadline, toView, type SandboxRecord, type SandboxView } from './sandbox-record';
import { getTenantSandbox, transition, TransitionRejectedError, updateSandbox } from './sandbox-store';
import { storageFor } from './sandboxes';

/** Deadline that keeps in-flight execs covered. */
function activityDeadline(r: SandboxRecord, now: number): number {
  const inFlight = Object.values(r.execs ?? {}).filter((ends) => ends > now);
  return Math.max(idleDeadline(r, now), ...inFlight.map((ends) => Math.min(ends, r.expires_at_ms)));
}

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
        ? await transition(sandboxId, 'heartbeat', 'running', { set }).catch((err) => {
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
    const updated = await transition(sandboxId, 'begin_shutdown', 'shutting_down', {
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
export async function refreshTimeout(
  tenantId: string,
  sandboxId: string,
  body: { idle_timeout_seconds?: number; ttl_seconds?: number },
): Promise<SandboxView> {
  const r = await getTenantSandbox(tenantId, sandboxId);
  if (!isActive(r.status) && r.status !== 'paused') throw invalidState(`sandbox ${sandboxId} is ${r.status}; cannot change its timeout`);
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
          deadline_at: r.status === 'paused' ? expiresMs : activityDeadline(next, now),
        },
      },
      ['ready', 'running', 'paused'],
    );
    return toView(updated);
  } catch (err) {
    rejected(err, 'change its timeout');
  }
}

/** stop: the container stops (CPU and memory freed), its filesystem and home stay. */
/** A stop or start answer: the sandbox, and what of its /tmp did not come through, said where the caller sees it. */
export type PowerView = SandboxView & { tmp_not_kept?: string[]; tmp_not_restored?: string[] };

export async function pauseSandbox(tenantId: string, sandboxId: string): Promise<PowerView> {
  const r = await getTenantSandbox(tenantId, sandboxId);
  if (r.status === 'paused') return toView(r);
  if (!isActive(r.status)) throw invalidState(`sandbox ${sandboxId} is ${r.status}; only a ready or running sandbox can be stopped`);
  let notKept: string[] = [];
  try {
    const paused = await hosts().dispatch(r.host_id, 'pause', { sandboxId, storage: storageFor(r.tenant_id, r.user_id) }, { timeoutSeconds: 120 });
    notKept = paused.tmp?.warnings ?? [];
  } catch (err) {
    throw hostFailure(err, 'stop');
  }
  try {
    // While paused only the TTL applies.
    const view = toView(await transition(sandboxId, 'pause', 'paused', { set: { deadline_at: r.expires_at_ms } }));
    return notKept.length > 0 ? { ...view, tmp_not_kept: notKept } : view;
  } catch (err) {
    rejected(err, 'stop');
  }
}

/** start: the stopped container runs again with every file it had. */
export async function resumeSandbox(tenantId: string, sandboxId: string): Promise<PowerView> {
  const r = await getTenantSandbox(tenantId, sandboxId);
  if (isActive(r.status)) return toView(r);
  if (r.status !== 'paused') throw invalidState(`sandbox ${sandboxId} is ${r.status}; only a stopped (paused) sandbox can be started`);
  let notRestored: string[] = [];
  try {
    const resumed = await hosts().dispatch(r.host_id, 'resume', { sandboxId, storage: storageFor(r.tenant_id, r.user_id) }, { timeoutSeconds: 120 });
    notRestored = resumed.tmp?.warnings ?? [];
  } catch (err) {
    throw hostFailure(err, 'start');
  }
  const now = Date.now();
  try {
    const view = toView(await transition(sandboxId, 'resume', 'ready', { set: { last_activity_at: now, deadline_at: idleDeadline(r, now) } }));
    return notRestored.length > 0 ? { ...view, tmp_not_restored: notRestored } : view;
  } catch (err) {
    rejected(err, 'start');
  }
}
