/**
 * A paused sandbox outlives its host. A paused sandbox keeps no process, only
 * files: its home (synced to S3 at the pause), its cold tier (S3 already) and
 * its /tmp, archived on the host's disk by the pause (the root file system is
 * read-only, so nothing else of the container holds state). When its host
 * drains, the host stages that archive and the sandbox's create request (its
 * token is only on the host, in the container's env) in S3 under the
 * sandbox's own prefix, then releases the sandbox from the host: its record
 * loses its host (a conditional write, only while it is still paused there)
 * and the host's allocation is given back. Its next resume places it like a
 * create and the new host makes the container from the staged request and
 * restores /tmp from the staged archive (host-agent/src/relocate.ts).
 */
import { invalidState, unavailable } from './errors';
import { requestCapacity } from './fleet';
import { placeSandbox, releaseAllocation } from './host-store';
import { logger } from './logger';
import { resourcesOf } from './placement';
import { config } from './config';
import type { SandboxRecord } from './sandbox-record';
import { transition, TransitionRejectedError, updateSandbox } from './sandbox-store';
import { pausedStatePrefix, pausedStateKeys, type ResumeRequest } from '../../contract/host-protocol';
import { egressOf } from './sandbox-record';
import { storageFor } from './sandboxes';

export { pausedStatePrefix, pausedStateKeys };

/**
 * Releases a paused sandbox from its draining host once its state is in S3:
 * host cleared and the state's prefix recorded, only while it is still paused
 * on `hostId` (a resume or destroy that came first wins, and the caller keeps
 * or ends it instead); then the host's share is given back. True when moved.
 */
export async function releasePausedSandbox(sandboxId: string, hostId: string, prefix: string): Promise<boolean> {
  try {
    await updateSandbox(
      sandboxId,
      'moved_off_host',
      {
        set: { host_id: '', paused_state: prefix, updated_at: new Date().toISOString() },
        remove: ['live_host_id', 'container_id'],
        condition: 'host_id = :from AND attribute_not_exists(paused_state)',
        values: { ':from': hostId },
      },
      ['paused'],
    );
  } catch (err) {
    if (err instanceof TransitionRejectedError) return false;
    throw err;
  }
  await releaseAllocation(hostId, sandboxId);
  return true;
}

/**
 * A resume of a paused sandbox that has no host (moved off a drained one):
 * takes room on a host as a create does, then moves the record to resuming
 * on that host (only while it is still paused and hostless). No host with
 * room: 503 with Retry-After, and the group is asked for a host.
 */
export async function placeMovedSandbox(r: SandboxRecord, resumingUntil: number): Promise<SandboxRecord> {
  const c = config();
  const share = resourcesOf(r.config, c.limits.defaultDiskMb);
  const host = await placeSandbox(r.sandbox_id, share, { image: c.sandboxImage });
  if (!host) {
    if (c.autoScalingGroupName) {
      await requestCapacity({ also: [share] }).catch((err: unknown) =>
        logger.warn('resume: asking the group for a host failed', { sandboxId: r.sandbox_id, err }),
      );
    }
    throw unavailable(`no sandbox host has room to resume ${r.sandbox_id} right now (its host left the fleet while it was paused); retry shortly`, 10);
  }
  try {
    return await transition(r.sandbox_id, 'resume', {
      set: { host_id: host.host_id, live_host_id: host.host_id, deadline_at: resumingUntil },
      condition: 'host_id = :none AND attribute_exists(paused_state)',
      values: { ':none': '' },
    });
  } catch (err) {
    await releaseAllocation(host.host_id, r.sandbox_id).catch((e: unknown) =>
      logger.error("resume: giving the host's share back failed (the host's reconciliation corrects it)", { hostId: host.host_id, err: e }),
    );
    if (err instanceof TransitionRejectedError) {
      throw invalidState(`sandbox ${r.sandbox_id} changed while it was being resumed (now ${err.current?.status ?? 'gone'}); retry`);
    }
    throw err;
  }
}

/**
 * The host's resume request for a sandbox being resumed (by its resume, or
 * the reaper driving a resume again): with `relocate` while it still has
 * staged state from a move, so whichever drives it makes it the same way.
 */
export function resumeRequestFor(r: SandboxRecord): ResumeRequest {
  return {
    sandboxId: r.sandbox_id,
    storage: storageFor(r.tenant_id, r.user_id, r.config.disk_mb),
    ...(r.paused_state ? { relocate: { prefix: r.paused_state, egress: egressOf(r.config.network) ?? 'allow_all' } } : {}),
  };
}
