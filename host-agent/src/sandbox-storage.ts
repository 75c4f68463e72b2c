/**
 * The one place the lifecycle verbs touch the storage tiers
 * (host-agent/src/storage):
 *   hot  = /home/agent, a real directory on the host's disk, synced with S3
 *          (down at create, up at pause / sync / graceful destroy);
 *   cold = /data/cold, a FUSE mount of an S3 prefix made on the host
 *          (mounted at create and resume, unmounted at pause and destroy).
 * A sandbox created without a storage spec gets an empty home, an empty
 * directory at /data/cold, and no sync.
 */
import { existsSync } from 'node:fs';
import { chown, mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { emitMetrics } from '../../lambdas/shared/metrics';
import { sandboxPaths, type HostConfig } from './config';
import { HostAgentError } from './errors';
import type { StorageSpec, SyncReport } from '../../contract/host-protocol';
import { ensureSharedMount } from './storage/shared-mount';
import { attachHomeDisk, detachHomeDisk, homeDiskBytes } from './storage/home-disk';
import { coldMountDriverFromEnv, createS3Client, defaultMaxEntries, hotSyncDown, hotSyncUp, mountCold, unmountCold, type HotSyncReport } from './storage/index';

export interface SandboxStorageContext {
  config: HostConfig;
  sandboxId: string;
  storage?: StorageSpec | undefined;
  /** Size of the home's own file system; undefined: a plain directory on the host's disk (sandboxes from before disk_mb). */
  diskMb?: number | undefined;
}

/** The protocol's report only: the storage report's list of unsynced paths could outgrow SSM's output cap. */
/** The sync's figures for its answer, and for the HotSyncBytes / HotSyncDuration metrics. */
function toSyncReport(report: HotSyncReport, direction: 'down' | 'up'): SyncReport {
  const { uploaded, downloaded, deleted, skipped, bytes, ms } = report;
  emitMetrics({ Direction: direction }, { HotSyncBytes: bytes, HotSyncDuration: ms });
  return { uploaded, downloaded, deleted, skipped, bytes, ms };
}

async function withS3<T>(fn: (s3: ReturnType<typeof createS3Client>) => Promise<T>): Promise<T> {
  const s3 = createS3Client();
  try {
    return await fn(s3);
  } finally {
    s3.destroy();
  }
}

/**
 * The home's one size limit, which the hot sync also enforces: its file
 * system's size when it has one (whatever quota the request carries, so a
 * home can never hold more than its sync carries), else the request's quota.
 */
async function homeLimitBytes(ctx: SandboxStorageContext, storage: StorageSpec): Promise<number> {
  return (await homeDiskBytes(sandboxPaths(ctx.config, ctx.sandboxId).homeImage)) ?? storage.hotQuotaBytes;
}

async function hotOptions(ctx: SandboxStorageContext, storage: StorageSpec, s3: ReturnType<typeof createS3Client>) {
  const paths = sandboxPaths(ctx.config, ctx.sandboxId);
  return {
    s3,
    bucket: storage.bucket,
    prefix: storage.hotPrefix,
    dir: paths.home,
    uid: ctx.config.sandboxUid,
    gid: ctx.config.sandboxGid,
    quotaBytes: await homeLimitBytes(ctx, storage),
    // Outside the home: the sandbox must not be able to edit what we think we synced.
    stateFile: paths.hotManifest,
  };
}

/**
 * Makes the sandbox's home directory (owned by the sandbox user) and fills it
 * from S3. A create retried after a completed sync-down reuses that home.
 */
export async function prepareHome(ctx: SandboxStorageContext): Promise<{ home: string; hotSync?: SyncReport }> {
  const { home, hotManifest } = sandboxPaths(ctx.config, ctx.sandboxId);
  const storage = ctx.storage;
  if (ctx.diskMb !== undefined) await attachHome(ctx);
  if (!storage || existsSync(hotManifest)) {
    await mkdir(home, { recursive: true, mode: 0o755 });
    await chownTo(home, ctx.config);
    return { home };
  }
  const report = await withS3(async (s3) => hotSyncDown(await hotOptions(ctx, storage, s3)));
  return { home, hotSync: toSyncReport(report, 'down') };
}

/**
 * Mounts the home's own file system at the home (making it, `diskMb` in size,
 * the first time). Sandboxes without one (no diskMb, no image) keep a plain
 * directory. Call before the container starts: a bind mount made earlier
 * would show the empty directory under the mount.
 */
export async function attachHome(ctx: SandboxStorageContext): Promise<void> {
  const { home, homeImage } = sandboxPaths(ctx.config, ctx.sandboxId);
  if (ctx.diskMb === undefined && !existsSync(homeImage)) return;
  await attachHomeDisk({
    image: homeImage,
    mountPoint: home,
    sizeMb: ctx.diskMb ?? 0,
    uid: ctx.config.sandboxUid,
    gid: ctx.config.sandboxGid,
    maxEntries: defaultMaxEntries,
  });
}

/** The host directory to bind at /data/cold: the cold tier's FUSE mount, or an empty directory. */
export async function attachCold(ctx: SandboxStorageContext): Promise<string> {
  const { cold } = sandboxPaths(ctx.config, ctx.sandboxId);
  await mkdir(cold, { recursive: true, mode: 0o755 });
  // The container binds it `rslave` (create.ts): Docker needs the state directory to be a shared mount.
  await ensureSharedMount(ctx.config.stateDir);
  if (!ctx.storage) {
    await chownTo(cold, ctx.config);
    return cold;
  }
  await mountCold({
    driver: coldMountDriverFromEnv(),
    bucket: ctx.storage.bucket,
    prefix: ctx.storage.coldPrefix,
    mountPoint: cold,
    uid: ctx.config.sandboxUid,
    gid: ctx.config.sandboxGid,
  });
  return cold;
}

/** Uploads the home's changes to S3; `undefined` when there is no storage spec or no home left. */
export async function syncHomeUp(ctx: SandboxStorageContext): Promise<SyncReport | undefined> {
  const storage = ctx.storage;
  if (!storage) return undefined;
  // A destroy retried after the state was already removed has nothing left to sync.
  if (!existsSync(sandboxPaths(ctx.config, ctx.sandboxId).home)) return undefined;
  return toSyncReport(await withS3(async (s3) => hotSyncUp(await hotOptions(ctx, storage, s3))), 'up');
}

/** Unmounts the cold tier if it is mounted (force: lazily, even when busy). Idempotent. */
export async function detachCold(ctx: SandboxStorageContext, options: { force: boolean }): Promise<void> {
  const { cold } = sandboxPaths(ctx.config, ctx.sandboxId);
  if (!existsSync(cold) || (await mountsUnder(cold)).length === 0) return;
  await unmountCold(cold, { force: options.force });
}

/** Mount points at or below `dir`, from /proc/self/mountinfo (octal escapes decoded). */
export async function mountsUnder(dir: string): Promise<string[]> {
  const mountinfo = await readFile('/proc/self/mountinfo', 'utf8');
  const decode = (field: string) => field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
  return mountinfo
    .split('\n')
    .map((line) => decode(line.split(' ')[4] ?? ''))
    .filter((mountPoint) => mountPoint === dir || mountPoint.startsWith(dir + '/'));
}

/**
 * Removes everything the host kept for the sandbox (call only after its home
 * was synced, or when it is being discarded). Refuses while anything is still
 * mounted below it: a recursive delete would walk into the cold tier's bucket.
 */
export async function removeSandboxState(ctx: SandboxStorageContext): Promise<void> {
  const { root, home } = sandboxPaths(ctx.config, ctx.sandboxId);
  // The home's own file system goes with the state; lazily, so a reader that has not let go yet (a sync that lost
  // its race with the end) cannot keep the state from going. The space returns when the last holder closes.
  await detachHomeDisk(home, { force: true });
  const mounted = await mountsUnder(root);
  if (mounted.length > 0) {
    throw new HostAgentError('storage_error', `not removing ${root}: ${mounted.join(', ')} still mounted; unmount it and retry`);
  }
  await rm(root, { recursive: true, force: true });
}

async function chownTo(path: string, config: HostConfig): Promise<void> {
  try {
    await chown(path, config.sandboxUid, config.sandboxGid);
  } catch (error) {
    throw new HostAgentError(
      'internal_error',
      `cannot give ${path} to ${config.sandboxUid}:${config.sandboxGid}: ${(error as Error).message} (the host-agent must run as root)`,
    );
  }
}

/** Where the state of ended sandboxes whose home could not be synced waits for a later sync. */
function keptRoot(config: HostConfig): string {
  return join(config.stateDir, 'kept');
}

/**
 * A graceful end whose sync failed still ends the sandbox: its state (the
 * home and the sync manifest) moves aside, with the storage spec, and the
 * host daemon syncs it later (retryKeptHomes). Call with the cold tier unmounted.
 */
export async function keepHomeForLater(ctx: SandboxStorageContext, reason: string): Promise<string> {
  const from = sandboxPaths(ctx.config, ctx.sandboxId).root;
  // A home on its own file system moves as its image (unmounted: nothing may write to it any more).
  await detachHomeDisk(sandboxPaths(ctx.config, ctx.sandboxId).home, { force: true });
  const to = sandboxPaths({ ...ctx.config, stateDir: keptRoot(ctx.config) }, ctx.sandboxId).root;
  await mkdir(dirname(to), { recursive: true, mode: 0o700 });
  await rm(to, { recursive: true, force: true });
  await rename(from, to);
  await writeFile(join(to, 'kept.json'), JSON.stringify({ storage: ctx.storage, reason, keptAt: new Date().toISOString() }), { mode: 0o600 });
  return join(to, 'home');
}

/** Homes kept by ended sandboxes, each synced again; the ones that sync are removed. Answers what is still kept. */
export async function retryKeptHomes(config: HostConfig): Promise<{ synced: string[]; kept: { sandboxId: string; error: string }[] }> {
  const kept = keptRoot(config);
  const keptConfig = { ...config, stateDir: kept };
  const result = { synced: [] as string[], kept: [] as { sandboxId: string; error: string }[] };
  const dir = join(kept, 'sandboxes');
  if (!existsSync(dir)) return result;
  for (const sandboxId of await readdir(dir)) {
    const root = join(dir, sandboxId);
    const ctx = { config: keptConfig, sandboxId };
    try {
      const { storage } = JSON.parse(await readFile(join(root, 'kept.json'), 'utf8')) as { storage?: StorageSpec };
      await attachHome(ctx);
      await syncHomeUp({ ...ctx, storage });
      await removeSandboxState(ctx);
      result.synced.push(sandboxId);
    } catch (error) {
      await detachHomeDisk(sandboxPaths(keptConfig, sandboxId).home, { force: true }).catch(() => undefined);
      result.kept.push({ sandboxId, error: (error as Error).message });
    }
  }
  return result;
}
