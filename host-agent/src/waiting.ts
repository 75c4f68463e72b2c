/**
 * Creates waiting for capacity, taken by this host when it has room: at
 * registration (a host launched for them) and at every heartbeat (room freed
 * up). Each is claimed with one transaction (capacity-wait.ts), then made here
 * through the same create verb SSM runs, from its staged request.
 */
import { claimWaitingCreate, waitingCreates, waitingRequestKey } from '../../lambdas/shared/capacity-wait';
import { config } from '../../lambdas/shared/config';
import { getHost } from '../../lambdas/shared/host-store';
import { logger } from '../../lambdas/shared/logger';
import { addResources, fits, resourcesOf } from '../../lambdas/shared/placement';
import { createTimeoutSeconds } from '../../lambdas/shared/reaper-rules';
import { runHostAgent, type DaemonRuntime } from './invocation';

/** Claims the waiting creates that fit, oldest first, and starts making each; answers the ids taken. */
export async function takeWaitingCreates(hostId: string, runtime: DaemonRuntime, now = Date.now()): Promise<string[]> {
  const waiting = await waitingCreates();
  if (waiting.length === 0) return [];
  let host = await getHost(hostId);
  if (host?.status !== 'active' || !host.capacity) return [];
  const taken: string[] = [];
  for (const w of waiting) {
    if (w.deadline_at !== undefined && w.deadline_at <= now) continue; // the reaper fails it
    const share = resourcesOf(w.config, config().limits.defaultDiskMb);
    if (!fits(host.capacity, host.allocated, share)) continue; // a smaller one behind it may still fit
    const outcome = await claimWaitingCreate(host, w.sandbox_id, share, createTimeoutSeconds, now);
    if (outcome === 'no_room') {
      host = await getHost(hostId);
      if (host?.status !== 'active') break;
      continue;
    }
    if (outcome === 'gone') continue;
    host = { ...host, allocated: addResources(host.allocated, share) };
    taken.push(w.sandbox_id);
    const key = w.staged_request ?? waitingRequestKey(w.sandbox_id);
    // The create records ready (or create_failed, giving the share back) itself; its outcome is only logged here.
    void runHostAgent(['create', `s3:${key}`], runtime).then((envelope) => {
      if (envelope.ok) logger.info('waiting create made on this host', { hostId, sandboxId: w.sandbox_id, waitedMs: Date.now() - Date.parse(w.created_at) });
      else logger.error('waiting create failed on this host', { hostId, sandboxId: w.sandbox_id, error: envelope.error });
    });
  }
  return taken;
}
