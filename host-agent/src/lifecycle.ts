/**
 * destroy, pause, resume, sync and status: the verbs that act on an existing sandbox.
 */
import { existsSync } from 'node:fs';
import type { z } from 'zod';
import { logger } from '../../lambdas/shared/logger';
import type { HostConfig } from './config';
import { DockerApiError, type DockerClient } from './docker';
import { HostAgentError } from './errors';
import { isOwned } from './create';
import {
  containerLabels,
  ownerLabelValue,
  type DestroyResult,
  type HostStatus,
  type SyncReport,
  type TmpArchiveReport,
  type TmpRestoreReport,
} from '../../contract/host-protocol';
import type { destroyRequest, sandboxRef } from '../../contract/host-requests';
import { attachCold, attachHome, detachCold, keepHomeForLater, removeSandboxState, syncHomeUp, type SandboxStorageContext } from './sandbox-storage';
import { applyIdentity, linkPoolBinds, readClaim, releasePoolDir, unlinkColdBind } from './claim';
import { isUnclaimedPoolContainer, sandboxIdOf } from './warm-pool';
import { forgetSpareFifos } from './commands/fifo-stdio';
import { sandboxPaths } from './config';
import { archiveTmp, restoreTmp, tmpArchivePath, tmpArchiveState } from './tmp-archive';

export type DestroyInput = z.output<typeof destroyRequest>;
export type SandboxRefInput = z.output<typeof sandboxRef>;

/** SIGTERM grace before docker sends SIGKILL, for graceful destroy and pause. */
export const stopGraceSeconds = 8;

async function ownedContainer(docker: DockerClient, sandboxId: string) {
  const info = await docker.inspectContainer(sandboxId);
  if (info && !isOwned(info)) {
    throw new HostAgentError('bad_request', `container ${sandboxId} on this host is not a sandbox; refusing to touch it`);
  }
  return info;
}

async function requireContainer(docker: DockerClient, sandboxId: string) {
  const info = await ownedContainer(docker, sandboxId);
  if (!info) throw new HostAgentError('not_found', `sandbox ${sandboxId} has no container on this host`);
  return info;
}

async function removeIgnoringGone(docker: DockerClient, id: string): Promise<void> {
  try {
    await docker.removeContainer(id, true);
  } catch (error) {
    // Removal already in progress (409) or done (404) by a concurrent destroy.
    if (!(error instanceof DockerApiError && (error.statusCode === 404 || error.statusCode === 409))) throw error;
  }
}

/** A graceful end tries the sync this many times before it keeps the home for later. */
const syncAttempts = 3;

/**
 * Graceful: stop (SIGTERM, then SIGKILL after the grace), sync the home up,
 * remove. Forced: kill and remove; the home is discarded. Then the cold tier
 * is unmounted and the host-side state removed. A graceful end whose sync
 * keeps failing still ends: the home is kept on the host (keptHome says where
 * and why) and the host daemon syncs it later, so an end never jams.
 */
export async function destroySandbox(request: DestroyInput, config: HostConfig, docker: DockerClient): Promise<DestroyResult> {
  const ctx: SandboxStorageContext = { config, sandboxId: request.sandboxId, storage: request.storage };
  const info = await ownedContainer(docker, request.sandboxId);
  let hotSync: SyncReport | undefined;
  let syncError: Error | undefined;
  if (request.graceful) {
    if (info) await docker.stopContainer(info.Id, stopGraceSeconds);
    for (let attempt = 1; attempt <= syncAttempts; attempt++) {
      try {
        hotSync = await syncHomeUp(ctx);
        syncError = undefined;
        break;
      } catch (error) {
        syncError = error as Error;
        // A home over its quota will not fit on a second try; anything else may be a passing S3 fault.
        if ((error as { code?: string }).code === 'quota_exceeded' || attempt === syncAttempts) break;
        await new Promise((r) => setTimeout(r, 500 * attempt));
      }
    }
  } else if (info?.State.Running) {
    try {
      await docker.killContainer(info.Id);
    } catch (error) {
      // 409: it stopped between inspect and kill; the remove below still applies.
      if (!(error instanceof DockerApiError && error.statusCode === 409)) throw error;
    }
  }
  if (info) await removeIgnoringGone(docker, info.Id);
  // A claimed pool container's directory holds binds of the home and cold tier: they go first, so both can.
  await releasePoolDir(config, request.sandboxId);
  forgetSpareFifos(sandboxPaths(config, request.sandboxId).io);
  await detachCold(ctx, { force: !request.graceful });
  if (syncError) {
    const path = await keepHomeForLater(ctx, syncError.message);
    logger.warn('destroy: the home could not be synced; kept on the host for a later sync', { sandboxId: request.sandboxId, keptAt: path, err: syncError });
    return { removed: info !== undefined, keptHome: { path, reason: syncError.message } };
  }
  await removeSandboxState(ctx);
  return { removed: info !== undefined, ...(hotSync ? { hotSync } : {}) };
}

/**
 * Stops the container (freeing CPU and memory); its filesystem and home stay
 * on the host. /tmp (a tmpfs, lost when the container stops) is archived from
 * inside the sandbox first; a failed archive refuses the pause and the sandbox
 * keeps running. Then the home is synced up and the cold tier unmounted
 * (resume mounts it again).
 */
export async function pauseSandbox(request: SandboxRefInput, config: HostConfig, docker: DockerClient): Promise<{ paused: boolean; tmp?: TmpArchiveReport }> {
  const info = await requireContainer(docker, request.sandboxId);
  const ctx = { config, sandboxId: request.sandboxId, storage: request.storage };
  let tmp: TmpArchiveReport | undefined;
  // Stopped: its /tmp is already gone and the archive (if any) holds it. Pending: the running
  // /tmp is a failed restore nobody has used (the sandbox stayed paused); the archive is the truth.
  if (info.State.Running && (await tmpArchiveState(config, request.sandboxId, info)) !== 'pending') {
    tmp = await archiveTmp(docker, config, request.sandboxId, info);
    if (tmp.warnings.length > 0) logger.warn('pause: /tmp archived with warnings', { sandboxId: request.sandboxId, warnings: tmp.warnings });
  }
  await docker.stopContainer(info.Id, stopGraceSeconds);
  await syncHomeUp(ctx);
  await unlinkColdBind(config, request.sandboxId);
  await detachCold(ctx, { force: false });
  return { paused: true, ...(tmp ? { tmp } : {}) };
}

/**
 * Starts a paused sandbox's container again (cold tier remounted first), then
 * restores its /tmp and deletes the archive. A failed restore answers an error
 * with the container running and the archive kept: the next resume (the
 * sandbox is still paused for the control plane) retries the restore. A running
 * container is left as it is, apart from such a pending restore.
 */
export async function resumeSandbox(request: SandboxRefInput, config: HostConfig, docker: DockerClient): Promise<{ resumed: boolean; tmp?: TmpRestoreReport }> {
  const info = await requireContainer(docker, request.sandboxId);
  if (info.State.Running) {
    if ((await tmpArchiveState(config, request.sandboxId, info)) !== 'pending') return { resumed: true };
    return { resumed: true, tmp: await restoreTmp(docker, config, request.sandboxId, info.Id) };
  }
  // The container's bind of /data/cold is made at start: mount the cold tier before it.
  await attachCold({ config, sandboxId: request.sandboxId, storage: request.storage });
  // Its own file system too, if the host lost the mount (a reboot) while the sandbox was stopped.
  await attachHome({ config, sandboxId: request.sandboxId });
  // A claimed pool container sees both through its own directory's binds (gone after a host restart).
  const claim = readClaim(config, request.sandboxId);
  if (claim) await linkPoolBinds(config, request.sandboxId, claim);
  await docker.startContainer(info.Id);
  // Docker gives it the pool name again at every start.
  if (claim) await applyIdentity(docker, info.Id, request.sandboxId);
  // A new address, maybe one a departed sandbox had: rebuild the egress fast path before it runs anything.
  if (info.HostConfig?.NetworkMode !== 'none') await (await import('./network')).refreshSandboxPolicies(config, docker);
  // Just started: any archive on the host holds this /tmp (even one from a pause whose stop failed).
  if (!existsSync(tmpArchivePath(config, request.sandboxId))) return { resumed: true };
  return { resumed: true, tmp: await restoreTmp(docker, config, request.sandboxId, info.Id) };
}

/** Uploads the home's changes now (the sandbox keeps running). */
export async function syncSandbox(request: SandboxRefInput, config: HostConfig, docker: DockerClient): Promise<SyncReport> {
  await requireContainer(docker, request.sandboxId);
  if (!request.storage) throw new HostAgentError('bad_request', `sync needs the sandbox's storage spec; ${request.sandboxId} was given none`);
  const report = await syncHomeUp({ config, sandboxId: request.sandboxId, storage: request.storage });
  if (!report) throw new HostAgentError('storage_error', `hot sync of ${request.sandboxId} produced no report`);
  return report;
}

/** Every container this agent owns (on this HOST_ID when set), with its sandbox id and state. */
export async function hostStatus(config: HostConfig, docker: DockerClient): Promise<HostStatus> {
  const label = [`${containerLabels.owner}=${ownerLabelValue}`];
  if (config.hostId) label.push(`${containerLabels.hostId}=${config.hostId}`);
  const containers = (await docker.listContainers({ label })).filter((c) => !isUnclaimedPoolContainer(c));
  return {
    containers: containers.map((c) => ({
      sandboxId: sandboxIdOf(c) ?? (c.Names[0] ?? '').replace(/^\//, ''),
      containerId: c.Id,
      state: c.State,
    })),
  };
}
