/**
 * Claiming a warm pool container (warm-pool.ts) for a sandbox, made identical
 * to what a cold create (create.ts) would have made:
 *   - resources: `docker update` to the request's CPU, memory (= memory+swap)
 *     and process limit (the pool takes only requests whose /tmp size, fixed
 *     at Docker create, matches its own);
 *   - home and cold tier: mounted by the host on the sandbox's own paths
 *     first (as for a cold create), then bound onto the pool container's
 *     directory, whose slave propagation shows them at /home/agent and
 *     /data/cold with the same mount flags (the home's nosuid,nodev); the
 *     commands' FIFO directory is the pool container's own (a symlink from
 *     the sandbox's state), bound read-only as for a cold create;
 *   - name and hostname: the container is renamed to the sandbox id (Docker,
 *     the egress gateway and every verb find it by that name), its UTS
 *     hostname set, /etc/hostname and /etc/hosts rewritten;
 *   - env and token: kept in the sandbox's state (root only, 0600) and given
 *     to every command the host daemon starts in it (a cold create puts them
 *     in Docker's container config, root only too); HOSTNAME is the sandbox id;
 *   - network policy: the policy file is written before the rename (the
 *     gateway knows the container as a sandbox only from then), the
 *     firewall's fast path rebuilt after it.
 * A claimed container carries no sandbox labels (Docker cannot change labels):
 * its claim record (pool.json in the sandbox's state) says whose it is.
 * What fails in a claim removes the pool container; the create goes on cold.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { logger } from '../../lambdas/shared/logger';
import { allEnded } from './all-ended';
import { span } from '../../lambdas/shared/timing';
import { sandboxPaths, type HostConfig } from './config';
import { cgroupOfPid } from './commands/cgroup';
import type { CreateInput } from './create';
import type { DockerClient } from './docker';
import { mountsUnder } from './sandbox-storage';
import { type ContainerIdentity, identityOf, removePoolDir, type PoolContainer, type WarmPool } from './warm-pool';

const run = promisify(execFile);

/** What the sandbox's state keeps about its claimed pool container (pool.json). */
export interface ClaimRecord {
  poolId: string;
  /** The pool container's host directory. */
  dir: string;
  containerId: string;
  tenantId: string;
  userId: string;
  /** The request's labels (a cold create puts them on the container). */
  labels: Record<string, string>;
  claimedAt: string;
}

const claimFile = (config: HostConfig, sandboxId: string) => join(sandboxPaths(config, sandboxId).root, 'pool.json');
const envFile = (config: HostConfig, sandboxId: string) => join(sandboxPaths(config, sandboxId).root, 'env.json');

/** The sandbox's claim record, or undefined for a sandbox made cold. */
export function readClaim(config: HostConfig, sandboxId: string): ClaimRecord | undefined {
  try {
    return JSON.parse(readFileSync(claimFile(config, sandboxId), 'utf8')) as ClaimRecord;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
}

const envCache = new Map<string, string[]>();

/**
 * The environment a claimed sandbox's commands start with (what a cold
 * create's container config holds); empty for a sandbox made cold. Command
 * env given at exec comes after it and wins, as over a container's env.
 */
export function sandboxEnv(config: HostConfig, sandboxId: string): string[] {
  const cached = envCache.get(sandboxId);
  if (cached) return cached;
  let env: string[] = [];
  try {
    env = JSON.parse(readFileSync(envFile(config, sandboxId), 'utf8')) as string[];
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
  if (envCache.size > 10_000) envCache.clear();
  envCache.set(sandboxId, env);
  return env;
}

/** Forgets a sandbox's cached env (it ended). */
function forgetSandboxEnv(sandboxId: string): void {
  envCache.delete(sandboxId);
}

async function isMountPoint(path: string): Promise<boolean> {
  return (await mountsUnder(path)).includes(path);
}

/**
 * Binds the sandbox's home and cold tier onto its pool container's directory
 * (made a shared mount again first, as after a host restart); idempotent. Call
 * with both mounted on the sandbox's own paths, before the container starts
 * (a resume) or while it runs (the claim).
 */
export async function linkPoolBinds(config: HostConfig, sandboxId: string, claim = readClaim(config, sandboxId)): Promise<void> {
  if (!claim) return;
  const paths = sandboxPaths(config, sandboxId);
  if (!(await isMountPoint(claim.dir))) await run('mount', ['--bind', '--make-shared', claim.dir, claim.dir]);
  await Promise.all(
    (['home', 'cold'] as const).map(async (part) => {
      const target = join(claim.dir, part);
      if (!(await isMountPoint(target))) await run('mount', ['--bind', paths[part], target]);
    }),
  );
}

/** Takes the cold tier's bind off the pool container's directory (before the cold tier is unmounted: a pause). */
export async function unlinkColdBind(config: HostConfig, sandboxId: string): Promise<void> {
  const claim = readClaim(config, sandboxId);
  if (!claim) return;
  const target = join(claim.dir, 'cold');
  if (await isMountPoint(target)) await run('umount', ['-l', target]);
}

/**
 * After the container is gone: unmounts and removes the pool container's
 * directory, so the home and cold tier have no other mount left and the
 * sandbox's state can go. Idempotent; nothing for a sandbox made cold.
 */
export async function releasePoolDir(config: HostConfig, sandboxId: string): Promise<void> {
  const claim = readClaim(config, sandboxId);
  forgetSandboxEnv(sandboxId);
  if (!claim) return;
  await removePoolDir(claim.dir);
  // The token and env were for the container's commands only: they go with it, as its Docker config does.
  await rm(envFile(config, sandboxId), { force: true });
}

/**
 * The hostname a cold create gives (the sandbox id): UTS hostname, /etc/hostname
 * and /etc/hosts. Docker sets the pool name at every start, so a resume applies it again.
 * `known`: the container's identity read when it started (a pool container's, warm-pool.ts), used
 * when its init is still that pid in the container's own cgroup; otherwise the engine is asked.
 */
export async function applyIdentity(docker: DockerClient, containerId: string, sandboxId: string, known?: ContainerIdentity): Promise<void> {
  const identity = known && stillInit(known.pid, containerId) ? known : identityOf(await docker.inspectContainer(containerId));
  if (!identity) throw new Error(`container ${containerId} is not running`);
  // Only the UTS namespace is entered: `hostname` is the host's own binary, the argument a checked sandbox id.
  await run('nsenter', ['--target', String(identity.pid), '--uts', 'hostname', sandboxId]);
  // Rewritten in place: the container sees these files through bind mounts of their inodes.
  if (identity.hostnamePath) await writeFile(identity.hostnamePath, `${sandboxId}\n`);
  const previous = identity.hostname;
  if (identity.hostsPath && previous && previous !== sandboxId) {
    const hosts = await readFile(identity.hostsPath, 'utf8');
    const escaped = previous.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    await writeFile(identity.hostsPath, hosts.replace(new RegExp(`(\\s)${escaped}(?=\\s|$)`, 'gm'), `$1${sandboxId}`));
  }
}

/**
 * True when `pid` is a live process in container `containerId`'s cgroup (its cgroup path names the
 * container's full id, under either cgroup driver): the pid was not reused by a process elsewhere.
 */
function stillInit(pid: number, containerId: string): boolean {
  try {
    return cgroupOfPid(pid).includes(containerId);
  } catch {
    return false;
  }
}

/**
 * Makes the taken pool container the request's sandbox. The sandbox's home and
 * cold tier are ready on its own paths and its egress policy written (create.ts
 * does both, for either path). Answers false, with the pool container removed
 * and nothing of the claim left, when any step fails: the create goes on cold.
 */
export async function claimPoolContainer(
  entry: PoolContainer,
  request: CreateInput,
  config: HostConfig,
  docker: DockerClient,
  pool: WarmPool,
  network: { id?: string },
): Promise<boolean> {
  const paths = sandboxPaths(config, request.sandboxId);
  let renamed = false;
  try {
    const image = await docker.inspectImage(request.image);
    if (image.Id !== entry.imageId) throw new Error(`the pool container runs image ${entry.imageId}, the request asks for ${image.Id}`);
    if (network.id !== undefined && network.id !== entry.networkId) throw new Error('the sandbox network was made again since the pool container joined it');
    const env = Object.entries(request.env).map(([name, value]) => `${name}=${value}`);
    env.push(`HOSTNAME=${request.sandboxId}`);
    const claim: ClaimRecord = {
      poolId: entry.poolId,
      dir: entry.dir,
      containerId: entry.containerId,
      tenantId: request.tenantId,
      userId: request.userId,
      labels: request.labels,
      claimedAt: new Date().toISOString(),
    };
    await writeFile(envFile(config, request.sandboxId), JSON.stringify(env), { mode: 0o600 });
    await writeFile(claimFile(config, request.sandboxId), JSON.stringify(claim), { mode: 0o600 });
    envCache.set(request.sandboxId, env);
    await rm(paths.io, { recursive: true, force: true });
    await symlink(join(entry.dir, 'io'), paths.io);
    const memory = request.memoryMb * 1024 * 1024;
    // Independent steps side by side: a claim takes its slowest step, not their sum (one after the other
    // they were two thirds of a pooled create's claim). The firewall's fast path is rebuilt while the engine
    // renames the container (the refresh takes it by its new name already); nothing runs in the container
    // before the create answers.
    const sameShape = (['cpu', 'memoryMb', 'pidsLimit'] as const).every((k) => request[k] === entry.resources[k]);
    await allEnded([
      span('claim.binds', () => linkPoolBinds(config, request.sandboxId, claim)),
      // The pool's shape is the default one: most claims ask for the limits the container already has.
      sameShape
        ? undefined
        : docker.updateContainer(entry.containerId, {
            NanoCpus: Math.round(request.cpu * 1e9),
            Memory: memory,
            MemorySwap: memory,
            PidsLimit: request.pidsLimit,
          }),
      span('claim.identity', () => applyIdentity(docker, entry.containerId, request.sandboxId, entry.identity)),
      span('host.egress-refresh', async () =>
        (await import('./network')).refreshAsRenamed(config, docker, entry.containerId, request.sandboxId, async () => {
          await docker.renameContainer(entry.containerId, request.sandboxId);
          renamed = true;
        }),
      ),
    ]);
    pool.execServers?.rename(entry.name, request.sandboxId);
    return true;
  } catch (error) {
    logger.warn('warm pool: claim failed; making the container cold', { sandboxId: request.sandboxId, poolId: entry.poolId, renamed, err: error });
    await pool.discard(entry).catch((err) => logger.error('warm pool: could not remove a failed claim; reconcile retries', { err }));
    await rm(claimFile(config, request.sandboxId), { force: true });
    await rm(envFile(config, request.sandboxId), { force: true });
    forgetSandboxEnv(request.sandboxId);
    await rm(paths.io, { recursive: true, force: true });
    return false;
  } finally {
    pool.claimed(entry);
  }
}
