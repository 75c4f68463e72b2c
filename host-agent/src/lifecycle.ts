/**
 * destroy, pause, resume, sync and status: the verbs that act on an existing sandbox.
 */
import type { z } from 'zod';
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
  type destroyRequest,
  type sandboxRef,
} from './protocol';
import { attachCold, detachCold, removeSandboxState, syncHomeUp, type SandboxStorageContext } from './sandbox-storage';

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

/**
 * Graceful: stop (SIGTERM, then SIGKILL after the grace), sync the home up,
 * remove. Forced: kill and remove; the home is discarded. Then the cold tier
 * is unmounted and the host-side state removed (after a graceful destroy,
 * only once the sync succeeded: a failed sync leaves the stopped container and
 * the home in place so a retried destroy syncs again).
 */
export async function destroySandbox(request: DestroyInput, config: HostConfig, docker: DockerClient): Promise<DestroyResult> {
  const ctx: SandboxStorageContext = { config, sandboxId: request.sandboxId, storage: request.storage };
  const info = await ownedContainer(docker, request.sandboxId);
  let hotSync: SyncReport | undefined;
  if (request.graceful) {
    if (info) await docker.stopContainer(info.Id, stopGraceSeconds);
    hotSync = await syncHomeUp(ctx);
  } else if (info?.State.Running) {
    try {
      await docker.killContainer(info.Id);
    } catch (error) {
      // 409: it stopped between inspect and kill; the remove below still applies.
      if (!(error instanceof DockerApiError && error.statusCode === 409)) throw error;
    }
  }
  if (info) await removeIgnoringGone(docker, info.Id);
  await detachCold(ctx, { force: !request.graceful });
  await removeSandboxState(ctx);
  return { removed: info !== undefined, ...(hotSync ? { hotSync } : {}) };
}

/**
 * Stops the container (freeing CPU and memory); its filesystem and home stay
 * on the host. The home is synced up and the cold tier unmounted (resume
 * mounts it again). /tmp is a tmpfs: its contents do not survive a pause.
 */
export async function pauseSandbox(request: SandboxRefInput, config: HostConfig, docker: DockerClient): Promise<{ paused: boolean }> {
  const info = await requireContainer(docker, request.sandboxId);
  const ctx = { config, sandboxId: request.sandboxId, storage: request.storage };
  await docker.stopContainer(info.Id, stopGraceSeconds);
  await syncHomeUp(ctx);
  await detachCold(ctx, { force: false });
  return { paused: true };
}

/** Starts a paused sandbox's container again (cold tier remounted first); a running one is left as it is. */
export async function resumeSandbox(request: SandboxRefInput, config: HostConfig, docker: DockerClient): Promise<{ resumed: boolean }> {
  const info = await requireContainer(docker, request.sandboxId);
  if (info.State.Running) return { resumed: true };
  // The container's bind of /data/cold is made at start: mount the cold tier before it.
  await attachCold({ config, sandboxId: request.sandboxId, storage: request.storage });
  await docker.startContainer(info.Id);
  return { resumed: true };
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
  const containers = await docker.listContainers({ label });
  return {
    containers: containers.map((c) => ({
      sandboxId: c.Labels[containerLabels.sandboxId] ?? (c.Names[0] ?? '').replace(/^\//, ''),
      containerId: c.Id,
      state: c.State,
    })),
  };
}
