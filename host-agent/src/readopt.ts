/**
 * What a host daemon takes back when it starts (and checks on every
 * reconcile pass): the sandboxes already running on the host, with their
 * homes and cold mounts. A daemon restart leaves them alone: containers run
 * under Docker, homes are loop mounts of the kernel, cold mounts run in scopes
 * of their own (process-scope.ts). What can still fail on its own is a cold
 * tier's FUSE client: a dead one is mounted again, and the container sees the
 * new mount because its /data/cold is bound `rslave` from a state directory
 * that is a shared mount (storage/shared-mount.ts).
 */
import { existsSync } from 'node:fs';
import { logger } from '../../lambdas/shared/logger';
import { activeStatuses } from '../../lambdas/shared/sandbox-state';
import { sandboxPaths, type HostConfig } from './config';
import type { DockerClient } from './docker';
import type { StorageSpec } from '../../contract/host-protocol';
import { attachCold, detachCold } from './sandbox-storage';
import { coldMountAlive, isMounted } from './storage/index';

type ColdMountState = 'alive' | 'remounted' | 'failed' | 'not_mounted';

export interface AdoptedSandbox {
  sandboxId: string;
  container: 'running' | 'stopped' | 'missing';
  home: 'mounted' | 'plain' | 'missing';
  cold: ColdMountState;
  error?: string;
}

/**
 * Checks every settled sandbox of this host (`sandboxes`: its live records)
 * and repairs what it can: a running sandbox whose cold mount died gets it
 * mounted again. `serialize` runs each repair after any verb at work on the
 * same sandbox (a pause that is unmounting it right now must not race it).
 */
export async function adoptSandboxes(
  config: HostConfig,
  docker: DockerClient,
  sandboxes: readonly { sandboxId: string; storage: StorageSpec; status: string }[],
  serialize: <T>(sandboxId: string, work: () => Promise<T>) => Promise<T> = (_id, work) => work(),
): Promise<AdoptedSandbox[]> {
  const report: AdoptedSandbox[] = [];
  for (const s of sandboxes) {
    // Paused: its cold tier is unmounted on purpose and its container stopped; a start mounts it.
    if (!(activeStatuses as readonly string[]).includes(s.status)) continue;
    report.push(await serialize(s.sandboxId, () => adoptOne(config, docker, s)));
  }
  const repaired = report.filter((r) => r.cold === 'remounted' || r.cold === 'failed');
  if (repaired.length > 0) logger.warn('adopt: cold mounts that had died', { sandboxes: repaired });
  return report;
}

async function adoptOne(config: HostConfig, docker: DockerClient, s: { sandboxId: string; storage: StorageSpec }): Promise<AdoptedSandbox> {
  const paths = sandboxPaths(config, s.sandboxId);
  const info = await docker.inspectContainer(s.sandboxId);
  const container = !info ? 'missing' : info.State.Running ? 'running' : 'stopped';
  const home = (await isMounted(paths.home)) ? 'mounted' : existsSync(paths.homeImage) ? 'missing' : 'plain';
  if (container !== 'running') return { sandboxId: s.sandboxId, container, home, cold: (await coldMountAlive(paths.cold)) ? 'alive' : 'not_mounted' };
  if (await coldMountAlive(paths.cold)) return { sandboxId: s.sandboxId, container, home, cold: 'alive' };
  const ctx = { config, sandboxId: s.sandboxId, storage: s.storage };
  try {
    // A dead FUSE client leaves its mount behind answering ENOTCONN: detach it, then mount the prefix again.
    await detachCold(ctx, { force: true });
    await attachCold(ctx);
    return { sandboxId: s.sandboxId, container, home, cold: (await coldMountAlive(paths.cold)) ? 'remounted' : 'failed' };
  } catch (error) {
    return { sandboxId: s.sandboxId, container, home, cold: 'failed', error: (error as Error).message };
  }
}
