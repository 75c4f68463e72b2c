/**
 * What a host records after it acted on a sandbox: the host, not the request
 * that asked, moves the record on (creating -> ready, pausing -> paused,
 * resuming -> ready, shutting_down -> stopped | expired), so work that takes
 * longer than API Gateway's 29 s still lands, and a request cut off at its
 * timeout leaves nothing half-done. Each write is the state machine's
 * conditional transition: it only applies from the status the work was asked
 * in, so a destroy that raced a stop wins cleanly.
 */
import { logger } from '../../lambdas/shared/logger';
import { endEventOf, idleDeadline } from '../../lambdas/shared/reaper-rules';
import { getSandbox, transition, TransitionRejectedError } from '../../lambdas/shared/sandbox-store';
import type { SandboxEvent } from '../../lambdas/shared/sandbox-state';
import { markEnded } from '../../lambdas/shared/sandboxes';

/** Applies `event` if the record still allows it; false when another change came first. */
async function apply(sandboxId: string, event: SandboxEvent, set: Record<string, unknown> = {}, remove: readonly string[] = []): Promise<boolean> {
  try {
    await transition(sandboxId, event, { set, ...(remove.length > 0 ? { remove } : {}) });
    return true;
  } catch (err) {
    if (err instanceof TransitionRejectedError) return false;
    throw err;
  }
}

/** creating -> ready, with the container and the first idle deadline. */
export async function recordCreated(sandboxId: string, containerId: string): Promise<void> {
  const r = await getSandbox(sandboxId);
  if (r?.status !== 'creating') return;
  const now = Date.now();
  await apply(sandboxId, 'created', { container_id: containerId, last_activity_at: now, deadline_at: idleDeadline(r, now) });
}

/** creating -> failed (create_failed), giving the host and tenant slots back. */
export async function recordCreateFailed(sandboxId: string, detail: string): Promise<void> {
  const r = await getSandbox(sandboxId);
  if (r?.status !== 'creating') return;
  await markEnded(r, { event: 'fail', reason: 'create_failed', detail, only: ['creating'] });
}

/** shutting_down -> stopped | expired, once the container and its state are gone. */
export async function recordDestroyed(sandboxId: string, detail?: string): Promise<void> {
  const r = await getSandbox(sandboxId);
  if (r?.status !== 'shutting_down') return;
  const event = endEventOf(r.stop_reason);
  await markEnded(r, { event, ...(detail ? { detail } : {}) });
}

/** pausing -> paused (only the TTL applies while paused), or back to ready when the stop failed. */
export async function recordPaused(sandboxId: string, outcome: { ok: true; tmpNotKept?: string[] } | { ok: false; detail: string }): Promise<void> {
  const r = await getSandbox(sandboxId);
  if (r?.status !== 'pausing') return;
  const now = Date.now();
  if (outcome.ok)
    await apply(sandboxId, 'paused', { deadline_at: r.expires_at_ms, ...(outcome.tmpNotKept?.length ? { tmp_not_kept: outcome.tmpNotKept } : {}) });
  else if (
    await apply(sandboxId, 'pause_failed', { last_activity_at: now, deadline_at: idleDeadline(r, now), stop_detail: `stop failed: ${outcome.detail}` })
  ) {
    logger.warn('stop failed on the host; the sandbox keeps running', { sandboxId, detail: outcome.detail });
  }
}

/** resuming -> ready, or back to paused when the start failed. */
export async function recordResumed(sandboxId: string, outcome: { ok: true; tmpNotRestored?: string[] } | { ok: false; detail: string }): Promise<void> {
  const r = await getSandbox(sandboxId);
  if (r?.status !== 'resuming') return;
  const now = Date.now();
  if (outcome.ok) {
    // Running again: a sandbox moved off a drained host has its staged state restored (and deleted) now.
    await apply(
      sandboxId,
      'resumed',
      { last_activity_at: now, deadline_at: idleDeadline(r, now), ...(outcome.tmpNotRestored?.length ? { tmp_not_restored: outcome.tmpNotRestored } : {}) },
      ['paused_state'],
    );
  } else await apply(sandboxId, 'resume_failed', { deadline_at: r.expires_at_ms, stop_detail: `start failed: ${outcome.detail}` });
}
