/**
 * The host daemon (systemd on AWS, a child process in the local stack):
 * registers this host in DynamoDB, heartbeats it, syncs every running
 * sandbox's hot tier on an interval, and reconciles containers with records
 * so nothing leaks either way:
 *   - a container with no live record (a create that crashed half-way, a
 *     destroy that never reached the host) is removed after a grace period;
 *   - a live record whose container vanished is marked failed.
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { dirname } from 'node:path';
import { s3 } from '../../lambdas/shared/clients/s3';
import { config as controlPlaneConfig } from '../../lambdas/shared/config';
import { heartbeatHost, registerHost, setSlotsUsed } from '../../lambdas/shared/host-store';
import { logger } from '../../lambdas/shared/logger';
import type { SandboxRecord } from '../../lambdas/shared/sandbox-record';
import { getSandbox, liveSandboxesOnHost } from '../../lambdas/shared/sandbox-store';
import { settledStatuses } from '../../lambdas/shared/sandbox-state';
import { sandboxIdPattern } from '../../lambdas/shared/schemas';
import { beginShutdown, markEnded, storageFor } from '../../lambdas/shared/sandboxes';
import { EgressLogWriter } from '../../lambdas/shared/egress-log';
import { applyEnvFile, loadHostConfig } from './config';
import { startEgressGateway } from './egress/gateway';
import { DockerClient } from './docker';
import { CommandRunner } from './commands/runner';
import { SandboxFiles } from './files/sandbox-files';
import { envelopeLine, runHostAgent, type DaemonRuntime } from './invocation';
import { destroySandbox, syncSandbox } from './lifecycle';
import { checkEgressRules, ensureSandboxNetwork } from './network';
import { retryKeptHomes } from './sandbox-storage';
import { containerLabels, hostVerbs, ownerLabelValue } from './protocol';

const agentVersion = '0.1.0';

function seconds(name: string, fallback: number): number {
  const raw = process.env[name];
  const n = raw === undefined || raw === '' ? fallback : Number(raw);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a number of seconds, got "${raw}"`);
  return n;
}

export interface DaemonSettings {
  hostId: string;
  /** Unix socket on which the daemon runs host-agent verbs for bin/host-agent. */
  agentSocket: string;
  slots: number;
  heartbeatSeconds: number;
  /** Period of the reconcile pass (its own loop: a slow pass never delays a heartbeat). */
  reconcileSeconds: number;
  reconcileGraceSeconds: number;
  hotSyncIntervalSeconds: number;
}

export function daemonSettings(): DaemonSettings {
  const hostId = process.env.HOST_ID ?? '';
  if (!/^(i|mi)-[0-9a-f]{8,17}$/.test(hostId)) throw new Error(`HOST_ID must be an EC2 or SSM managed instance id, got "${hostId}"`);
  const heartbeatSeconds = seconds('HOST_HEARTBEAT_SECONDS', 15);
  return {
    hostId,
    agentSocket: process.env.AGENT_SOCKET || '/run/ephemeral-sandbox/agent.sock',
    slots: seconds('HOST_SLOTS', 8),
    heartbeatSeconds,
    reconcileSeconds: seconds('RECONCILE_INTERVAL_SECONDS', heartbeatSeconds),
    reconcileGraceSeconds: seconds('RECONCILE_GRACE_SECONDS', 60),
    hotSyncIntervalSeconds: seconds('HOT_SYNC_INTERVAL_SECONDS', 60),
  };
}

export interface ReconcileReport {
  containers: number;
  liveRecords: number;
  removedOrphans: string[];
  failedVanished: string[];
  /** Containers that exited on their own: their sandboxes are being ended (the reaper syncs and removes them). */
  endedExited: string[];
}

/** One reconciliation pass; exported for tests. */
export async function reconcile(s: DaemonSettings, docker: DockerClient, now = Date.now()): Promise<ReconcileReport> {
  const hostConfig = loadHostConfig();
  const containers = await docker.listContainers({
    label: [`${containerLabels.owner}=${ownerLabelValue}`, `${containerLabels.hostId}=${s.hostId}`],
  });
  const records = await liveSandboxesOnHost(s.hostId);
  const recordIds = new Set(records.map((r) => r.sandbox_id));
  const containerIds = new Set(containers.map((c) => c.Labels[containerLabels.sandboxId] ?? ''));
  const graceMs = s.reconcileGraceSeconds * 1000;
  const report: ReconcileReport = { containers: containers.length, liveRecords: records.length, removedOrphans: [], failedVanished: [], endedExited: [] };

  for (const c of containers) {
    const sandboxId = c.Labels[containerLabels.sandboxId] ?? '';
    if (recordIds.has(sandboxId)) continue;
    if (now - c.Created * 1000 < graceMs) continue; // a create may still be recording it
    // Re-read: the index is eventually consistent, the record is the truth.
    const record = sandboxIdPattern.test(sandboxId) ? await getSandbox(sandboxId) : undefined;
    if (record?.live_host_id === s.hostId) continue;
    const tenant = c.Labels[containerLabels.tenantId];
    const user = c.Labels[containerLabels.userId];
    // An ended sandbox keeps its user's files: sync before removing. A half-made one has none worth keeping.
    const graceful = Boolean(record && tenant && user);
    try {
      if (sandboxIdPattern.test(sandboxId) && c.Names.includes(`/${sandboxId}`)) {
        await destroySandbox(
          { sandboxId, graceful, ...(graceful ? { storage: storageFor(tenant!, user!) } : {}) },
          hostConfig,
          docker,
        );
      } else {
        // Our labels on a container the host-agent did not name: no sandbox state to save, remove it by id.
        await docker.removeContainer(c.Id, true);
      }
    } catch (err) {
      logger.error('reconcile: could not remove an orphaned container; retrying next pass', { sandboxId, err });
      continue;
    }
    report.removedOrphans.push(sandboxId || c.Id);
    logger.warn('reconcile: removed a container with no live record', { sandboxId, containerId: c.Id, hadRecord: Boolean(record) });
  }

  for (const r of records) {
    if (containerIds.has(r.sandbox_id)) continue;
    // creating, pausing, resuming, shutting_down: the verb at work (or the reaper) finishes them.
    if (!(settledStatuses as readonly string[]).includes(r.status)) continue;
    if (now - Date.parse(r.created_at) < graceMs) continue;
    // The by-host index does not carry host_id: this host is the one whose slot it held.
    const ended = await markEnded({ sandbox_id: r.sandbox_id, host_id: s.hostId }, {
      event: 'fail',
      reason: 'container_vanished',
      detail: `container missing on host ${s.hostId}`,
      only: settledStatuses,
    });
    if (ended) {
      report.failedVanished.push(r.sandbox_id);
      logger.warn('reconcile: container vanished; sandbox marked failed', { sandboxId: r.sandbox_id });
    }
    // What the container had on the host (the home on disk, the cold mount and its FUSE process) does not vanish with it:
    // the home is synced (or kept for a later sync), the rest removed.
    try {
      await destroySandbox({ sandboxId: r.sandbox_id, graceful: true, storage: storageFor(r.tenant_id, r.user_id) }, hostConfig, docker);
    } catch (err) {
      logger.error('reconcile: could not clean up after a vanished container; retrying next pass', { sandboxId: r.sandbox_id, err });
    }
  }

  // A container that exited on its own (its init died, the kernel killed it) is no sandbox any more: end it gracefully.
  const byId = new Map(containers.map((c) => [c.Labels[containerLabels.sandboxId] ?? '', c]));
  for (const r of records) {
    const c = byId.get(r.sandbox_id);
    if (!c || (r.status !== 'ready' && r.status !== 'running')) continue;
    if (c.State !== 'exited' && c.State !== 'dead') continue;
    const full = await getSandbox(r.sandbox_id);
    if (!full || (full.status !== 'ready' && full.status !== 'running')) continue;
    // Due at once: the reaper syncs the home and removes the container, as for any end.
    if (await beginShutdown(full, 'container_exited', `the container exited on its own (${c.Status})`, { dueNow: true })) {
      report.endedExited.push(r.sandbox_id);
      logger.warn('reconcile: container exited on its own; sandbox ending', { sandboxId: r.sandbox_id, state: c.Status });
    }
  }

  await setSlotsUsed(s.hostId, (await liveSandboxesOnHost(s.hostId)).length);
  return report;
}

async function syncRunningSandboxes(s: DaemonSettings, docker: DockerClient): Promise<void> {
  const hostConfig = loadHostConfig();
  for (const r of await liveSandboxesOnHost(s.hostId)) {
    if (r.status !== 'ready' && r.status !== 'running') continue;
    try {
      await syncSandbox({ sandboxId: r.sandbox_id, storage: storageFor(r.tenant_id, r.user_id) }, hostConfig, docker);
    } catch (err) {
      logger.error('hot sync: incremental sync failed; the next interval retries', { sandboxId: r.sandbox_id, err });
    }
  }
}

/**
 * Serves host-agent verbs on a root-only unix socket: POST /v1/<verb> with
 * the request argument (`b64:...` or `s3:...`) as the body answers the same
 * envelope line the CLI prints. The SSM command's wrapper (bin/host-agent)
 * uses it so a call costs a curl, not a Node start.
 */
export async function serveAgentSocket(path: string, runtime?: DaemonRuntime): Promise<Server> {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  rmSync(path, { force: true });
  const server = createServer(async (req, res) => {
    const verb = /^\/v1\/([a-z]+)$/.exec(req.url ?? '')?.[1];
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of req) {
      size += (chunk as Buffer).length;
      if (size > 1024 * 1024) break;
      chunks.push(chunk as Buffer);
    }
    if (req.method !== 'POST' || !verb || !(hostVerbs as readonly string[]).includes(verb) || size > 1024 * 1024) {
      res.writeHead(404, { 'Content-Type': 'text/plain' }).end('unknown verb\n');
      return;
    }
    const envelope = await runHostAgent([verb, Buffer.concat(chunks).toString('utf8')], runtime);
    res.writeHead(200, { 'Content-Type': 'application/json' }).end(envelopeLine(envelope));
  });
  server.requestTimeout = 0; // execs run up to their own timeout
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => resolve());
  });
  chmodSync(path, 0o600);
  return server;
}

/** One lifecycle verb at a time per sandbox: a stop racing a destroy runs after it, never alongside. */
function perSandboxQueue(): DaemonRuntime['serialize'] {
  const tails = new Map<string, Promise<unknown>>();
  return (sandboxId, work) => {
    const previous = tails.get(sandboxId) ?? Promise.resolve();
    const next = previous.catch(() => undefined).then(work);
    tails.set(sandboxId, next);
    void next.finally(() => {
      if (tails.get(sandboxId) === next) tails.delete(sandboxId);
    }).catch(() => undefined);
    return next;
  };
}

/** Runs `fn` every `ms`, never overlapping itself, logging (not swallowing) failures. */
function every(ms: number, name: string, fn: () => Promise<unknown>): () => void {
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const tick = async () => {
    try {
      await fn();
    } catch (err) {
      logger.error(`daemon: ${name} failed`, { err });
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  timer = setTimeout(tick, ms);
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

export async function runDaemon(s = daemonSettings()): Promise<() => void> {
  const hostConfig = loadHostConfig();
  const docker = new DockerClient(hostConfig.dockerSocket);
  const network = await ensureSandboxNetwork(hostConfig, docker, { recheck: true });
  // Installed is not enough: read the rules back, and never serve sandboxes without them.
  const egress = await checkEgressRules(hostConfig, docker);
  if (egress.missing.length > 0) throw new Error(`daemon: the egress firewall is incomplete after install: ${egress.missing.join('; ')}`);
  logger.info('daemon: sandbox network ready', { network });
  const egressLog = new EgressLogWriter();
  const gateway = await startEgressGateway(hostConfig, docker, network, egressLog);
  const cp = controlPlaneConfig();
  const runner = new CommandRunner({
    docker,
    hostConfig,
    s3: s3(),
    bucket: cp.bucket,
    runnerId: `${s.hostId}:${randomBytes(6).toString('hex')}`,
    outputMaxBytes: cp.limits.commandOutputMaxBytes,
  });
  const files = new SandboxFiles({ docker, hostConfig, s3: s3(), bucket: cp.bucket });
  const socket = await serveAgentSocket(s.agentSocket, { runner, files, serialize: perSandboxQueue() });
  await registerHost({ hostId: s.hostId, capacity: s.slots, agentVersion });
  logger.info('daemon: host registered', { hostId: s.hostId, slots: s.slots, agentSocket: s.agentSocket });

  const stops = [
    every(s.heartbeatSeconds * 1000, 'heartbeat', async () => {
      const running = (await docker.listContainers({ label: [`${containerLabels.hostId}=${s.hostId}`, `${containerLabels.owner}=${ownerLabelValue}`] }, false))
        .length;
      if (!(await heartbeatHost(s.hostId, { runningSandboxes: running }))) {
        // Declared lost while we were away: come back as a fresh host; reconcile cleans up.
        await registerHost({ hostId: s.hostId, capacity: s.slots, agentVersion });
      }
    }),
    every(s.reconcileSeconds * 1000, 'reconcile', async () => {
      await reconcile(s, docker);
      await runner.reconcile((await liveSandboxesOnHost(s.hostId)).map((r) => r.sandbox_id));
    }),
  ];
  // Commands a previous incarnation of this daemon ran cannot be followed any more: close them now.
  await runner.reconcile((await liveSandboxesOnHost(s.hostId)).map((r) => r.sandbox_id)).catch((err) => {
    logger.error('daemon: closing the commands of a previous run failed; the reconcile loop retries', { err });
  });
  if (s.hotSyncIntervalSeconds > 0) stops.push(every(s.hotSyncIntervalSeconds * 1000, 'hot sync', () => syncRunningSandboxes(s, docker)));
  // Homes of ended sandboxes whose last sync failed: tried again until they are in S3.
  stops.push(
    every(Math.max(30, s.hotSyncIntervalSeconds) * 1000, 'kept homes', async () => {
      const { synced, kept } = await retryKeptHomes(loadHostConfig());
      if (synced.length > 0) logger.info('daemon: kept homes synced', { synced });
      if (kept.length > 0) logger.warn('daemon: homes still waiting for a sync', { kept });
    }),
  );
  return () => {
    stops.forEach((stop) => stop());
    runner.close();
    socket.close();
    rmSync(s.agentSocket, { force: true });
    void gateway.stop().finally(() => egressLog.close());
  };
}

if (import.meta.url === `file://${process.argv[1]}` || process.argv[1]?.endsWith('host-agent-daemon.mjs')) {
  applyEnvFile(); // /etc/ephemeral-sandbox/host.env on AWS hosts; the real environment wins
  const stop = await runDaemon();
  const shutdown = () => {
    stop();
    process.exit(0);
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
}
