/**
 * Sandbox domain logic: create, exec, destroy, list. Handlers call one of
 * these; every status change goes through the state machine's conditional
 * writes, and every host call through SSM.
 */
import { randomBytes } from 'node:crypto';
import { generateSandboxToken, sha256Hex } from './api-keys';
import { config } from './config';
import { ApiError, invalidState } from './errors';
import { hostFailure, hosts } from './host-calls';
import { placeSandbox, releaseSlot } from './host-store';
import type { Principal } from './http';
import { logger } from './logger';
import { isActive, isTerminal, type SandboxStatus, type StopReason } from './sandbox-state';
import { egressOf, hotPath, idleDeadline, reapShardOf, toView, type SandboxRecord, type SandboxView } from './sandbox-record';
import {
  beginExec,
  endExec,
  getSandbox,
  getTenantSandbox,
  listSandboxes as queryList,
  putNewSandbox,
  transition,
  TransitionRejectedError,
} from './sandbox-store';
import type { CreateSandboxBody, ExecBody } from './schemas';
import { releaseTenantSlot, takeTenantSlot } from './tenants';
import type { StorageSpec } from '../../host-agent/src/protocol';

/** How long a host may take to create a sandbox before the reaper cleans up. */
const createTimeoutSeconds = 120;
/** How long a shutdown may stay unfinished before the reaper drives it again. */
export const shutdownRetrySeconds = 120;

export function newSandboxId(): string {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789';
  return 'sbx-' + Array.from(randomBytes(20), (b) => alphabet[b % 36]).join('');
}

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

/** Creates a sandbox and answers once it is ready (or failed, with the reason). */
export async function createSandbox(p: Principal, body: CreateSandboxBody): Promise<SandboxView> {
  const c = config();
  const now = Date.now();
  const sandboxId = newSandboxId();
  const ttl = body.config?.ttl_seconds ?? Math.min(c.limits.defaultTtlSeconds, c.limits.maxTtlSeconds);
  const idle = Math.min(body.config?.idle_timeout_seconds ?? c.limits.defaultIdleTimeoutSeconds, ttl);
  // The tenant's cap first: a tenant at its limit never takes a host slot.
  await takeTenantSlot(p.tenantId);
  let host: Awaited<ReturnType<typeof placeSandbox>>;
  try {
    host = await placeSandbox(now);
  } catch (err) {
    await releaseTenantSlot(p.tenantId);
    throw err;
  }
  const token = generateSandboxToken(sandboxId);
  const iso = new Date(now).toISOString();
  const record: SandboxRecord = {
    sandbox_id: sandboxId,
    tenant_id: p.tenantId,
    user_id: body.user_id,
    tenant_user: `${p.tenantId}#${body.user_id}`,
    status: 'creating',
    host_id: host.host_id,
    created_at: iso,
    updated_at: iso,
    expires_at: new Date(now + ttl * 1000).toISOString(),
    expires_at_ms: now + ttl * 1000,
    idle_timeout_s: idle,
    last_activity_at: now,
    execs: {},
    reap_shard: reapShardOf(sandboxId),
    // Until the host answers, the deadline is the create timeout: a create
    // that dies half-way is found and cleaned up by the reaper.
    deadline_at: now + createTimeoutSeconds * 1000,
    live_host_id: host.host_id,
    cwd: hotPath,
    config: {
      cpu: body.config?.cpu ?? c.limits.defaultCpu,
      memory_mb: body.config?.memory_mb ?? c.limits.defaultMemoryMb,
      disk_mb: body.config?.disk_mb ?? Math.min(c.limits.defaultDiskMb, c.limits.maxDiskMb),
      ttl_seconds: ttl,
      idle_timeout_seconds: idle,
      network: body.config?.network ?? { egress: 'allow_all' },
      env: body.config?.env ?? {},
      labels: body.config?.labels ?? {},
    },
    token_hash: sha256Hex(token),
  };
  try {
    await putNewSandbox(record);
  } catch (err) {
    await releaseSlot(host.host_id);
    await releaseTenantSlot(p.tenantId);
    throw err;
  }

  let containerId: string;
  try {
    const created = await hosts().dispatch(
      host.host_id,
      'create',
      {
        sandboxId,
        tenantId: p.tenantId,
        userId: body.user_id,
        image: c.sandboxImage,
        cpu: record.config.cpu,
        memoryMb: record.config.memory_mb,
        diskMb: record.config.disk_mb,
        pidsLimit: c.limits.pidsLimit,
        network: record.config.network === 'none' ? 'none' : 'bridge',
        egress: egressOf(record.config.network) ?? 'allow_all',
        env: {
          ...record.config.env,
          SANDBOX_ID: sandboxId,
          SANDBOX_API_URL: c.sandboxApiUrl,
          SANDBOX_TOKEN: token,
        },
        labels: record.config.labels,
        storage: storageFor(p.tenantId, body.user_id, record.config.disk_mb),
      },
      { timeoutSeconds: createTimeoutSeconds },
    );
    containerId = created.containerId;
  } catch (err) {
    const failure = hostFailure(err, 'create');
    await failCreate(record, failure.message);
    throw failure;
  }

  try {
    const ready = await transition(sandboxId, 'created', 'ready', {
      set: { container_id: containerId, last_activity_at: Date.now(), deadline_at: idleDeadline(record, Date.now()) },
    });
    return toView(ready);
  } catch (err) {
    // Destroyed while it was being created: the destroy owns the container now.
    if (err instanceof TransitionRejectedError && err.current) return toView(err.current);
    throw err;
  }
}

/**
 * Records the end of a sandbox (the one way into a terminal status): takes it
 * out of the deadline and host indexes and gives its host and tenant slots back. Answers
 * undefined when another caller ended it first.
 */
export async function markEnded(
  record: Pick<SandboxRecord, 'sandbox_id' | 'host_id'>,
  end: { event: 'fail'; reason: StopReason; detail?: string; only?: readonly SandboxStatus[] } | { event: 'stopped' | 'expired' },
): Promise<SandboxRecord | undefined> {
  const to = end.event === 'fail' ? 'failed' : end.event;
  try {
    const ended = await transition(record.sandbox_id, end.event, to, {
      set: {
        ended_at: new Date().toISOString(),
        ...(end.event === 'fail' ? { stop_reason: end.reason, ...(end.detail ? { stop_detail: end.detail } : {}) } : {}),
      },
      remove: ['reap_shard', 'deadline_at', 'live_host_id', 'execs'],
      ...(end.event === 'fail' && end.only ? { only: end.only } : {}),
    });
    await releaseSlot(record.host_id);
    await releaseTenantSlot(ended.tenant_id);
    return ended;
  } catch (err) {
    if (err instanceof TransitionRejectedError) return undefined;
    throw err;
  }
}

async function failCreate(record: SandboxRecord, detail: string): Promise<void> {
  await markEnded(record, { event: 'fail', reason: 'create_failed', detail });
  // The host may have made a container before failing: remove it now; if
  // this fails too, the host's reconciliation removes the orphan.
  try {
    await hosts().dispatch(record.host_id, 'destroy', { sandboxId: record.sandbox_id, graceful: false }, { timeoutSeconds: 60 });
  } catch (err) {
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
}

/** Runs one command in a sandbox with `bash -lc`, answering its output and exit code. */
export async function execInSandbox(p: Principal, sandboxId: string, body: ExecBody): Promise<ExecView> {
  const record = await getTenantSandbox(p.tenantId, sandboxId);
  if (!isActive(record.status)) throw invalidState(`sandbox ${sandboxId} is ${record.status}; exec needs a ready or running sandbox`);
  const execId = 'x' + randomBytes(6).toString('hex');
  const now = Date.now();
  const hostTimeout = body.timeout + 15;
  let started: SandboxRecord;
  try {
    started = await beginExec(record, execId, now + (hostTimeout + 15) * 1000, now);
  } catch (err) {
    if (err instanceof TransitionRejectedError) {
      throw invalidState(`sandbox ${sandboxId} is ${err.current?.status ?? 'gone'}; exec needs a ready or running sandbox`);
    }
    throw err;
  }
  const cwd = body.cwd ?? started.cwd ?? hotPath;
  let stickyCwd: string | undefined;
  try {
    const result = await hosts().dispatch(
      record.host_id,
      'exec',
      {
        sandboxId,
        command: body.command,
        cwd,
        // A sticky cwd the last command removed falls back to the home; an explicit one is the caller's error.
        ...(body.cwd === undefined ? { cwdFallback: hotPath } : {}),
        env: body.env ?? {},
        user: body.user,
        timeoutSeconds: body.timeout,
      },
      { timeoutSeconds: hostTimeout },
    );
    // The working directory sticks only for execs that did not name one.
    if (body.cwd === undefined) stickyCwd = result.cwd;
    return {
      exit_code: result.exitCode,
      stdout: result.stdout,
      stderr: result.stderr,
      cwd: result.cwd,
      duration_ms: result.durationMs,
      timed_out: result.timedOut,
      stdout_truncated: result.stdoutTruncated,
      stderr_truncated: result.stderrTruncated,
      stdout_bytes: result.stdoutBytes,
      stderr_bytes: result.stderrBytes,
    };
  } catch (err) {
    throw hostFailure(err, 'exec');
  } finally {
    await endExec(started, execId, stickyCwd, Date.now());
  }
}

/**
 * Ends a sandbox at the caller's request. Idempotent: a sandbox that is
 * already ending or ended answers the same, so concurrent destroys agree.
 */
export async function destroySandbox(p: Principal, sandboxId: string, graceful: boolean): Promise<void> {
  const record = await getTenantSandbox(p.tenantId, sandboxId);
  if (isTerminal(record.status) || record.status === 'shutting_down') return;
  const shutting = await beginShutdown(record, 'user_requested');
  if (!shutting) return;
  await finishShutdown(shutting, { graceful, outcome: 'stopped' });
}

/** Moves a live sandbox to shutting_down; undefined when someone else already is ending it. */
export async function beginShutdown(record: SandboxRecord, reason: StopReason, detail?: string): Promise<SandboxRecord | undefined> {
  try {
    return await transition(record.sandbox_id, 'begin_shutdown', 'shutting_down', {
      set: {
        stop_reason: reason,
        ...(detail ? { stop_detail: detail } : {}),
        // If this shutdown never finishes, the reaper drives it again.
        deadline_at: Date.now() + shutdownRetrySeconds * 1000,
      },
    });
  } catch (err) {
    if (err instanceof TransitionRejectedError) return undefined;
    throw err;
  }
}

/**
 * Removes the sandbox's container (graceful: stop, sync the hot tier back)
 * and records the end. A host failure leaves the sandbox shutting_down with
 * a deadline, so the reaper retries; the caller is told.
 */
export async function finishShutdown(
  record: SandboxRecord,
  o: { graceful: boolean; outcome: 'stopped' | 'expired' },
): Promise<SandboxRecord> {
  try {
    await hosts().dispatch(
      record.host_id,
      'destroy',
      { sandboxId: record.sandbox_id, graceful: o.graceful, ...(o.graceful ? { storage: storageFor(record.tenant_id, record.user_id) } : {}) },
      { timeoutSeconds: 300 },
    );
  } catch (err) {
    const failure = hostFailure(err, 'destroy');
    logger.error('shutdown did not finish; the reaper will retry', { sandboxId: record.sandbox_id, err });
    throw failure;
  }
  const ended = await markEnded(record, { event: o.outcome });
  if (ended) return ended;
  const current = await getSandbox(record.sandbox_id);
  if (current && isTerminal(current.status)) return current; // another caller recorded the end
  throw new Error(`sandbox ${record.sandbox_id}: shutdown finished but the end could not be recorded (status ${current?.status})`);
}

export async function getSandboxView(p: Principal, sandboxId: string): Promise<SandboxView> {
  return toView(await getTenantSandbox(p.tenantId, sandboxId));
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
