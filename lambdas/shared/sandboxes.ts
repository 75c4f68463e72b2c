/**
 * Sandbox domain logic: create, exec, destroy, list. Handlers call one of
 * these; every status change goes through the state machine's conditional
 * writes, and every host call through SSM.
 */
import { generateSandboxToken, sha256Hex } from './api-keys';
import { config } from './config';
import { ApiError, unavailable } from './errors';
import { hostFailure, hosts } from './host-calls';
import { placeSandbox, releaseAllocation } from './host-store';
import { createImageFor, resourcesOf, type Resources } from './placement';
import { dropWaitingRequest, stageWaitingRequest, waitingRequestKey } from './capacity-wait';
import { requestCapacity, setScaleInProtection } from './fleet';
import type { Principal } from './http';
import { closeOpenCommands } from './command-store';
import { HostDispatchError } from './host-dispatch';
import { logger } from './logger';
import { isTerminal, type SandboxStatus, type StopReason } from './sandbox-state';
import { egressOf, hotPath, reapShardOf, toView, type SandboxRecord, type SandboxView } from './sandbox-record';
import { createDeadline, createTimeoutSeconds, endEventOf, idleDeadline, shutdownLease } from './reaper-rules';
import { getSandbox, latest, getTenantSandbox, listSandboxes as queryList, transition, TransitionRejectedError, updateSandbox } from './sandbox-store';
import type { CreateSandboxBody, ExecBody } from './schemas';
import { isFinalCommandStatus, type CommandStatus } from './command-state';
import { specOf, startCommand, toCommandView, waitForEnd, wholeOutput, type CommandView } from './commands';
import { recordWithTenantSlot, refuseIfTenantFull, releaseTenantSlot } from './tenants';
import { pausedStateKeys, type CreateRequest, type StorageSpec } from '../../contract/host-protocol';
import { newSandboxId } from '../../contract/ids';
import { DeleteObjectCommand } from '@aws-sdk/client-s3';
import { s3 } from './clients/s3';

/**
 * Where a user's tiers live. `diskMb` is the sandbox's home size, which is
 * also its sync quota (hosts enforce the size of the home's own file system
 * whatever a request says, so callers that do not know it pass the default).
 */
export function storageFor(tenantId: string, userId: string, diskMb = config().limits.defaultDiskMb): StorageSpec {
  const c = config();
  const base = `tenants/${tenantId}/users/${userId}`;
  return {
    bucket: c.bucket,
    hotPrefix: `${base}/hot/`,
    coldPrefix: `${base}/cold/`,
    hotQuotaBytes: diskMb * 1024 * 1024,
    syncIntervalSeconds: c.limits.hotSyncIntervalSeconds,
  };
}

/**
 * The host's create request for a sandbox record: what create sends, and what
 * a drain stages for a paused sandbox it moves off its host (relocation.ts),
 * so both make the same container. `token` is the sandbox's own (only its
 * hash is on the record).
 */
export function hostCreateRequest(record: SandboxRecord, o: { token: string; image: string }): CreateRequest {
  const c = config();
  return {
    sandboxId: record.sandbox_id,
    tenantId: record.tenant_id,
    userId: record.user_id,
    image: o.image,
    cpu: record.config.cpu,
    memoryMb: record.config.memory_mb,
    diskMb: record.config.disk_mb,
    pidsLimit: c.limits.pidsLimit,
    network: record.config.network === 'none' ? 'none' : 'bridge',
    egress: egressOf(record.config.network) ?? 'allow_all',
    env: {
      ...record.config.env,
      SANDBOX_ID: record.sandbox_id,
      SANDBOX_API_URL: c.sandboxApiUrl,
      SANDBOX_TOKEN: o.token,
    },
    labels: record.config.labels,
    storage: storageFor(record.tenant_id, record.user_id, record.config.disk_mb),
  };
}

/** Time left for answering after waiting on a host. */
const answerReserveMs = 1_500;

/** Seconds a dispatch may wait for its host before the handler answers 202 (the host finishes and records it). */
export function waitSecondsUntil(deadline: number): number {
  return Math.max(0.5, (deadline - answerReserveMs - Date.now()) / 1000);
}

/**
 * Creates a sandbox: takes room for it on a host, records it (`creating`),
 * asks the host to make it, and answers `ready` when the host finishes before
 * `deadline`, else the record as it stands (`creating`): the host records
 * `ready` (or `failed`) itself, and the reaper fails a create its host never
 * finished. When no host has room, the create is recorded waiting for
 * capacity (`status_detail: waiting_for_capacity`), the Auto Scaling group is
 * asked for hosts, and the first host with room makes it (or the reaper fails
 * it with `no_capacity` after CAPACITY_WAIT_SECONDS).
 * `onRecorded` learns the id as soon as the record exists (an idempotent
 * retry answers that sandbox instead of making another).
 */
export async function createSandbox(
  p: Principal,
  body: CreateSandboxBody,
  o: { deadline: number; onRecorded?: (sandboxId: string) => Promise<void> },
): Promise<{ view: SandboxView; ready: boolean }> {
  const c = config();
  const now = Date.now();
  const sandboxId = newSandboxId();
  const ttl = body.config?.ttl_seconds ?? Math.min(c.limits.defaultTtlSeconds, c.limits.maxTtlSeconds);
  const idle = Math.min(body.config?.idle_timeout_seconds ?? c.limits.defaultIdleTimeoutSeconds, ttl);
  const sandboxConfig = {
    cpu: body.config?.cpu ?? c.limits.defaultCpu,
    memory_mb: body.config?.memory_mb ?? c.limits.defaultMemoryMb,
    disk_mb: body.config?.disk_mb ?? Math.min(c.limits.defaultDiskMb, c.limits.maxDiskMb),
  };
  const share = resourcesOf(sandboxConfig);
  // The tenant's cap first: a tenant at its limit never takes room on a host.
  await refuseIfTenantFull(p.tenantId);
  // Waiting only makes sense when something can bring a host: an Auto Scaling group to ask (and a wait to allow).
  const canWait = Boolean(c.autoScalingGroupName) && c.capacityWaitSeconds > 0;
  // A create that waits for a host is how a fleet at rest starts: no warning for it.
  const host = await placeSandbox(sandboxId, share, { now, image: c.sandboxImage, noRoomLevel: canWait ? 'info' : 'warn' });
  if (!host && !canWait) {
    throw new ApiError(503, 'no_capacity', 'no sandbox host has room for this sandbox right now; retry shortly', { 'Retry-After': '5' });
  }
  const token = generateSandboxToken(sandboxId);
  const iso = new Date(now).toISOString();
  const record: SandboxRecord = {
    sandbox_id: sandboxId,
    tenant_id: p.tenantId,
    user_id: body.user_id,
    tenant_user: `${p.tenantId}#${body.user_id}`,
    status: 'creating',
    host_id: host?.host_id ?? '',
    created_at: iso,
    updated_at: iso,
    expires_at: new Date(now + ttl * 1000).toISOString(),
    expires_at_ms: now + ttl * 1000,
    idle_timeout_s: idle,
    last_activity_at: now,
    execs: {},
    reap_shard: reapShardOf(sandboxId),
    // Until the host answers, the deadline is the create timeout (or, while it waits for a host, the capacity wait):
    // a create that dies half-way, or that no host takes, is found and cleaned up by the reaper.
    deadline_at: createDeadline(now, { onHost: host !== undefined, capacityWaitSeconds: c.capacityWaitSeconds }),
    ...(host ? { live_host_id: host.host_id } : { waiting: 'capacity' as const, status_detail: 'waiting_for_capacity' as const }),
    cwd: hotPath,
    config: {
      ...sandboxConfig,
      ttl_seconds: ttl,
      idle_timeout_seconds: idle,
      network: body.config?.network ?? { egress: 'allow_all' },
      env: body.config?.env ?? {},
      labels: body.config?.labels ?? {},
    },
    token_hash: sha256Hex(token),
  };
  // By the digest the host holds (during a rollout, possibly the previous image: no create waits for a pull);
  // a host with no image recorded pulls the reference. (A waiting create is staged with the reference: no host is known yet.)
  const request = hostCreateRequest(record, { token, image: createImageFor(host, c.sandboxImage) });
  if (!host) return waitForCapacity(record, request, share, o);

  try {
    // The record and the tenant's slot in one transaction; a tenant at its cap answers 429 and gives the host slot back.
    await recordWithTenantSlot(record);
  } catch (err) {
    await releaseAllocation(host.host_id, sandboxId).catch((e: unknown) =>
      logger.error("create: giving the host's share back failed (the host's reconciliation corrects it)", { hostId: host.host_id, err: e }),
    );
    throw err;
  }
  await o.onRecorded?.(sandboxId);
  // The host's first sandbox: protect it from scale-in now, not at its daemon's next heartbeat (which repeats it if this fails).
  if (host.allocated.sandboxes === 1 && !host.scale_in_protected) {
    await setScaleInProtection(host.host_id, true).catch((err) =>
      logger.warn('create: scale-in protection of the host failed; its daemon sets it at its next heartbeat', { hostId: host.host_id, err }),
    );
  }

  let containerId: string;
  try {
    const created = await hosts().dispatch(host.host_id, 'create', request, {
      timeoutSeconds: createTimeoutSeconds,
      waitSeconds: waitSecondsUntil(o.deadline),
    });
    containerId = created.containerId;
  } catch (err) {
    if (err instanceof HostDispatchError && err.code === 'still_running') {
      // The host is at it (pulling, syncing the home): it records the outcome; the caller follows with GET.
      const current = (await latest(sandboxId)) ?? record;
      return { view: toView(current), ready: current.status !== 'creating' };
    }
    const failure = hostFailure(err, 'create');
    await failCreate(record, failure.message, o.deadline);
    throw failure;
  }

  // The host recorded `ready`; this covers a host that could not write it.
  try {
    const ready = await transition(sandboxId, 'created', {
      set: { container_id: containerId, last_activity_at: Date.now(), deadline_at: idleDeadline(record, Date.now()) },
    });
    return { view: toView(ready), ready: true };
  } catch (err) {
    // Recorded by the host already, or destroyed while it was being created (the destroy owns the container now).
    if (err instanceof TransitionRejectedError && err.current) return { view: toView(err.current), ready: err.current.status !== 'creating' };
    throw err;
  }
}

/**
 * No host has room: the create waits for one. Its host request (the caller's
 * env and the sandbox's token) is staged in S3, the record says it waits, and
 * the group is asked for capacity; the caller gets `202 creating` and follows
 * with GET. A failed ask is reported and not fatal: the fleet function asks
 * again every minute while creates wait.
 */
async function waitForCapacity(
  record: SandboxRecord,
  request: CreateRequest,
  share: Resources,
  o: { onRecorded?: (sandboxId: string) => Promise<void> },
): Promise<{ view: SandboxView; ready: boolean }> {
  let staged: string;
  try {
    staged = await stageWaitingRequest(record.sandbox_id, request);
  } catch (err) {
    throw unavailable(`no host has room and the create could not be queued (${(err as Error).message}); retry shortly`, 5);
  }
  const waiting: SandboxRecord = { ...record, staged_request: staged };
  try {
    // The record and the tenant's slot in one transaction, as for a placed create.
    await recordWithTenantSlot(waiting);
  } catch (err) {
    await dropWaitingRequest(staged);
    throw err;
  }
  await o.onRecorded?.(record.sandbox_id);
  try {
    const answer = await requestCapacity({ also: [] });
    logger.info('create: waiting for capacity', { sandboxId: record.sandbox_id, share, ...answer });
  } catch (err) {
    logger.error('create: asking the Auto Scaling group for capacity failed; the fleet function asks again within a minute', {
      sandboxId: record.sandbox_id,
      err,
    });
  }
  return { view: toView(waiting), ready: false };
}

/**
 * Records the end of a sandbox (the one way into a terminal status): takes it
 * out of the deadline and host indexes and gives its share of its host and its tenant slot back. Answers
 * undefined when another caller ended it first.
 */
export async function markEnded(
  record: Pick<SandboxRecord, 'sandbox_id' | 'host_id'>,
  end:
    | {
        event: 'fail';
        reason: StopReason;
        detail?: string;
        only?: readonly SandboxStatus[] /** Only while it still waits for a host (no host took it meanwhile). */;
        whileWaiting?: boolean;
      }
    | { event: 'stopped' | 'expired'; detail?: string },
  /** Filled with the record as it is when another caller ended it first (saves reading it again). */
  seen: { current?: SandboxRecord } = {},
): Promise<SandboxRecord | undefined> {
  let ended: SandboxRecord;
  try {
    ended = await transition(record.sandbox_id, end.event, {
      set: {
        ended_at: new Date().toISOString(),
        ...(end.event === 'fail' ? { stop_reason: end.reason } : {}),
        ...(end.detail ? { stop_detail: end.detail } : {}),
      },
      remove: ['reap_shard', 'deadline_at', 'live_host_id', 'execs', 'waiting', 'status_detail', 'staged_request'],
      // The commands still on the record (every open one is) are kept aside to be closed below, without a query.
      names: { '#execs': 'execs', ...(end.event === 'fail' && end.whileWaiting ? { '#waiting': 'waiting' } : {}) },
      values: { ':none': {} },
      extraSet: 'open_commands = if_not_exists(#execs, :none)',
      ...(end.event === 'fail' && end.whileWaiting ? { condition: 'attribute_exists(#waiting)' } : {}),
      ...(end.event === 'fail' && end.only ? { only: end.only } : {}),
    });
  } catch (err) {
    if (err instanceof TransitionRejectedError) {
      if (err.current) seen.current = err.current;
      return undefined;
    }
    throw err;
  }
  // The host on the record as it ended (a waiting create may have been taken by a host since the caller read it).
  await releaseAllocation(ended.host_id, record.sandbox_id);
  await releaseTenantSlot(ended.tenant_id, ended.sandbox_id);
  // A create that ended while it waited leaves its staged host request behind: nobody will fetch it.
  if (record.sandbox_id && !ended.host_id) await dropWaitingRequest(waitingRequestKey(record.sandbox_id));
  // A paused sandbox moved off a drained host that ends before it was started again: nobody will restore its staged state.
  if (ended.paused_state) await dropPausedState(ended.paused_state);
  // Its commands end with it: what its host could not record is `killed` (or `lost` with the host).
  const hostGone = end.event === 'fail' && end.reason === 'host_lost';
  const open = Object.keys(ended.open_commands ?? {});
  if (open.length > 0) {
    await closeOpenCommands(record.sandbox_id, open, hostGone ? 'lost' : 'killed', hostGone ? 'host_lost' : 'sandbox_ended', ended.stop_reason);
  }
  return ended;
}

/** Deletes a moved paused sandbox's staged state (its create request, with the token, and its /tmp archive); a failure is logged. */
async function dropPausedState(prefix: string): Promise<void> {
  const keys = pausedStateKeys(prefix);
  for (const key of [keys.request, keys.tmp]) {
    try {
      await s3().send(new DeleteObjectCommand({ Bucket: config().bucket, Key: key }));
    } catch (err) {
      logger.warn('the staged state of a moved paused sandbox that ended was not deleted', { key, err });
    }
  }
}

async function failCreate(record: SandboxRecord, detail: string, deadline: number): Promise<void> {
  await markEnded(record, { event: 'fail', reason: 'create_failed', detail, only: ['creating'] });
  // The host may have made a container before failing: remove it now; if
  // this fails too, the host's reconciliation removes the orphan.
  try {
    await hosts().dispatch(
      record.host_id,
      'destroy',
      { sandboxId: record.sandbox_id, graceful: false },
      { timeoutSeconds: 60, waitSeconds: waitSecondsUntil(deadline) },
    );
  } catch (err) {
    if (err instanceof HostDispatchError && err.code === 'still_running') return;
    logger.error('create: cleanup of a failed create did not finish; reconciliation will remove the container', {
      sandboxId: record.sandbox_id,
      err,
    });
  }
}

export interface ExecView {
  exit_code: number;
  stdout: string;
  stderr: string;
  cwd: string;
  duration_ms: number;
  timed_out: boolean;
  stdout_truncated: boolean;
  stderr_truncated: boolean;
  stdout_bytes: number;
  stderr_bytes: number;
  /** The command this exec ran: GET /sandboxes/{id}/commands/{command_id} reads all of its output. */
  command_id: string;
  status: CommandStatus;
}

/**
 * POST /exec: starts a command and waits for it, within the API's time. A
 * command that ends in time answers its output (everything up to 1 MiB per
 * stream, head and tail past that); one that does not answers its record, to
 * be followed with GET .../commands/{command_id}.
 */
export async function execInSandbox(
  p: Principal,
  sandboxId: string,
  body: ExecBody,
  deadline: number,
): Promise<{ done: true; view: ExecView } | { done: false; command: CommandView }> {
  const started = await startCommand(p, sandboxId, specOf({ ...body, stdin_open: false }), { origin: 'exec', deadline, waitMs: body.timeout * 1000 });
  let r = started.record;
  if (!isFinalCommandStatus(r.status)) r = await waitForEnd(r, deadline - 1_500);
  if (!isFinalCommandStatus(r.status)) return { done: false, command: toCommandView(r) };
  const out = await wholeOutput(r, isFinalCommandStatus(started.record.status) ? started.inline : undefined);
  return {
    done: true,
    view: {
      // A command whose host vanished has no exit code of its own.
      exit_code: r.exit_code ?? (r.status === 'lost' ? -1 : 137),
      stdout: out.stdout.text,
      stderr: out.stderr.text,
      cwd: r.final_cwd ?? r.cwd,
      duration_ms: r.duration_ms ?? 0,
      timed_out: r.status === 'timed_out',
      stdout_truncated: out.stdout.truncated,
      stderr_truncated: out.stderr.truncated,
      stdout_bytes: r.stdout_total_bytes ?? r.stdout_bytes ?? 0,
      stderr_bytes: r.stderr_total_bytes ?? r.stderr_bytes ?? 0,
      command_id: r.command_id,
      status: r.status,
    },
  };
}

/**
 * Ends a sandbox at the caller's request; `done` when it ended before
 * `deadline` (else its host finishes and records the end). Idempotent: a
 * sandbox that is already ending or ended answers the same, so concurrent
 * destroys agree. `graceful: false` always ends it, even with its host
 * unreachable (the host removes the container when it is back).
 */
export async function destroySandbox(p: Principal, sandboxId: string, graceful: boolean, deadline: number): Promise<{ done: boolean; view: SandboxView }> {
  const record = await getTenantSandbox(p.tenantId, sandboxId);
  if (isTerminal(record.status)) return { done: true, view: toView(record) };
  let shutting: SandboxRecord | undefined;
  if (record.status === 'shutting_down') {
    // Handed to the reaper (complete/error asked for it) or a try that failed: drive it now, unless someone is at it.
    shutting = record.deadline_at !== undefined && record.deadline_at <= Date.now() ? await claimDue(record, Date.now()) : undefined;
    if (!shutting) return awaitEnd(record, deadline);
  } else {
    shutting = await beginShutdown(record, 'user_requested');
    if (!shutting) return awaitEnd((await getSandbox(sandboxId)) ?? record, deadline);
  }
  if (!shutting.host_id) {
    // A create still waiting for a host: there is nothing on any host to remove.
    const ended = await markEnded(shutting, { event: 'stopped', detail: 'ended while it waited for a host' });
    return { done: true, view: toView(ended ?? (await getSandbox(sandboxId)) ?? shutting) };
  }
  const outcome = endEventOf(shutting.stop_reason);
  try {
    const ended = await finishShutdown(shutting, { graceful, outcome, waitSeconds: waitSecondsUntil(deadline) });
    return { done: true, view: toView(ended) };
  } catch (err) {
    if (err instanceof HostDispatchError && err.code === 'still_running') return { done: false, view: toView((await latest(sandboxId)) ?? shutting) };
    if (!graceful && !(err instanceof HostDispatchError && err.code === 'still_running')) {
      // Forced: the record ends now; a container left on a live host is removed by its reconciliation.
      const ended = await markEnded(shutting, {
        event: 'stopped',
        detail: `the host could not be reached to remove the container (${(err as Error).message}); it removes it when it is back`,
      });
      return { done: true, view: toView(ended ?? (await getSandbox(sandboxId)) ?? shutting) };
    }
    throw err instanceof ApiError ? err : hostFailure(err, 'destroy');
  }
}

/**
 * Someone else is ending the sandbox (a concurrent destroy, the reaper, its
 * host): wait for the end they record, within the API's time, so every
 * destroy that saw it end answers 204 and one still under way answers 202.
 */
async function awaitEnd(seen: SandboxRecord, deadline: number): Promise<{ done: boolean; view: SandboxView }> {
  const r = await pollSandbox(seen, deadline - answerReserveMs, (x) => isTerminal(x.status));
  return { done: isTerminal(r.status), view: toView(r) };
}

/** Reads the sandbox's record again (50 ms apart, growing to 500 ms) until `settled` holds or `until` passes: the last record read. */
async function pollSandbox(seen: SandboxRecord, until: number, settled: (r: SandboxRecord) => boolean): Promise<SandboxRecord> {
  let r = seen;
  for (let attempt = 0; !settled(r) && Date.now() < until; attempt++) {
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, Math.min(until - Date.now(), 50 + attempt * 25, 500))));
    r = (await getSandbox(seen.sandbox_id)) ?? r;
  }
  return r;
}

/**
 * Claims a due record (its deadline passed: nobody is driving it) for the
 * caller: moves its deadline out by a lease, only if nobody else did.
 */
export async function claimDue(r: SandboxRecord, now: number): Promise<SandboxRecord | undefined> {
  try {
    return await updateSandbox(
      r.sandbox_id,
      'reap_claim',
      { set: { deadline_at: shutdownLease(now) }, condition: 'deadline_at = :seen', values: { ':seen': r.deadline_at } },
      [r.status],
    );
  } catch (err) {
    if (err instanceof TransitionRejectedError) return undefined;
    throw err;
  }
}

/** Moves a live sandbox to shutting_down; undefined when someone else already is ending it. */
export async function beginShutdown(
  record: SandboxRecord,
  reason: StopReason,
  detail?: string,
  o: { dueNow?: boolean } = {},
): Promise<SandboxRecord | undefined> {
  try {
    return await transition(record.sandbox_id, 'begin_shutdown', {
      set: {
        stop_reason: reason,
        ...(detail ? { stop_detail: detail } : {}),
        // If this shutdown never finishes, the reaper drives it again (dueNow: the reaper is the one to drive it).
        deadline_at: o.dueNow ? Date.now() : shutdownLease(Date.now()),
      },
    });
  } catch (err) {
    if (err instanceof TransitionRejectedError) return undefined;
    throw err;
  }
}

/**
 * Removes the sandbox's container (graceful: stop, sync the hot tier back)
 * and records the end (the host records it too). A host failure leaves the
 * sandbox shutting_down with a deadline, so the reaper retries; the caller is
 * told. `still_running` (the wait ran out) is thrown as the HostDispatchError:
 * the host finishes and records the end.
 */
export async function finishShutdown(
  record: SandboxRecord,
  o: { graceful: boolean; outcome: 'stopped' | 'expired'; waitSeconds?: number },
): Promise<SandboxRecord> {
  // A create that ended while it waited for a host has nothing on a host to remove.
  if (record.host_id) {
    await removeOnHost(record, o);
  }
  const seen: { current?: SandboxRecord } = {};
  const ended = await markEnded(record, { event: o.outcome }, seen);
  if (ended) return ended;
  const current = seen.current ?? (await getSandbox(record.sandbox_id));
  if (current && isTerminal(current.status)) return current; // the host (or another caller) recorded the end
  throw new Error(`sandbox ${record.sandbox_id}: shutdown finished but the end could not be recorded (status ${current?.status})`);
}

async function removeOnHost(record: SandboxRecord, o: { graceful: boolean; waitSeconds?: number }): Promise<void> {
  try {
    await hosts().dispatch(
      record.host_id,
      'destroy',
      { sandboxId: record.sandbox_id, graceful: o.graceful, ...(o.graceful ? { storage: storageFor(record.tenant_id, record.user_id) } : {}) },
      { timeoutSeconds: 300, ...(o.waitSeconds !== undefined ? { waitSeconds: o.waitSeconds } : {}) },
    );
  } catch (err) {
    if (err instanceof HostDispatchError && err.code === 'still_running') throw err;
    logger.error('shutdown did not finish; the reaper will retry', { sandboxId: record.sandbox_id, err });
    throw err instanceof HostDispatchError ? err : hostFailure(err, 'destroy');
  }
}

/** The sandbox; with `waitMs`, read again until its status changes (long poll, bounded by the deadline). */
export async function getSandboxView(p: Principal, sandboxId: string, o: { waitMs?: number; deadline?: number } = {}): Promise<SandboxView> {
  const r = await getTenantSandbox(p.tenantId, sandboxId);
  const until = Math.min(Date.now() + (o.waitMs ?? 0), (o.deadline ?? Number.POSITIVE_INFINITY) - answerReserveMs);
  return toView(await pollSandbox(r, until, (x) => x.status !== r.status || isTerminal(x.status)));
}

export async function listSandboxViews(
  p: Principal,
  q: { user_id?: string; status?: SandboxRecord['status']; limit: number; next_token?: string },
): Promise<{ sandboxes: SandboxView[]; total: number; next_token?: string }> {
  const page = await queryList({ tenantId: p.tenantId, userId: q.user_id, status: q.status, limit: q.limit, nextToken: q.next_token });
  return { sandboxes: page.items.map(toView), total: page.total, ...(page.nextToken ? { next_token: page.nextToken } : {}) };
}

/** API-key routes refuse sandbox tokens (they may only signal their own sandbox). */
export function requireApiKey(p: Principal): void {
  if (p.kind !== 'api-key') throw new ApiError(403, 'forbidden', 'a sandbox token may only call heartbeat, complete and error');
}
