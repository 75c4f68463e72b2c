/**
 * One sandbox host of the local stack: what an EC2 instance of the Auto
 * Scaling group is on AWS, on this machine. Each has its own instance id
 * (SSM managed-instance form), state directory, sandbox network (and firewall
 * chains, resolver and egress proxy on its own gateway), agent socket, SSM
 * registration with its own environment, and its daemon supervised as a
 * service (host-supervisor.ts) in a cgroup of its own; its cold mounts run in
 * another (COLD_MOUNT_CGROUP), as they do outside the daemon's unit on AWS.
 * Several hosts share the one Docker engine; containers carry their host's id.
 */
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, rmdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { getHost } from '../../lambdas/shared/host-store';
import { logger } from '../../lambdas/shared/logger';
import { killCgroup, superviseService, type SupervisedService } from './host-supervisor';
import { removeContainersOfHost, removeNetwork, sandboxNetworkGateway } from './sandbox-network';
import type { SsmEndpoint } from './ssm-endpoint';

export interface LocalHostOptions {
  /** @default a fresh mi-<17 hex> */
  hostId?: string;
  /** Most sandboxes at once (HOST_SLOTS). @default 16 */
  slots?: number;
  /** What the host advertises to placement (HOST_ALLOCATABLE_*): hosts sharing this machine cannot each claim all of it. */
  allocatable?: { cpu?: number; memoryMb?: number; diskMb?: number };
  /** More host environment (host.env on AWS). */
  env?: Record<string, string>;
  /** Wait until the host registered itself. @default true */
  waitForRegistration?: boolean;
}

export interface LocalHost {
  hostId: string;
  stateDir: string;
  sandboxNetwork: string;
  /** The API as this host's sandboxes reach it (their network's gateway). */
  sandboxApiUrl: string;
  /** The host's environment (what SSM runs its commands with, and its daemon's). */
  env: Record<string, string>;
  /** The daemon's service. */
  service: SupervisedService;
  /** The daemon's process now (null between a crash and its restart, or once stopped). */
  daemon(): ChildProcess | null;
  /** Stops the daemon's service (no restart) until startDaemon(). */
  stopDaemon(): Promise<void>;
  startDaemon(): void;
  /**
   * The machine goes away at once, as a terminated or failed instance does:
   * SSM no longer reaches it, its daemon and mounts die, its containers are gone.
   */
  vanish(): Promise<void>;
  /** Removes everything the host made (containers, mounts, network, state). */
  close(): Promise<void>;
}

/** What the stack gives every host. */
export interface LocalHostContext {
  repoRoot: string;
  /** The stack's environment (credentials, endpoints, tables, limits). */
  baseEnv: Record<string, string>;
  ssm: SsmEndpoint;
  /** The API's port, and a way to serve it on a host's gateway. */
  apiPort: number;
  serveApiOn(address: string): Promise<void>;
  /** This stack's cgroup directory (hosts' service and mount cgroups live below it). */
  cgroupDir: string;
  heartbeatSeconds: number;
  /** Given each start of a daemon (its stdout and stderr piped) to read its lines; without it they are inherited. */
  daemonOutput?: (child: ChildProcess) => void;
  signal?: AbortSignal;
}

/** A local host id in SSM's managed-instance form (on-premises hosts are mi-...). */
export function localHostId(): string {
  return 'mi-' + Array.from({ length: 17 }, () => '0123456789abcdef'[Math.floor(Math.random() * 16)]).join('');
}

export async function startLocalHost(ctx: LocalHostContext, o: LocalHostOptions = {}): Promise<LocalHost> {
  const hostId = o.hostId ?? localHostId();
  const stateDir = mkdtempSync(join(tmpdir(), 'ephemeral-sandbox-host-'));
  const cgroupDir = join(ctx.cgroupDir, hostId);
  const cleanups: (() => Promise<void> | void)[] = [() => removeStateDir(stateDir)];
  const closeAll = async () => {
    for (const c of cleanups.splice(0).reverse()) {
      try {
        await c();
      } catch (err) {
        logger.error('local host: cleanup step failed', { hostId, err });
      }
    }
  };
  try {
    // A network (and firewall chains) of its own, so hosts side by side never rewrite each other's egress rules.
    const sandboxNetwork = o.env?.SANDBOX_NETWORK ?? `sbx-${hostId.slice(-8)}`;
    const gateway = await sandboxNetworkGateway(sandboxNetwork);
    cleanups.push(() => removeNetwork(sandboxNetwork));
    // Runs again at close once the daemon is stopped: a create that was still running may have made a container.
    cleanups.push(() => removeContainersOfHost(hostId, stateDir));
    await ctx.serveApiOn(gateway);
    const sandboxApiUrl = `http://${gateway}:${ctx.apiPort}`;
    const env: Record<string, string> = {
      ...ctx.baseEnv,
      HOST_ID: hostId,
      HOST_SLOTS: String(o.slots ?? 16),
      STATE_DIR: stateDir,
      AGENT_SOCKET: join(stateDir, 'agent.sock'),
      SANDBOX_NETWORK: sandboxNetwork,
      SANDBOX_API_URL: sandboxApiUrl,
      EGRESS_ALLOW: `${gateway}:${ctx.apiPort}`,
      HOST_HEARTBEAT_SECONDS: String(ctx.heartbeatSeconds),
      COLD_MOUNT_CGROUP: join(cgroupDir, 'mounts'),
      // A development machine has few cores and runs many small test sandboxes: CPU limits are quotas, promise more.
      HOST_CPU_OVERCOMMIT: '8',
      ...(o.allocatable?.cpu !== undefined ? { HOST_ALLOCATABLE_CPU: String(o.allocatable.cpu) } : {}),
      ...(o.allocatable?.memoryMb !== undefined ? { HOST_ALLOCATABLE_MEMORY_MB: String(o.allocatable.memoryMb) } : {}),
      ...(o.allocatable?.diskMb !== undefined ? { HOST_ALLOCATABLE_DISK_MB: String(o.allocatable.diskMb) } : {}),
      ...o.env,
    };
    ctx.ssm.registerInstance(hostId, { ...process.env, ...env });
    cleanups.push(() => ctx.ssm.deregisterInstance(hostId));
    ctx.signal?.throwIfAborted();

    const service = superviseService({
      name: `host daemon ${hostId}`,
      file: process.execPath,
      args: [join(ctx.repoRoot, 'dist', 'host-agent-daemon.mjs')],
      env: { ...process.env, ...env, SANDBOX_TIMINGS_ROLE: 'host' },
      cgroupDir: join(cgroupDir, 'daemon'),
      ...(ctx.daemonOutput ? { stdio: ['ignore', 'pipe', 'pipe'] as const, onStart: ctx.daemonOutput } : {}),
    });
    let serviceStopped = false;
    const stopService = async () => {
      serviceStopped = true;
      await service.stop();
    };
    cleanups.push(stopService);
    // The host's mounts: after the daemon, before the state directory (removeContainersOfHost unmounts them first).
    cleanups.push(async () => {
      // Cleanups run last-pushed first: stop the service here (SIGTERM, no restart) before its cgroup is killed.
      if (!serviceStopped) await stopService();
      // Whatever the daemon's service left behind (a verb still running) goes as systemd's KillMode=control-group does.
      await killCgroup(join(cgroupDir, 'daemon')).catch(() => undefined);
      await killCgroup(join(cgroupDir, 'mounts')).catch(() => undefined);
      await removeCgroupTreeWhenEmpty(cgroupDir);
    });
    cleanups.push(() => removeContainersOfHost(hostId, stateDir));
    if (o.waitForRegistration ?? true) await waitForHost(hostId, ctx.signal);

    return {
      hostId,
      stateDir,
      sandboxNetwork,
      sandboxApiUrl,
      env,
      service,
      daemon: () => service.process() ?? null,
      stopDaemon: async () => {
        if (!serviceStopped) await stopService();
      },
      startDaemon: () => {
        serviceStopped = false;
        service.start();
      },
      vanish: async () => {
        ctx.ssm.deregisterInstance(hostId);
        await stopService();
        await removeContainersOfHost(hostId, stateDir);
        await killCgroup(join(cgroupDir, 'mounts')).catch(() => undefined);
      },
      close: closeAll,
    };
  } catch (err) {
    await closeAll();
    throw err;
  }
}

/** Waits until the daemon registered the host (bounded). */
async function waitForHost(hostId: string, signal?: AbortSignal, timeoutMs = 30_000): Promise<void> {
  const started = Date.now();
  while (Date.now() - started < timeoutMs) {
    signal?.throwIfAborted();
    const host = await getHost(hostId);
    if (host && host.status !== 'lost' && host.last_heartbeat_at >= started - 1000) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`the host daemon did not register host ${hostId} within ${timeoutMs / 1000} s`);
}

/** Removes a host's state directory, but never recursively through a mount that is still there (a cold tier's S3 objects). */
function removeStateDir(stateDir: string): void {
  const mounted = readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[1] ?? '')
    .filter((m) => m === stateDir || m.startsWith(stateDir + '/'));
  if (mounted.length > 0) throw new Error(`${stateDir} still has mounts (${mounted.join(', ')}); not removing it: unmount them and remove it by hand`);
  rmSync(stateDir, { recursive: true, force: true });
}

/**
 * Removes an emptied cgroup tree; a cgroup whose last process was just killed
 * may still count as populated for a moment (EBUSY), so it is tried again for a while.
 */
export async function removeCgroupTreeWhenEmpty(dir: string, timeoutMs = 5_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    try {
      removeCgroupTree(dir);
      return;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EBUSY' || Date.now() > until) throw error;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/** Removes an emptied cgroup directory and its (empty) children, deepest first. */
function removeCgroupTree(dir: string): void {
  let children: string[];
  try {
    children = readdirSync(dir, { withFileTypes: true })
      .filter((e) => e.isDirectory())
      .map((e) => e.name);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw error;
  }
  for (const child of children) removeCgroupTree(join(dir, child));
  try {
    rmdirSync(dir);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
}
