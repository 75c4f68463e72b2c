/**
 * The host daemon (systemd on AWS, a child process in the local stack):
 * registers this host in DynamoDB, heartbeats it, syncs every running
 * sandbox's hot tier on an interval, and reconciles containers with records
 * so nothing leaks either way:
 *   - a container with no live record (a create that crashed half-way, a
 *     destroy that never reached the host) is removed after a grace period;
 *   - a live record whose container vanished is marked failed.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { chmodSync, mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { availableParallelism } from 'node:os';
import { dirname } from 'node:path';
import { s3 } from '../../lambdas/shared/clients/s3';
import { config as controlPlaneConfig } from '../../lambdas/shared/config';
import {
  addAllocation,
  getHost,
  heartbeatHost,
  recordHostImage,
  recordScaleInProtection,
  registerHost,
  releaseAllocation,
  type HostRecord,
} from '../../lambdas/shared/host-store';
import { setScaleInProtection } from '../../lambdas/shared/fleet';
import { wantsScaleInProtection } from '../../lambdas/shared/fleet-scaling';
import { createTimeoutSeconds } from '../../lambdas/shared/reaper-rules';
import { allocationCorrections, resourcesOf, type Resources } from '../../lambdas/shared/placement';
import { logger } from '../../lambdas/shared/logger';
import { ensureSharedMount } from './storage/shared-mount';
import { publishHostFigures } from './host-metrics';
import { shipDaemonOutput } from './log-shipper';
import type { SandboxRecord } from '../../lambdas/shared/sandbox-record';
import { getSandbox, liveSandboxesOnHost } from '../../lambdas/shared/sandbox-store';
import { isActive, settledStatuses } from '../../lambdas/shared/sandbox-state';
import { beginShutdown, markEnded, storageFor } from '../../lambdas/shared/sandboxes';
import { EgressLogWriter } from '../../lambdas/shared/egress-log';
import { inScope, span } from '../../lambdas/shared/timing';
import { applyEnvFile, loadHostConfig } from './config';
import { startEgressGateway } from './egress/gateway';
import { DockerClient } from './docker';
import { ExecServers } from './commands/exec-server';
import { CommandRunner } from './commands/runner';
import { SandboxFiles } from './files/sandbox-files';
import { envelopeLine, runHostAgent, type DaemonRuntime } from './invocation';
import { HostDrain } from './drain';
import { limited } from './limited';
import { takeWaitingCreates } from './waiting';
import { destroySandbox, syncSandbox } from './lifecycle';
import { checkEgressRules, ensureSandboxNetwork } from './network';
import { retryKeptHomes } from './sandbox-storage';
import { hostResources } from './host-resources';
import { adoptSandboxes } from './readopt';
import { containerLabels, hostVerbs, ownerLabelValue } from '../../contract/host-protocol';
import { sandboxIdPattern, ssmInstanceIdPattern } from '../../contract/ids';
import { appVersion } from '../../contract/version';
import { readClaim } from './claim';
import { isUnclaimedPoolContainer, poolSettings, sandboxIdOf, WarmPool } from './warm-pool';
import { desiredImageSource, prepareHostImage, pruneImages, repositoryOf, type HostImage } from './image-rollout';

function seconds(name: string, fallback: number): number {
  const raw = process.env[name];
  const n = raw === undefined || raw === '' ? fallback : Number(raw);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a number of seconds, got "${raw}"`);
  return n;
}

function count(name: string, fallback: number): number {
  const raw = process.env[name];
  const n = raw === undefined || raw === '' ? fallback : Number(raw);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${name} must be a whole number of at least 1, got "${raw}"`);
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
  /** CloudWatch Logs group the daemon ships its lines to (HOST_LOG_GROUP; unset locally: not shipped). */
  logGroup?: string;
  /** The longest a drain may take (hosts.drainTimeoutSeconds). */
  drainTimeoutSeconds: number;
  /** The termination lifecycle hook a draining host heartbeats and completes (DRAIN_LIFECYCLE_HOOK). */
  drainHookName: string | undefined;
  /**
   * Remove images of the sandbox repository that no container uses and that are not the configured one
   * (PRUNE_SANDBOX_IMAGES=1: on AWS hosts; off on a development machine, whose images are its owner's).
   */
  pruneSandboxImages: boolean;
  /**
   * SSM parameter holding the fleet's current sandbox image reference (SANDBOX_IMAGE_PARAMETER), read at every
   * image pass: a deploy that changes the image reaches running hosts through it. Unset: SANDBOX_IMAGE, fixed.
   */
  imageParameter: string | undefined;
  /**
   * Creates this host makes at once (HOST_CREATE_CONCURRENCY); the others wait their turn, first come first
   * served. @default the host's CPU count, at least 2
   */
  createConcurrency: number;
}

export function daemonSettings(): DaemonSettings {
  const hostId = process.env.HOST_ID ?? '';
  if (!ssmInstanceIdPattern.test(hostId)) throw new Error(`HOST_ID must be an EC2 or SSM managed instance id, got "${hostId}"`);
  const heartbeatSeconds = seconds('HOST_HEARTBEAT_SECONDS', 15);
  return {
    hostId,
    agentSocket: process.env.AGENT_SOCKET || '/run/ephemeral-sandbox/agent.sock',
    slots: count('HOST_SLOTS', 8),
    heartbeatSeconds,
    reconcileSeconds: seconds('RECONCILE_INTERVAL_SECONDS', heartbeatSeconds),
    reconcileGraceSeconds: seconds('RECONCILE_GRACE_SECONDS', 60),
    hotSyncIntervalSeconds: seconds('HOT_SYNC_INTERVAL_SECONDS', 60),
    logGroup: process.env.HOST_LOG_GROUP || undefined,
    drainTimeoutSeconds: seconds('DRAIN_TIMEOUT_SECONDS', 300),
    drainHookName: process.env.DRAIN_LIFECYCLE_HOOK || undefined,
    pruneSandboxImages: process.env.PRUNE_SANDBOX_IMAGES === '1',
    imageParameter: process.env.SANDBOX_IMAGE_PARAMETER || undefined,
    createConcurrency: count('HOST_CREATE_CONCURRENCY', Math.max(2, availableParallelism())),
  };
}

/**
 * Keeps the fleet's current sandbox image (`ref`) on the host: pulled ahead of
 * any create that names it (again, if it went), its digest recorded on the host
 * item when it changes (from then on creates placed here name it), older images
 * of its repository that no container uses pruned. The image this pass replaced
 * is kept until the next pass: a create that read the host item just before the
 * new digest was recorded still names it. Answers the image for the next pass.
 */
export async function rollOutImage(s: DaemonSettings, docker: DockerClient, ref: string, recorded: HostImage | undefined): Promise<HostImage> {
  const image = await prepareHostImage(docker, ref);
  const changed = image.digestRef !== recorded?.digestRef || image.ref !== recorded.ref;
  if (changed) {
    await recordHostImage(s.hostId, image);
    logger.info('daemon: sandbox image ready on this host', { image: image.digestRef, ref: image.ref, previous: recorded?.digestRef });
  }
  if (s.pruneSandboxImages) {
    const keep = changed && recorded ? [image.id, recorded.id] : [image.id];
    const pruned = await pruneImages(docker, repositoryOf(ref), keep);
    if (pruned.length > 0) logger.info('daemon: sandbox images no longer used removed', { pruned });
  }
  return image;
}

export interface ReconcileReport {
  containers: number;
  liveRecords: number;
  removedOrphans: string[];
  failedVanished: string[];
  /** Containers that exited on their own: their sandboxes are being ended (the reaper syncs and removes them). */
  endedExited: string[];
  /** Allocations on the host item given back (their sandbox ended or never came) and added (a sandbox here had none). */
  allocationsReleased: string[];
  allocationsAdded: string[];
}

/** One reconciliation pass; exported for tests. */
export async function reconcile(s: DaemonSettings, docker: DockerClient, now = Date.now()): Promise<ReconcileReport> {
  const hostConfig = loadHostConfig();
  // Unclaimed warm pool containers are no sandboxes: the pool reconciles them (WarmPool.reconcile).
  const containers = (
    await docker.listContainers({
      label: [`${containerLabels.owner}=${ownerLabelValue}`, `${containerLabels.hostId}=${s.hostId}`],
    })
  ).filter((c) => !isUnclaimedPoolContainer(c));
  const records = await liveSandboxesOnHost(s.hostId);
  const recordIds = new Set(records.map((r) => r.sandbox_id));
  const containerIds = new Set(containers.map((c) => sandboxIdOf(c) ?? ''));
  const graceMs = s.reconcileGraceSeconds * 1000;
  const report: ReconcileReport = {
    containers: containers.length,
    liveRecords: records.length,
    removedOrphans: [],
    failedVanished: [],
    endedExited: [],
    allocationsReleased: [],
    allocationsAdded: [],
  };

  for (const c of containers) {
    const sandboxId = sandboxIdOf(c) ?? '';
    if (recordIds.has(sandboxId)) continue;
    if (now - c.Created * 1000 < graceMs) continue; // a create may still be recording it
    // Re-read: the index is eventually consistent, the record is the truth.
    const record = sandboxIdPattern.test(sandboxId) ? await getSandbox(sandboxId) : undefined;
    if (record?.live_host_id === s.hostId) continue;
    // A claimed pool container has no sandbox labels: its claim record says whose it is.
    const claim = c.Labels[containerLabels.tenantId] ? undefined : sandboxIdPattern.test(sandboxId) ? readClaim(hostConfig, sandboxId) : undefined;
    const tenant = c.Labels[containerLabels.tenantId] ?? claim?.tenantId;
    const user = c.Labels[containerLabels.userId] ?? claim?.userId;
    // An ended sandbox keeps its user's files: sync before removing. A half-made one has none worth keeping.
    const graceful = Boolean(record && tenant && user);
    try {
      if (sandboxIdPattern.test(sandboxId) && c.Names.includes(`/${sandboxId}`)) {
        await destroySandbox({ sandboxId, graceful, ...(graceful ? { storage: storageFor(tenant!, user!) } : {}) }, hostConfig, docker);
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
    const ended = await markEnded(
      { sandbox_id: r.sandbox_id, host_id: s.hostId },
      {
        event: 'fail',
        reason: 'container_vanished',
        detail: `container missing on host ${s.hostId}`,
        only: settledStatuses,
      },
    );
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
  const byId = new Map(containers.map((c) => [sandboxIdOf(c) ?? '', c]));
  for (const r of records) {
    const c = byId.get(r.sandbox_id);
    if (!c || !isActive(r.status)) continue;
    if (c.State !== 'exited' && c.State !== 'dead') continue;
    const full = await getSandbox(r.sandbox_id);
    if (!full || !isActive(full.status)) continue;
    // Due at once: the reaper syncs the home and removes the container, as for any end.
    if (await beginShutdown(full, 'container_exited', `the container exited on its own (${c.Status})`, { dueNow: true })) {
      report.endedExited.push(r.sandbox_id);
      logger.warn('reconcile: container exited on its own; sandbox ending', { sandboxId: r.sandbox_id, state: c.Status });
    }
  }

  const corrected = await reconcileAllocations(s.hostId, await liveSandboxesOnHost(s.hostId), now, graceMs);
  report.allocationsReleased = corrected.released;
  report.allocationsAdded = corrected.added;
  return report;
}

/**
 * Corrects the host item's allocations against the sandboxes that live here
 * (placement.ts allocationCorrections decides): shares of ended sandboxes or
 * of creates that never recorded their sandbox go, a live sandbox without one
 * gets one. Records the index does not show yet are read consistently first.
 */
export async function reconcileAllocations(
  hostId: string,
  live: readonly Pick<SandboxRecord, 'sandbox_id'>[],
  now: number,
  graceMs: number,
): Promise<{ released: string[]; added: string[] }> {
  const host = await getHost(hostId);
  if (!host?.allocations) return { released: [], added: [] };
  const liveIds = new Set(live.map((r) => r.sandbox_id));
  const stillHere = new Map<string, 'here' | 'ended' | 'missing'>();
  for (const sandboxId of Object.keys(host.allocations)) {
    if (liveIds.has(sandboxId)) continue;
    const r = await getSandbox(sandboxId);
    stillHere.set(sandboxId, !r ? 'missing' : r.live_host_id === hostId ? 'here' : 'ended');
  }
  const liveShares = new Map<string, Resources>();
  for (const { sandbox_id: sandboxId } of live) {
    if (host.allocations[sandboxId]) {
      liveShares.set(sandboxId, resourcesOf({ cpu: 0, memory_mb: 0 }));
      continue;
    }
    const full = await getSandbox(sandboxId);
    if (full?.live_host_id === hostId) liveShares.set(sandboxId, resourcesOf(full.config, controlPlaneConfig().limits.defaultDiskMb));
  }
  const { release, add } = allocationCorrections(host.allocations, liveShares, stillHere, now, graceMs);
  const released: string[] = [];
  const added: string[] = [];
  for (const sandboxId of release) {
    if (await releaseAllocation(hostId, sandboxId)) released.push(sandboxId);
  }
  for (const a of add) {
    if (await addAllocation(hostId, a.sandboxId, a.resources, now)) added.push(a.sandboxId);
  }
  if (released.length > 0 || added.length > 0) logger.warn('reconcile: allocations corrected', { hostId, released, added });
  return { released, added };
}

async function syncRunningSandboxes(s: DaemonSettings, docker: DockerClient): Promise<void> {
  const hostConfig = loadHostConfig();
  for (const r of await liveSandboxesOnHost(s.hostId)) {
    if (!isActive(r.status)) continue;
    try {
      await syncSandbox({ sandboxId: r.sandbox_id, storage: storageFor(r.tenant_id, r.user_id) }, hostConfig, docker);
    } catch (err) {
      logger.error('hot sync: incremental sync failed; the next interval retries', { sandboxId: r.sandbox_id, err });
    }
  }
}

/** Where the daemon says how to reach its loopback listener: `<port> <token>`, root only (0600). */
export function agentEndpointFile(socketPath: string): string {
  return `${socketPath}.endpoint`;
}

/**
 * Serves host-agent verbs: POST /v1/<verb> with the request argument
 * (`b64:...` or `s3:...`) as the body answers the same envelope line the CLI
 * prints. Two doors to the same handler: a root-only unix socket, and a
 * listener on 127.0.0.1 that admits only requests bearing a random token
 * kept in a root-only file (agentEndpointFile). The SSM command's wrapper
 * (bin/host-agent, bash) uses the loopback door with bash's own /dev/tcp, so
 * a call costs no process at all beyond the wrapper's shell (a curl start
 * costs more than the daemon's whole answer to an exec); the unix socket
 * stays for curl and other clients. Sandboxes cannot reach the host's loopback.
 */
export async function serveAgentSocket(path: string, runtime?: DaemonRuntime): Promise<Server> {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  rmSync(path, { force: true });
  const token = randomBytes(32).toString('hex');
  const tokenBytes = Buffer.from(`Bearer ${token}`);
  const handle = async (req: IncomingMessage, res: ServerResponse, tcp: boolean) => {
    if (tcp) {
      const given = Buffer.from(req.headers.authorization ?? '');
      if (given.length !== tokenBytes.length || !timingSafeEqual(given, tokenBytes)) {
        req.resume();
        res.writeHead(403, { 'Content-Type': 'text/plain', Connection: 'close' }).end('forbidden\n');
        return;
      }
    }
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
    const envelope = await span(`daemon.${verb}`, () => runHostAgent([verb, Buffer.concat(chunks).toString('utf8')], runtime));
    const line = envelopeLine(envelope);
    res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(line), ...(tcp ? { Connection: 'close' } : {}) }).end(line);
  };
  const server = createServer((req, res) => void handle(req, res, false));
  const loopback = createServer((req, res) => void handle(req, res, true));
  for (const s of [server, loopback]) s.requestTimeout = 0; // execs run up to their own timeout
  const listen = (srv: Server, ...args: unknown[]) =>
    new Promise<void>((resolve, reject) => {
      srv.once('error', reject);
      (srv.listen as (...a: unknown[]) => void)(...args, () => resolve());
    });
  await listen(server, path);
  chmodSync(path, 0o600);
  await listen(loopback, 0, '127.0.0.1');
  const endpoint = agentEndpointFile(path);
  // Written whole, then renamed: the wrapper never reads half a line.
  writeFileSync(`${endpoint}.tmp`, `${(loopback.address() as AddressInfo).port} ${token}\n`, { mode: 0o600 });
  renameSync(`${endpoint}.tmp`, endpoint);
  server.once('close', () => {
    loopback.close();
    rmSync(endpoint, { force: true });
  });
  return server;
}

/** One lifecycle verb at a time per sandbox: a stop racing a destroy runs after it, never alongside. */
function perSandboxQueue(): DaemonRuntime['serialize'] {
  const tails = new Map<string, Promise<unknown>>();
  return (sandboxId, work) => {
    const previous = tails.get(sandboxId) ?? Promise.resolve();
    const next = previous.catch(() => undefined).then(work);
    tails.set(sandboxId, next);
    void next
      .finally(() => {
        if (tails.get(sandboxId) === next) tails.delete(sandboxId);
      })
      .catch(() => undefined);
    return next;
  };
}

/** Runs `fn` every `ms`, never overlapping itself, logging (not swallowing) failures. */
function every(ms: number, name: string, fn: () => Promise<unknown>): () => void {
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const tick = async () => {
    try {
      await inScope('background', fn);
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

/**
 * What the daemon does with its host record at each heartbeat: drain when the
 * host was marked draining (the drain verb may never have arrived), keep its
 * scale-in protection matching whether it holds sandboxes, and take creates
 * waiting for capacity while it has room.
 */
function heartbeatActions(
  s: DaemonSettings,
  runtime: DaemonRuntime,
  startDrain: (reason: string, deadlineAt: number) => unknown,
  draining: () => boolean,
): (host: HostRecord | undefined) => Promise<void> {
  return async (host) => {
    if (!host) return;
    if (host.status === 'draining') {
      if (!draining()) startDrain(host.drain_reason ?? 'marked draining', host.drain_deadline_at ?? Date.now() + s.drainTimeoutSeconds * 1000);
      return;
    }
    const protect = wantsScaleInProtection(host);
    if (host.scale_in_protected !== protect) {
      const outcome = await setScaleInProtection(s.hostId, protect);
      if (outcome === 'done') await recordScaleInProtection(s.hostId, protect);
      else if (outcome === 'not_in_group') logger.warn('daemon: this host is not in its Auto Scaling group; no scale-in protection', { hostId: s.hostId });
    }
    const taken = await takeWaitingCreates(s.hostId, runtime);
    if (taken.length > 0) logger.info('daemon: took creates that waited for capacity', { hostId: s.hostId, sandboxes: taken });
  };
}

export async function runDaemon(s = daemonSettings()): Promise<() => void> {
  // Every line this host writes names it, in the control plane's JSON shape.
  logger.appendPersistentKeys({ host_id: s.hostId });
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
  const execServers = new ExecServers(docker);
  const runner = new CommandRunner({
    docker,
    execServers,
    hostConfig,
    s3: s3(),
    bucket: cp.bucket,
    runnerId: `${s.hostId}:${randomBytes(6).toString('hex')}`,
    outputMaxBytes: cp.limits.commandOutputMaxBytes,
  });
  const files = new SandboxFiles({ docker, hostConfig, s3: s3(), bucket: cp.bucket });
  // The state directory becomes a shared mount (bound onto itself) before anything mounts below it: made later,
  // that bind would hide the mounts the pool containers were made with, and a claim's home would never reach them.
  await ensureSharedMount(hostConfig.stateDir);
  const pool = new WarmPool(hostConfig, docker, poolSettings(), execServers);
  // A previous daemon's pool containers may be of another image or network: start from a clean pool.
  await pool.reconcile().catch((err) => logger.error('daemon: warm pool cleanup failed; the reconcile loop retries', { err }));
  pool.refill();
  const serialize = perSandboxQueue();
  const runtime: DaemonRuntime = { runner, files, serialize, pool, creates: limited(s.createConcurrency, { turnMs: createTimeoutSeconds * 1000 }) };
  const drain = new HostDrain({ hostId: s.hostId, hookName: s.drainHookName }, runtime);
  const startDrain = (reason: string, deadlineAt: number) => drain.start(reason, Math.min(deadlineAt, Date.now() + s.drainTimeoutSeconds * 1000));
  runtime.drain = async (request) => {
    const { started } = startDrain(request.reason, Date.now() + request.deadlineSeconds * 1000);
    return { draining: true, started, sandboxes: (await liveSandboxesOnHost(s.hostId)).length };
  };
  const socket = await serveAgentSocket(s.agentSocket, runtime);
  // Sandboxes a previous incarnation left running are this daemon's now: check them, mend what died (a cold mount).
  const adopt = async () =>
    adoptSandboxes(
      loadHostConfig(),
      docker,
      (await liveSandboxesOnHost(s.hostId)).map((r) => ({ sandboxId: r.sandbox_id, status: r.status, storage: storageFor(r.tenant_id, r.user_id) })),
      serialize,
    );
  const adopted = await adopt();
  if (adopted.length > 0) {
    logger.info('daemon: running sandboxes re-adopted', {
      sandboxes: adopted.length,
      coldMounts: Object.fromEntries(['alive', 'remounted', 'failed', 'not_mounted'].map((k) => [k, adopted.filter((a) => a.cold === k).length])),
    });
  }
  // The image first: a host registers (and is offered creates) with it pulled. A pull that fails (the registry
  // unreachable) does not keep the host out: creates pull on demand, and the image loop below tries again.
  // The fleet's current reference, read again at every image pass (a deploy may change it while this host runs).
  const desiredImage = desiredImageSource({ parameterName: s.imageParameter, initial: cp.sandboxImage });
  const startImage = await desiredImage();
  const pulled = await prepareHostImage(docker, startImage).catch((err: unknown) => {
    logger.error('daemon: could not pull the sandbox image; creates pull it on demand and this host retries', { image: startImage, err });
    return undefined;
  });
  const capacity = hostResources(hostConfig.stateDir, s.slots);
  // The image in the same write: registered without it, the host was briefly offered creates the control plane
  // could not name its image for (a test read the host item in that gap on a busy machine).
  const registered = await registerHost({
    hostId: s.hostId,
    capacity,
    agentVersion: appVersion,
    ...(pulled ? { image: { digestRef: pulled.digestRef, ref: pulled.ref } } : {}),
  });
  logger.info('daemon: host registered', { hostId: s.hostId, status: registered, capacity, agentSocket: s.agentSocket, image: pulled?.digestRef });
  let hostImage: HostImage | undefined;
  // Recorded already: this pass only prunes the repository's older images.
  if (pulled)
    hostImage = await rollOutImage(s, docker, startImage, pulled).catch(
      (err: unknown) => void logger.error('daemon: recording the sandbox image failed; retrying', { err }),
    );
  const onHeartbeat = heartbeatActions(s, runtime, startDrain, () => drain.active);
  // Creates that waited for a host (this one may have been launched for them) are taken at once, not at the next heartbeat.
  await onHeartbeat(await getHost(s.hostId)).catch((err) => logger.error('daemon: first heartbeat actions failed; the heartbeat retries', { err }));

  const stops = [
    every(s.heartbeatSeconds * 1000, 'heartbeat', async () => {
      const running = (
        await docker.listContainers({ label: [`${containerLabels.hostId}=${s.hostId}`, `${containerLabels.owner}=${ownerLabelValue}`] }, false)
      ).filter((c) => !isUnclaimedPoolContainer(c)).length;
      const host = await heartbeatHost(s.hostId, { runningSandboxes: running, warmContainers: pool.stats().ready });
      if (!host) {
        // Declared lost while we were away: come back as a fresh host; reconcile cleans up.
        await registerHost({ hostId: s.hostId, capacity, agentVersion: appVersion });
        return;
      }
      await onHeartbeat(host);
    }),
    every(s.reconcileSeconds * 1000, 'reconcile', async () => {
      await reconcile(s, docker);
      await pool.reconcile();
      pool.refill();
      const live = await liveSandboxesOnHost(s.hostId);
      await runner.reconcile(live.map((r) => r.sandbox_id));
      publishHostFigures(s.hostId, live, runner.runningCount);
      await adopt();
    }),
  ];
  // Commands a previous incarnation of this daemon ran cannot be followed any more: close them now.
  await runner.reconcile((await liveSandboxesOnHost(s.hostId)).map((r) => r.sandbox_id)).catch((err) => {
    logger.error('daemon: closing the commands of a previous run failed; the reconcile loop retries', { err });
  });
  // Its own loop: a slow pull (a new image) never delays a reconcile pass, a failed one is tried again next time.
  // A new reference is pulled here, before the host records it: until then creates placed here name the image it has.
  stops.push(
    every(s.reconcileSeconds * 1000, 'sandbox image', async () => {
      hostImage = await rollOutImage(s, docker, await desiredImage(), hostImage);
      // Before the prune of the next pass can reach it: the pool moves to the image creates now name.
      await pool.retarget(hostImage.digestRef);
    }),
  );
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
    for (const stop of stops) stop();
    void pool.close();
    runner.close();
    socket.close();
    rmSync(s.agentSocket, { force: true });
    void gateway.stop().finally(() => egressLog.close());
  };
}

if (import.meta.url === `file://${process.argv[1]}` || process.argv[1]?.endsWith('host-agent-daemon.mjs')) {
  applyEnvFile(); // /etc/ephemeral-sandbox/host.env on AWS hosts; the real environment wins
  // A promise nobody awaited that failed is a bug to fix, reported as one; it does not take down every
  // running command of the host with it (Node's default is to exit).
  process.on('unhandledRejection', (err) => logger.error('daemon: a failure nothing handled (a bug)', { err }));
  // On AWS its lines (logs and EMF metrics) go to the host log group as well as the journal.
  const settings = daemonSettings();
  const stopShipping = shipDaemonOutput(settings);
  const stop = await runDaemon(settings).catch((err: unknown) => {
    // Its service manager starts it again (Restart=always); say why it stopped, once, through the one logger.
    logger.error('daemon: could not start', { err });
    process.exit(1);
  });
  const shutdown = () => {
    stop();
    void (stopShipping?.() ?? Promise.resolve()).finally(() => process.exit(0));
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
}
