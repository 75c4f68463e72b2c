/**
 * The create verb: one hardened container per sandbox, named after it.
 */
import type { ContainerCreateOptions, ContainerInspectInfo } from 'dockerode';
import type { z } from 'zod';
import { mkdir } from 'node:fs/promises';
import { sandboxPaths, type HostConfig } from './config';
import { DockerApiError, type DockerClient } from './docker';
import { HostAgentError } from './errors';
import { containerLabels, ownerLabelValue, type CreateResult } from '../../contract/host-protocol';
import type { createRequest } from '../../contract/host-requests';
import { writeEgressPolicyFile } from './egress/sandbox-egress';
import { attachCold, prepareHome } from './sandbox-storage';
import { span } from '../../lambdas/shared/timing';
import { allEnded } from './all-ended';
import type { WarmPool } from './warm-pool';

export type CreateInput = z.output<typeof createRequest>;

/** Request labels are stored under this prefix, so they can never overwrite ours. */
export const userLabelPrefix = 'dev.ephemeral-sandbox.label.';

export const sandboxHome = '/home/agent';
export const sandboxColdMount = '/data/cold';
/**
 * Where a sandbox sees its commands' stdio FIFOs: a read-only bind of a
 * root-owned host directory, so the sandbox can open the FIFOs the host made
 * and can neither add, remove nor replace any entry there.
 */
export const sandboxIoMount = '/run/sandbox/io';
/** Open files per process inside a sandbox (soft, hard). */
export const sandboxNofile = { soft: 8192, hard: 8192 };
/** Size of the /run tmpfs (pid files, sockets of tools that expect a writable /run). */
const runTmpfsMb = 16;

/**
 * The /tmp tmpfs of a sandbox: half its memory (its pages count against the
 * sandbox's memory limit, so a full /tmp leaves the other half to run
 * commands, stop and start), at most `capMb` (SANDBOX_TMP_MB).
 */
export function tmpSizeMbFor(memoryMb: number, capMb: number): number {
  return Math.max(1, Math.min(capMb, Math.floor(memoryMb / 2)));
}

/** True when the container carries our owner label. */
export function isOwned(info: { Config?: { Labels?: Record<string, string> | null } } | undefined): boolean {
  return info?.Config?.Labels?.[containerLabels.owner] === ownerLabelValue;
}

/** The container definition: everything the hardening checklist asks for, in one place. */
export function containerSpec(
  request: CreateInput,
  config: HostConfig,
  paths: { home: string; cold: string; io: string },
  network: { name: string; gateway?: string | undefined },
): ContainerCreateOptions {
  const memoryBytes = request.memoryMb * 1024 * 1024;
  const labels: Record<string, string> = {};
  for (const [key, value] of Object.entries(request.labels)) labels[userLabelPrefix + key] = value;
  Object.assign(labels, {
    [containerLabels.owner]: ownerLabelValue,
    [containerLabels.sandboxId]: request.sandboxId,
    [containerLabels.tenantId]: request.tenantId,
    [containerLabels.userId]: request.userId,
    [containerLabels.createdAt]: new Date().toISOString(),
    ...(config.hostId ? { [containerLabels.hostId]: config.hostId } : {}),
  });
  return {
    Image: request.image,
    Hostname: request.sandboxId,
    User: `${config.sandboxUid}:${config.sandboxGid}`,
    WorkingDir: sandboxHome,
    // A keep-alive: commands arrive through exec; docker-init (Init) reaps what they leave behind.
    Cmd: ['sleep', 'infinity'],
    Env: Object.entries({
      ...request.env,
      ...(config.sandboxApiUrl && request.env.SANDBOX_API_URL !== undefined ? { SANDBOX_API_URL: config.sandboxApiUrl } : {}),
    }).map(([name, value]) => `${name}=${value}`),
    Labels: labels,
    AttachStdin: false,
    AttachStdout: false,
    AttachStderr: false,
    Tty: false,
    OpenStdin: false,
    NetworkDisabled: request.network === 'none',
    HostConfig: {
      Init: true,
      NetworkMode: network.name,
      // The sandbox resolver on the gateway (the host daemon's): Docker's embedded DNS forwards every name there.
      ...(network.gateway ? { Dns: [network.gateway], DnsOptions: [], DnsSearch: [] } : {}),
      Privileged: false,
      CapDrop: ['ALL'],
      // Docker's default seccomp profile stays on: no seccomp=unconfined here.
      SecurityOpt: ['no-new-privileges:true'],
      ReadonlyRootfs: true,
      Tmpfs: {
        // exec: Docker's tmpfs default is noexec, which breaks tools that build and run in /tmp.
        '/tmp': `rw,exec,nosuid,nodev,size=${tmpSizeMbFor(request.memoryMb, config.tmpSizeMb)}m`,
        '/run': `rw,nosuid,nodev,noexec,size=${runTmpfsMb}m`,
      },
      // rslave on the cold tier: a mount the host makes there later (a FUSE client that died, mounted again) reaches the
      // container; nothing the container mounts reaches the host. The state directory is a shared mount for this (readopt.ts).
      Binds: [`${paths.home}:${sandboxHome}:rw`, `${paths.cold}:${sandboxColdMount}:rw,rslave`, `${paths.io}:${sandboxIoMount}:ro`],
      NanoCpus: Math.round(request.cpu * 1e9),
      Memory: memoryBytes,
      // Equal to Memory: no swap on top of the limit.
      MemorySwap: memoryBytes,
      PidsLimit: request.pidsLimit,
      Ulimits: [
        { Name: 'nofile', Soft: sandboxNofile.soft, Hard: sandboxNofile.hard },
        { Name: 'core', Soft: 0, Hard: 0 },
      ],
      IpcMode: 'private',
      // Under memory pressure the kernel picks sandboxes before the host's own daemons.
      OomScoreAdj: 500,
      PublishAllPorts: false,
      PortBindings: {},
      RestartPolicy: { Name: 'no', MaximumRetryCount: 0 },
      LogConfig: { Type: 'json-file', Config: { 'max-size': '1m', 'max-file': '1' } },
    },
  };
}

async function ensureImage(docker: DockerClient, image: string): Promise<void> {
  // Pulled with the registry's credentials (ECR) when the host does not have it: a rollout pre-pulls, this is the fallback.
  await (await import('./image-rollout')).ensureImagePresent(docker, image);
}

/** FIFOs for the sandbox's first commands, made off the create's path (fifo-stdio.ts); a failure costs only a later spawn. */
function startSpareFifos(io: string): void {
  void import('./commands/fifo-stdio').then(({ makeSpareFifos }) => makeSpareFifos(io)).catch(() => undefined);
}

/**
 * Starts the exec server of a sandbox whose container just started (a cold create, a resume), off the verb's path:
 * ready, most often, before the first command arrives, which would otherwise start through docker exec and start
 * the server beside it. A server that fails to start costs nothing more (commands use docker exec).
 */
export function startExecServer(pool: WarmPool | undefined, config: HostConfig, sandboxId: string): void {
  void pool?.execServers?.start(sandboxId, sandboxPaths(config, sandboxId).io, sandboxIoMount);
}

/** Starts an owned container if it is not running, and answers its id. */
async function adopt(docker: DockerClient, info: ContainerInspectInfo, request: CreateInput, config: HostConfig): Promise<string> {
  if (!isOwned(info)) {
    throw new HostAgentError('bad_request', `a container named ${request.sandboxId} exists on this host and is not a sandbox; remove it or use another id`);
  }
  if (!info.State.Running) {
    const { linkPoolBinds, readClaim, applyIdentity } = await import('./claim');
    const claim = readClaim(config, request.sandboxId);
    if (claim) await linkPoolBinds(config, request.sandboxId, claim);
    await docker.startContainer(info.Id);
    if (claim) await applyIdentity(docker, info.Id, request.sandboxId);
    if (request.network !== 'none') await (await import('./network')).refreshSandboxPolicies(config, docker);
  }
  return info.Id;
}

/**
 * Creates and starts the sandbox's container; a retried create answers the
 * existing container instead of making a second one.
 */
export async function createSandbox(request: CreateInput, config: HostConfig, docker: DockerClient, pool?: WarmPool): Promise<CreateResult> {
  const started = Date.now();
  const existing = await docker.inspectContainer(request.sandboxId);
  if (existing) return { containerId: await adopt(docker, existing, request, config), hostMs: Date.now() - started };

  const ctx = { config, sandboxId: request.sandboxId, storage: request.storage, diskMb: request.diskMb };
  // Independent steps run side by side: create time is the slowest, not the sum. A failure surfaces once
  // every step ended: the failed create's clean-up must not race a mount still being made.
  const [network, , { home, hotSync }, cold] = await allEnded([
    request.network === 'none'
      ? { name: 'none' }
      : span('host.network', () => import('./network').then(({ ensureSandboxNetwork }) => ensureSandboxNetwork(config, docker))),
    span('host.image', () => ensureImage(docker, request.image)),
    span('host.storage.home', () => prepareHome(ctx)),
    span('host.storage.cold', () => attachCold(ctx)),
  ]);
  // Before the container exists: the resolver and proxy must never see it without its policy.
  if (request.network !== 'none') await writeEgressPolicyFile(config, request.sandboxId, request.egress);

  // A warm pool container of the same shape, when the host daemon has one: no Docker create or start.
  const pooled = pool?.take(request);
  if (pooled) {
    const { claimPoolContainer } = await import('./claim');
    if (await span('host.claim', () => claimPoolContainer(pooled, request, config, docker, pool!, network as { id?: string }))) {
      startSpareFifos(sandboxPaths(config, request.sandboxId).io);
      return { containerId: pooled.containerId, hostMs: Date.now() - started, pooled: true, ...(hotSync ? { hotSync } : {}) };
    }
  }

  const io = sandboxPaths(config, request.sandboxId).io;
  await mkdir(io, { recursive: true, mode: 0o711 });
  let containerId: string;
  try {
    ({ Id: containerId } = await docker.createContainer(request.sandboxId, containerSpec(request, config, { home, cold, io }, network)));
  } catch (error) {
    // A concurrent create of the same sandbox won the name: answer its container.
    if (error instanceof DockerApiError && error.statusCode === 409) {
      const winner = await docker.inspectContainer(request.sandboxId);
      if (winner) return { containerId: await adopt(docker, winner, request, config), hostMs: Date.now() - started };
    }
    throw error;
  }
  try {
    await docker.startContainer(containerId);
  } catch (error) {
    // Leave nothing half-made behind: a retry starts clean.
    try {
      await docker.removeContainer(containerId, true);
    } catch (cleanupError) {
      throw new HostAgentError('docker_error', `${(error as Error).message}; removing the unstarted container also failed: ${(cleanupError as Error).message}`);
    }
    throw error;
  }
  // Docker may have handed it the address of a sandbox that just left: rebuild the fast path before it runs anything.
  if (request.network !== 'none') await span('host.egress-refresh', async () => (await import('./network')).refreshSandboxPolicies(config, docker));
  startSpareFifos(io);
  startExecServer(pool, config, request.sandboxId);
  return { containerId, hostMs: Date.now() - started, ...(hotSync ? { hotSync } : {}) };
}
