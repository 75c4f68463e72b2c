/**
 * The warm pool: containers of the default shape, hardened exactly as a
 * sandbox's (create.ts containerSpec), created and started ahead of any
 * sandbox, so a create claims one (claim.ts) instead of paying for Docker's
 * create and start. The host daemon owns the pool; it refills it in the
 * background, one container at a time, so a refill never competes with
 * creates for more than one Docker create at once. A create that finds the
 * pool empty (a burst) makes its container cold, as without a pool.
 *
 * A pool container is no sandbox: it carries the pool label and a
 * `sbxpool-` name (never a sandbox id), no sandbox labels, no policy file,
 * no home and no cold tier. The egress gateway knows sandboxes by name, so a
 * pool container resolves nothing and reaches nothing (fail closed). It is
 * never counted as a sandbox (heartbeat, reconcile, status), and it is taken
 * once: a claim that fails removes it, it never goes back to the pool.
 *
 * What the pool reserves, explicitly: `depth` idle containers (one sleeping
 * process each, a few MB of memory, no CPU), and no sandbox slot, no home
 * disk. Placement and the host's slots count sandboxes only, so the pool
 * never makes a create answer no_capacity.
 *
 * Each pool container binds its own host directory, `<STATE_DIR>/pool/<id>`,
 * made a shared mount before the container starts, with slave propagation
 * for /home/agent and /data/cold: whatever is mounted there on the host later
 * (the sandbox's home and cold tier, at the claim) appears in the container,
 * and nothing the container does can propagate back.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { config, type ControlPlaneConfig } from '../../lambdas/shared/config';
import { logger } from '../../lambdas/shared/logger';
import { inScope, span } from '../../lambdas/shared/timing';
import type { HostConfig } from './config';
import { containerSpec, sandboxColdMount, sandboxHome, sandboxIoMount, tmpSizeMbFor, type CreateInput } from './create';
import type { ContainerInspectInfo } from 'dockerode';
import { DockerApiError, type DockerClient } from './docker';
import type { ExecServers } from './commands/exec-server';
import { containerLabels, ownerLabelValue } from '../../contract/host-protocol';
import { sandboxIdPattern } from '../../contract/ids';
import { mountsUnder } from './sandbox-storage';

const run = promisify(execFile);

/** Label on every pool container: its pool id (also the name of its host directory). */
export const poolLabel = 'dev.ephemeral-sandbox.pool';
/** Pool containers are named `sbxpool-<id>` until a claim renames them to their sandbox's id. */
const poolNamePrefix = 'sbxpool-';

/** The pool's shape and depth, from the host's environment (the control plane's defaults). */
export interface PoolSettings {
  /** Containers kept ready (WARM_CONTAINERS_PER_HOST); 0 turns the pool off. */
  depth: number;
  image: string;
  cpu: number;
  memoryMb: number;
  pidsLimit: number;
  /**
   * How long a refill waits after a claim that left the pool a container (WARM_POOL_REFILL_DELAY_MS, default
   * 1000): making a container is the engine's busiest work, and the sandbox just claimed runs its first commands
   * now (measured: the first `true` after a claim 317 ms with the refill beside it, 201 ms without). A claim that
   * empties the pool, or a create that missed it, starts the refill at once.
   */
  refillDelayMs: number;
}

/**
 * The pool's depth (WARM_CONTAINERS_PER_HOST, default 0) and its shape: the
 * control plane's defaults (the same settings its create handler reads).
 */
export function poolSettings(env: NodeJS.ProcessEnv = process.env, cp: ControlPlaneConfig = config()): PoolSettings {
  const raw = env.WARM_CONTAINERS_PER_HOST ?? '';
  const depth = raw === '' ? 0 : Number(raw);
  if (!Number.isInteger(depth) || depth < 0) throw new Error(`WARM_CONTAINERS_PER_HOST must be a whole number >= 0, got "${raw}"`);
  const rawDelay = env.WARM_POOL_REFILL_DELAY_MS ?? '';
  const refillDelayMs = rawDelay === '' ? 1000 : Number(rawDelay);
  if (!Number.isInteger(refillDelayMs) || refillDelayMs < 0 || refillDelayMs > 60_000) {
    throw new Error(`WARM_POOL_REFILL_DELAY_MS must be a whole number of ms from 0 to 60000, got "${rawDelay}"`);
  }
  return { depth, image: cp.sandboxImage, cpu: cp.limits.defaultCpu, memoryMb: cp.limits.defaultMemoryMb, pidsLimit: cp.limits.pidsLimit, refillDelayMs };
}

/** A running container's init and the files its hostname lives in (what claim.ts applyIdentity changes). */
export interface ContainerIdentity {
  /** Its init's pid on the host. */
  pid: number;
  hostname: string;
  hostnamePath: string;
  hostsPath: string;
}

/** The identity of an inspected container, or undefined when it is not running. */
export function identityOf(info: ContainerInspectInfo | undefined): ContainerIdentity | undefined {
  if (!info?.State.Running || !info.State.Pid) return undefined;
  return { pid: info.State.Pid, hostname: info.Config.Hostname ?? '', hostnamePath: info.HostnamePath ?? '', hostsPath: info.HostsPath ?? '' };
}

/** A ready pool container. */
export interface PoolContainer {
  poolId: string;
  name: string;
  containerId: string;
  /** Its host directory: `home`, `cold` (slave-propagated into the container) and `io`. */
  dir: string;
  imageId: string;
  /**
   * The names its image answers to: the pool's reference, its tags and its
   * `repo@sha256:` digests. Creates name the digest their host recorded
   * (image-rollout.ts), the pool is filled from the tag it was configured with.
   */
  imageRefs: string[];
  networkId: string;
  /** The limits it was made with (the pool's shape): a claim that asks for the same needs no `docker update`. */
  resources: Pick<CreateInput, 'cpu' | 'memoryMb' | 'pidsLimit'>;
  /** What a claim's hostname step needs, read when it started (claim.ts applyIdentity): no engine call at the claim. */
  identity: ContainerIdentity;
}

function poolDir(config: HostConfig, poolId: string): string {
  return join(config.stateDir, 'pool', poolId);
}

/** The sandbox a container is, or undefined for an unclaimed pool container (or a stranger). */
export function sandboxIdOf(c: { Labels?: Record<string, string> | null; Names?: string[] }): string | undefined {
  const labelled = c.Labels?.[containerLabels.sandboxId];
  if (labelled) return labelled;
  // A claimed pool container: its name is its sandbox's id (its labels were set before the claim).
  const name = (c.Names?.[0] ?? '').replace(/^\//, '');
  return c.Labels?.[poolLabel] && sandboxIdPattern.test(name) ? name : undefined;
}

/** True for a pool container nobody has claimed yet. */
export function isUnclaimedPoolContainer(c: { Labels?: Record<string, string> | null; Names?: string[] }): boolean {
  return Boolean(c.Labels?.[poolLabel]) && sandboxIdOf(c) === undefined;
}

/** Unmounts everything at and below `dir` (deepest first, lazily) and removes it. */
export async function removePoolDir(dir: string): Promise<void> {
  if (!existsSync(dir)) return;
  for (const mountPoint of (await mountsUnder(dir)).sort((a, b) => b.length - a.length)) {
    await run('umount', ['-l', mountPoint]).catch(() => undefined);
  }
  const left = await mountsUnder(dir);
  if (left.length > 0) throw new Error(`cannot remove pool directory ${dir}: ${left.join(', ')} still mounted`);
  await rm(dir, { recursive: true, force: true });
}

export interface PoolStats {
  depth: number;
  ready: number;
  claimed: number;
  /** Creates that found the pool empty or their shape not the pool's: made cold. */
  missed: number;
  /** Pool containers made since the daemon started. */
  made: number;
  /** Pool containers that could not be made (the refill retries). */
  failed: number;
}

export class WarmPool {
  private readonly ready: PoolContainer[] = [];
  /** Taken and being claimed: no longer the pool's, not yet a sandbox (reconcile leaves them alone). */
  private readonly claiming = new Set<string>();
  private refilling: Promise<void> | undefined;
  /** A refill deferred after a claim (settings.refillDelayMs). */
  private refillTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private failures = 0;
  private readonly counters = { claimed: 0, missed: 0, made: 0, failed: 0 };

  constructor(
    private readonly config: HostConfig,
    private readonly docker: DockerClient,
    readonly settings: PoolSettings,
    /** Each pool container gets its exec server before it is ready (exec-server.ts); a claim hands it to the sandbox. */
    readonly execServers?: ExecServers,
  ) {}

  stats(): PoolStats {
    return { depth: this.settings.depth, ready: this.ready.length, ...this.counters };
  }

  /**
   * A ready container for this request, taken out of the pool for good; undefined
   * when the pool is empty or the request's shape cannot be made identical to a
   * cold create from it (another image or /tmp size, no network). Starts a refill.
   */
  take(request: Pick<CreateInput, 'image' | 'memoryMb' | 'network'>): PoolContainer | undefined {
    if (this.settings.depth === 0 || this.closed) return undefined;
    const fits = request.network === 'bridge' && tmpSizeMbFor(request.memoryMb, this.config.tmpSizeMb) === this.poolTmpMb();
    const at = fits ? this.ready.findIndex((c) => c.imageRefs.includes(request.image)) : -1;
    const entry = at >= 0 ? this.ready.splice(at, 1)[0] : undefined;
    if (entry) {
      this.counters.claimed++;
      this.claiming.add(entry.containerId);
    } else this.counters.missed++;
    if (entry && this.ready.length > 0 && this.settings.refillDelayMs > 0) this.refillAfterClaim();
    else this.refillNow();
    return entry;
  }

  /** Refills once the claimed sandbox had its first moments to itself; at once if the pool runs dry meanwhile. */
  private refillAfterClaim(): void {
    if (this.refillTimer || this.refilling) return;
    this.refillTimer = setTimeout(() => this.refillNow(), this.settings.refillDelayMs);
    this.refillTimer.unref();
  }

  /**
   * The fleet's image changed on this host (a rollout, image-rollout.ts): the
   * pool fills from `image` from now on, and its ready containers of another
   * image go (no create would claim them, and they would keep the replaced
   * image from being pruned). Containers of the same image (another name of
   * it, e.g. its digest) stay.
   */
  async retarget(image: string): Promise<void> {
    if (image === this.settings.image) return;
    this.settings.image = image;
    const stale = this.ready.filter((c) => !c.imageRefs.includes(image));
    if (stale.length === 0) return;
    for (const entry of stale) this.ready.splice(this.ready.indexOf(entry), 1);
    logger.info('warm pool: containers of the replaced image removed', { image, removed: stale.map((c) => c.name) });
    await Promise.all(stale.map((e) => this.discard(e).catch((err) => logger.error('warm pool: could not remove a container of the replaced image', { err }))));
    this.refillNow();
  }

  /** The claim of a taken container is over (it is a sandbox now, or it was discarded). */
  claimed(entry: Pick<PoolContainer, 'containerId'>): void {
    this.claiming.delete(entry.containerId);
  }

  private poolTmpMb(): number {
    return tmpSizeMbFor(this.settings.memoryMb, this.config.tmpSizeMb);
  }

  /**
   * Fills the pool to its depth in the background, one container at a time; a no-op while a refill runs, or while
   * one deferred after a claim waits (it starts soon: the daemon's periodic top-up must not cut the wait short).
   */
  refill(): void {
    if (this.refillTimer) return;
    this.refillNow();
  }

  private refillNow(): void {
    clearTimeout(this.refillTimer);
    this.refillTimer = undefined;
    if (this.refilling || this.closed || this.settings.depth === 0) return;
    this.refilling = inScope('pool', () => this.fill()).finally(() => (this.refilling = undefined));
  }

  /** Resolves once the pool is full (or closed); for tests and the benchmark. */
  async whenFull(timeoutMs = 120_000): Promise<void> {
    const until = Date.now() + timeoutMs;
    while (!this.closed && this.ready.length < this.settings.depth) {
      if (Date.now() > until) throw new Error(`the warm pool has ${this.ready.length} of ${this.settings.depth} containers after ${timeoutMs} ms`);
      this.refill();
      await (this.refilling ?? new Promise((r) => setTimeout(r, 50)));
    }
  }

  private async fill(): Promise<void> {
    while (!this.closed && this.ready.length < this.settings.depth) {
      try {
        const entry = await span('pool.make', () => this.make());
        if (this.closed) {
          await this.discard(entry);
          return;
        }
        if (!entry.imageRefs.includes(this.settings.image)) {
          // Made from the image a rollout replaced while it was being made.
          await this.discard(entry);
          continue;
        }
        this.ready.push(entry);
        this.counters.made++;
        this.failures = 0;
      } catch (err) {
        this.counters.failed++;
        this.failures++;
        logger.error('warm pool: could not make a container; retrying', { err });
        // Back off: a host that cannot make containers must not spin.
        await new Promise((r) => setTimeout(r, Math.min(30_000, 250 * 2 ** Math.min(this.failures, 7))));
      }
    }
  }

  /** Makes and starts one pool container; leaves nothing behind when it fails. */
  private async make(): Promise<PoolContainer> {
    const poolId = randomBytes(8).toString('hex');
    const name = `${poolNamePrefix}${poolId}`;
    const dir = poolDir(this.config, poolId);
    let containerId: string | undefined;
    try {
      await mkdir(join(dir, 'home'), { recursive: true, mode: 0o755 });
      await mkdir(join(dir, 'cold'), { recursive: true, mode: 0o755 });
      await mkdir(join(dir, 'io'), { recursive: true, mode: 0o711 });
      // Shared before the container starts: Docker accepts slave propagation only from a shared (or slave) mount.
      await run('mount', ['--bind', '--make-shared', dir, dir]);
      const { ensureSandboxNetwork } = await import('./network');
      const [network, image] = await Promise.all([ensureSandboxNetwork(this.config, this.docker), this.docker.inspectImage(this.settings.image)]);
      const spec = containerSpec(
        {
          sandboxId: name,
          tenantId: 'pool',
          userId: 'pool',
          image: this.settings.image,
          cpu: this.settings.cpu,
          memoryMb: this.settings.memoryMb,
          pidsLimit: this.settings.pidsLimit,
          network: 'bridge',
          egress: 'deny_all',
          env: {},
          labels: {},
        },
        this.config,
        { home: join(dir, 'home'), cold: join(dir, 'cold'), io: join(dir, 'io') },
        network,
      );
      spec.Labels = {
        [containerLabels.owner]: ownerLabelValue,
        [poolLabel]: poolId,
        [containerLabels.createdAt]: new Date().toISOString(),
        ...(this.config.hostId ? { [containerLabels.hostId]: this.config.hostId } : {}),
      };
      spec.HostConfig!.Binds = [
        `${join(dir, 'home')}:${sandboxHome}:rw,rslave`,
        `${join(dir, 'cold')}:${sandboxColdMount}:rw,rslave`,
        `${join(dir, 'io')}:${sandboxIoMount}:ro`,
      ];
      ({ Id: containerId } = await this.docker.createContainer(name, spec));
      await this.docker.startContainer(containerId);
      const identity = identityOf(await this.docker.inspectContainer(containerId));
      if (!identity) throw new Error(`pool container ${name} is not running after its start`);
      // Off the claim's path; without one (it failed to start) the sandbox's commands go through docker exec.
      await this.execServers?.start(name, join(dir, 'io'), sandboxIoMount);
      const imageRefs = [...new Set([this.settings.image, ...(image.RepoTags ?? []), ...(image.RepoDigests ?? [])])];
      const { cpu, memoryMb, pidsLimit } = this.settings;
      return {
        poolId,
        name,
        containerId,
        dir,
        imageId: image.Id,
        imageRefs,
        networkId: network.id,
        resources: { cpu, memoryMb, pidsLimit },
        identity,
      };
    } catch (error) {
      if (containerId) await this.docker.removeContainer(containerId, true).catch(() => undefined);
      await removePoolDir(dir).catch(() => undefined);
      throw error;
    }
  }

  /** Removes a pool container and its directory (a claim that failed, a stale one). */
  async discard(entry: Pick<PoolContainer, 'containerId' | 'dir'> & { name?: string }): Promise<void> {
    if (entry.name) this.execServers?.forget(entry.name);
    try {
      await this.docker.removeContainer(entry.containerId, true);
    } catch (error) {
      if (!(error instanceof DockerApiError && (error.statusCode === 404 || error.statusCode === 409))) throw error;
    }
    await removePoolDir(entry.dir);
  }

  /**
   * Keeps Docker and the pool in step: pool containers this pool does not hold
   * as ready (a previous daemon's, half-made ones, ones that exited) are
   * removed with their directories; ready ones that are gone or stopped leave
   * the pool. Claimed pool containers are sandboxes: the sandbox reconcile owns them.
   */
  async reconcile(): Promise<{ removed: string[] }> {
    const removed: string[] = [];
    const label = [`${containerLabels.owner}=${ownerLabelValue}`, poolLabel];
    if (this.config.hostId) label.push(`${containerLabels.hostId}=${this.config.hostId}`);
    const containers = await this.docker.listContainers({ label });
    const readyIds = new Set(this.ready.map((e) => e.containerId));
    const running = new Set(containers.filter((c) => c.State === 'running').map((c) => c.Id));
    for (let i = this.ready.length - 1; i >= 0; i--) {
      const entry = this.ready[i]!;
      if (running.has(entry.containerId)) continue;
      this.ready.splice(i, 1);
      await this.discard(entry).catch((err) => logger.error('warm pool: could not remove a stopped pool container', { err }));
      removed.push(entry.name);
    }
    const inUse = new Set<string>();
    for (const c of containers) {
      const poolId = c.Labels[poolLabel] ?? '';
      if (!isUnclaimedPoolContainer(c) || readyIds.has(c.Id) || this.claiming.has(c.Id)) {
        inUse.add(poolId);
        continue;
      }
      // Made in the last minute by a refill that has not handed it over yet: not a leftover.
      if (this.refilling && Date.now() - c.Created * 1000 < 60_000) {
        inUse.add(poolId);
        continue;
      }
      await this.discard({ containerId: c.Id, dir: poolDir(this.config, poolId) }).catch((err) =>
        logger.error('warm pool: could not remove a leftover pool container', { err }),
      );
      removed.push(c.Names[0] ?? c.Id);
    }
    // Directories whose container is gone (a crash between mkdir and create, a claimed sandbox long removed).
    const root = join(this.config.stateDir, 'pool');
    if (existsSync(root) && !this.refilling) {
      for (const poolId of await readdir(root)) {
        if (inUse.has(poolId) || this.ready.some((e) => e.poolId === poolId)) continue;
        await removePoolDir(join(root, poolId)).catch((err) => logger.error('warm pool: could not remove a pool directory', { err }));
      }
    }
    return { removed };
  }

  /** Stops refilling; with `remove`, removes the ready containers too. */
  async close(o: { remove?: boolean } = {}): Promise<void> {
    this.closed = true;
    clearTimeout(this.refillTimer);
    await this.refilling?.catch(() => undefined);
    if (o.remove) {
      const entries = this.ready.splice(0);
      await Promise.all(entries.map((e) => this.discard(e).catch(() => undefined)));
    }
  }
}
