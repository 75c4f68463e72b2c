/**
 * The host daemon (systemd on AWS, a child process in the local stack):
 * registers this host in DynamoDB, heartbeats it, syncs every running
 * sandbox's hot tier on an interval, and reconciles containers with records
 * so nothing leaks either way:
 *   - a container with no live record (a create that crashed half-way, a
 *     destroy that never reached the host) is removed after a grace period;
 *   - a live record whose container vanished is marked failed.
 */
import { chmodSync, mkdirSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { dirname } from 'node:path';
import { heartbeatHost, registerHost, setSlotsUsed } from '../../lambdas/shared/host-store';
import { logger } from '../../lambdas/shared/logger';
import type { SandboxRecord } from '../../lambdas/shared/sandbox-record';
import { getSandbox, liveSandboxesOnHost } from '../../lambdas/shared/sandbox-store';
import { sandboxIdPattern } from '../../lambdas/shared/schemas';
import { markEnded, storageFor } from '../../lambdas/shared/sandboxes';
import { EgressLogWriter } from '../../lambdas/shared/egress-log';
import { applyEnvFile, loadHostConfig } from './config';
import { startEgressGateway } from './egress/gateway';
import { DockerClient } from './docker';
import { envelopeLine, runHostAgent } from './invocation';
import { destroySandbox, syncSandbox } from './lifecycle';
import { checkEgressRules, ensureSandboxNetwork } from './network';
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
  const report: ReconcileReport = { containers: containers.length, liveRecords: records.length, removedOrphans: [], failedVanished: [] };

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
    if (!['ready', 'running', 'paused'].includes(r.status)) continue; // creating/shutting_down: their owner (or the reaper) finishes them
    if (now - Date.parse(r.created_at) < graceMs) continue;
    // The by-host index does not carry host_id: this host is the one whose slot it held.
    const ended = await markEnded({ sandbox_id: r.sandbox_id, host_id: s.hostId }, {
      event: 'fail',
      reason: 'container_vanished',
      detail: `container missing on host ${s.hostId}`,
      only: ['ready', 'running', 'paused'],
    });
    if (ended) {
      report.failedVanished.push(r.sandbox_id);
      logger.warn('reconcile: container vanished; sandbox marked failed', { sandboxId: r.sandbox_id });
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
export async function serveAgentSocket(path: string): Promise<Server> {
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
    const envelope = await runHostAgent([verb, Buffer.concat(chunks).toString('utf8')]);
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
  const socket = await serveAgentSocket(s.agentSocket);
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
    every(s.reconcileSeconds * 1000, 'reconcile', () => reconcile(s, docker)),
  ];
  if (s.hotSyncIntervalSeconds > 0) stops.push(every(s.hotSyncIntervalSeconds * 1000, 'hot sync', () => syncRunningSandboxes(s, docker)));
  return () => {
    stops.forEach((stop) => stop());
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
