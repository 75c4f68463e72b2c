/**
 * Commands: start one (and wait for it a little), follow its output by
 * offset, list them, kill one, write its stdin. The record and the output
 * outlive the request, the sandbox and the host: the host writes them to
 * DynamoDB and S3 as the command runs, and the API reads them there, so no
 * call waits longer than API Gateway allows and no output is lost.
 *
 * Why not Powertools Idempotency for a retried start (same command_id): the
 * command's record is its own idempotency record (a conditional put on the id,
 * with the request's fingerprint: another body is a 409), and a retry answers
 * the command as it stands now (running, then exited with its output), which
 * a replay of the first answer could not; stdin writes are idempotent by
 * offset, kills by the command's status.
 */
import { createHash } from 'node:crypto';
import { config } from './config';
import { commandOutputPrefix } from '../../contract/host-protocol';
import { randomId } from '../../contract/ids';
import { readHeadAndTail, readStream } from './command-output';
import { isFinalCommandStatus, type CommandOrigin, type CommandRecord, type CommandStatus } from './command-state';
import { acceptStdin, CommandConflictError, createCommand, deleteUnstartedCommand, getCommand, listCommandPage } from './command-store';
import { ApiError, invalidState, notFound } from './errors';
import { hostFailure, hosts } from './host-calls';
import { HostDispatchError } from './host-dispatch';
import type { Principal } from './http';
import { hotPath, type SandboxRecord } from './sandbox-record';
import { isActive } from './sandbox-state';
import { endExec, getSandbox, getTenantSandbox } from './sandbox-store';
import type { StartCommandBody } from './schemas';

/** How long the host holds its answer to a start for a command that may end at once (saves a poll). */
const hostAnswerWithinMs = 1_500;
/** Time left for answering after a wait (reading output, the trip back). */
const answerReserveMs = 1_500;

function newCommandId(): string {
  return `cmd-${randomId(20)}`;
}

function stableJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(stableJson).join(',')}]`;
  if (value && typeof value === 'object') {
    return `{${Object.keys(value as object)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${stableJson((value as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(value);
}

/** What a command's start asks for; a retry with the same command_id must ask for the same. */
export interface CommandSpec {
  command: string;
  cwd?: string;
  env?: Record<string, string>;
  user: string;
  timeout: number;
  stdin?: string;
  stdin_open: boolean;
}

function fingerprint(spec: CommandSpec, origin: CommandOrigin): string {
  return createHash('sha256')
    .update(stableJson({ ...spec, origin }))
    .digest('hex');
}

export interface CommandView {
  command_id: string;
  sandbox_id: string;
  command: string;
  status: CommandStatus;
  exit_code: number | null;
  created_at: string;
  started_at: string | null;
  ended_at: string | null;
  duration_ms: number | null;
  cwd: string;
  user: string;
  timeout: number;
  stdout_bytes: number;
  stderr_bytes: number;
  stdout_truncated: boolean;
  stderr_truncated: boolean;
  stdin_open: boolean;
  stdin_offset: number;
  end_reason?: string;
  end_detail?: string;
}

export interface CommandOutputView {
  stdout: string;
  stderr: string;
  stdout_offset_next: number;
  stderr_offset_next: number;
}

export function toCommandView(r: CommandRecord): CommandView {
  return {
    command_id: r.command_id,
    sandbox_id: r.sandbox_id,
    command: r.command,
    status: r.status,
    exit_code: r.exit_code ?? null,
    created_at: r.created_at,
    started_at: r.started_at ?? null,
    ended_at: r.ended_at ?? null,
    duration_ms: r.duration_ms ?? null,
    cwd: r.final_cwd ?? r.cwd,
    user: r.user,
    timeout: r.timeout_s,
    stdout_bytes: r.stdout_total_bytes ?? r.stdout_bytes ?? 0,
    stderr_bytes: r.stderr_total_bytes ?? r.stderr_bytes ?? 0,
    stdout_truncated: r.stdout_truncated ?? false,
    stderr_truncated: r.stderr_truncated ?? false,
    stdin_open: r.stdin_open && !r.stdin_eof && !isFinalCommandStatus(r.status),
    stdin_offset: r.stdin_offset ?? 0,
    ...(r.end_reason ? { end_reason: r.end_reason } : {}),
    ...(r.end_detail ? { end_detail: r.end_detail } : {}),
  };
}

const prefixOf = (r: CommandRecord) => commandOutputPrefix(r.tenant_id, r.sandbox_id, r.command_id);

/** Output of both streams from the given offsets (as far as it is stored). */
export async function readOutput(r: CommandRecord, offsets: { stdout: number; stderr: number }): Promise<CommandOutputView> {
  const final = isFinalCommandStatus(r.status);
  const [stdout, stderr] = await Promise.all(
    (['stdout', 'stderr'] as const).map(async (stream) => {
      const stored = stream === 'stdout' ? (r.stdout_bytes ?? 0) : (r.stderr_bytes ?? 0);
      const offset = offsets[stream];
      if (offset >= stored) return { text: '', next: offset };
      return readStream(prefixOf(r), stream, offset, final ? { end: stored } : {});
    }),
  );
  return { stdout: stdout!.text, stderr: stderr!.text, stdout_offset_next: stdout!.next, stderr_offset_next: stderr!.next };
}

/** The tenant's command, or 404 (another tenant's is indistinguishable from none). */
async function getTenantCommand(p: Principal, sandboxId: string, commandId: string): Promise<CommandRecord> {
  const r = await getCommand(sandboxId, commandId);
  if (!r || r.tenant_id !== p.tenantId) throw notFound(`command ${commandId} of sandbox ${sandboxId}`);
  return r;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Waits until `until` (epoch ms) for the record to satisfy `done`, reading it
 * from DynamoDB (never from SSM): quickly at first, then calmer.
 */
async function waitForRecord(r: CommandRecord, until: number, done: (r: CommandRecord) => boolean): Promise<CommandRecord> {
  let current = r;
  for (let attempt = 0; !done(current) && Date.now() < until; attempt++) {
    await sleep(Math.min(until - Date.now(), Math.min(250, 20 * 1.5 ** attempt)));
    current = (await getCommand(r.sandbox_id, r.command_id)) ?? current;
  }
  return current;
}

export interface StartedCommand {
  record: CommandRecord;
  /** The whole output when the host sent it with its answer (the command ended at once). */
  inline?: { stdout: string; stderr: string };
}

/**
 * Starts a command in a sandbox: records it, asks the host to run it (the
 * host reads it from the record), and answers once the host has it. The same
 * `commandId` with the same spec answers the same command and never runs it
 * twice; with another spec it is a 409.
 */
export async function startCommand(
  p: Principal,
  sandboxId: string,
  spec: CommandSpec,
  o: { origin: CommandOrigin; commandId?: string; deadline: number; waitMs: number },
): Promise<StartedCommand> {
  const sandbox = await getTenantSandbox(p.tenantId, sandboxId);
  const commandId = o.commandId ?? newCommandId();
  const print = fingerprint(spec, o.origin);
  // A caller-chosen id may be a retry: answer the command it already named.
  if (o.commandId !== undefined) {
    const existing = await getCommand(sandboxId, commandId);
    if (existing) return resumeExisting(existing, print, o);
  }
  if (!isActive(sandbox.status)) throw invalidState(`sandbox ${sandboxId} is ${sandbox.status}; commands need a ready or running sandbox`);

  const c = config();
  const now = new Date();
  const stdinBytes = Buffer.byteLength(spec.stdin ?? '', 'utf8');
  // Kept until the retention ends after the latest the sandbox can end.
  const sandboxEndsBy = Date.parse(sandbox.created_at) + c.limits.maxTtlSeconds * 1000;
  const record: CommandRecord = {
    sandbox_id: sandboxId,
    command_id: commandId,
    tenant_id: p.tenantId,
    created_seq: `${now.toISOString()}#${commandId}`,
    origin: o.origin,
    status: 'pending',
    command: spec.command,
    cwd: spec.cwd ?? sandbox.cwd ?? hotPath,
    ...(spec.cwd === undefined ? { cwd_fallback: hotPath } : {}),
    user: spec.user,
    timeout_s: spec.timeout,
    ...(spec.env && Object.keys(spec.env).length ? { env: spec.env } : {}),
    ...(spec.stdin ? { stdin: spec.stdin } : {}),
    stdin_open: spec.stdin_open,
    stdin_offset: stdinBytes,
    stdin_initial_bytes: stdinBytes,
    fingerprint: print,
    host_id: sandbox.host_id,
    sandbox_idle_s: sandbox.idle_timeout_s,
    sandbox_expires_ms: sandbox.expires_at_ms,
    created_at: now.toISOString(),
    stdout_bytes: 0,
    stderr_bytes: 0,
    expires_at_s: Math.ceil(sandboxEndsBy / 1000) + c.limits.commandRetentionDays * 86_400,
  };
  // The reaper never ends a sandbox for idleness while a command runs: the command is on the record until it ends.
  const endsBy = now.getTime() + (spec.timeout + 60) * 1000;
  const created = await createCommand(sandbox, record, now.getTime(), endsBy);
  if (!created.created) {
    if ('existing' in created) return resumeExisting(created.existing, print, o);
    throw invalidState(`sandbox ${sandboxId} is ${created.sandboxStatus}; commands need a ready or running sandbox`);
  }
  return deliver(sandbox, record, o);
}

/** A retry of a start (same command_id): the same command, never a second one. */
async function resumeExisting(existing: CommandRecord, print: string, o: { deadline: number; waitMs: number }): Promise<StartedCommand> {
  if (existing.fingerprint !== print) {
    throw new ApiError(409, 'conflict', `command_id ${existing.command_id} was already used for another command in this sandbox`);
  }
  // Still pending: the first start may never have reached the host. Starting is idempotent on the host.
  if (existing.status === 'pending') {
    const sandbox = await getSandbox(existing.sandbox_id);
    if (sandbox && isActive(sandbox.status)) return deliver(sandbox, existing, o);
  }
  return { record: existing };
}

/** Asks the host to run the command; a start the host surely never got is undone so a retry can run it. */
async function deliver(sandbox: SandboxRecord, record: CommandRecord, o: { deadline: number; waitMs: number }): Promise<StartedCommand> {
  const waitSeconds = Math.max(1, (o.deadline - answerReserveMs - Date.now()) / 1000);
  try {
    const answer = await hosts().dispatch(
      sandbox.host_id,
      'run',
      { sandboxId: record.sandbox_id, commandId: record.command_id, answerWithinMs: Math.min(hostAnswerWithinMs, o.waitMs) },
      { timeoutSeconds: 30, waitSeconds },
    );
    const s = answer.command;
    const merged: CommandRecord = {
      ...record,
      status: s.status,
      exit_code: s.exitCode,
      ...(s.startedAt ? { started_at: s.startedAt } : {}),
      ...(s.endedAt ? { ended_at: s.endedAt } : {}),
      ...(s.durationMs !== undefined ? { duration_ms: s.durationMs } : {}),
      ...(s.finalCwd ? { final_cwd: s.finalCwd } : {}),
      ...(s.endReason ? { end_reason: s.endReason as CommandRecord['end_reason'] } : {}),
      ...(s.endDetail ? { end_detail: s.endDetail } : {}),
      stdout_bytes: s.stdoutBytes,
      stderr_bytes: s.stderrBytes,
      stdout_total_bytes: s.stdoutTotalBytes,
      stderr_total_bytes: s.stderrTotalBytes,
      stdout_truncated: s.stdoutTruncated,
      stderr_truncated: s.stderrTruncated,
    };
    delete merged.env;
    delete merged.stdin;
    return { record: merged, ...(answer.output ? { inline: answer.output } : {}) };
  } catch (err) {
    if (err instanceof HostDispatchError && err.code === 'still_running') {
      // The host has it (or will): it records what happens; the caller follows the record.
      return { record: (await getCommand(record.sandbox_id, record.command_id)) ?? record };
    }
    if (err instanceof HostDispatchError && (err.notDelivered || err.hostCode === 'unavailable')) {
      await deleteUnstartedCommand(record.sandbox_id, record.command_id, record.created_at);
      const fresh = await getSandbox(record.sandbox_id);
      if (fresh) await endExec(fresh, record.command_id, undefined, Date.now()).catch(() => undefined);
    }
    throw hostFailure(err, 'start the command');
  }
}

/** Waits (until the deadline) for the command to end. */
export async function waitForEnd(r: CommandRecord, until: number): Promise<CommandRecord> {
  return waitForRecord(r, until, (c) => isFinalCommandStatus(c.status));
}

/** GET .../commands/{id}: the record and the output from the offsets, waiting up to `waitMs` for more or the end. */
export async function followCommand(
  p: Principal,
  sandboxId: string,
  commandId: string,
  q: { stdout_offset: number; stderr_offset: number; wait: number },
  deadline: number,
): Promise<CommandView & CommandOutputView> {
  let r = await getTenantCommand(p, sandboxId, commandId);
  const until = Math.min(Date.now() + q.wait * 1000, deadline - answerReserveMs);
  if (q.wait > 0) {
    r = await waitForRecord(
      r,
      until,
      (c) => isFinalCommandStatus(c.status) || (c.stdout_bytes ?? 0) > q.stdout_offset || (c.stderr_bytes ?? 0) > q.stderr_offset,
    );
  }
  return { ...toCommandView(r), ...(await readOutput(r, { stdout: q.stdout_offset, stderr: q.stderr_offset })) };
}

export async function listCommands(
  p: Principal,
  sandboxId: string,
  q: { limit: number; next_token?: string },
): Promise<{ commands: CommandView[]; next_token?: string }> {
  await getTenantSandbox(p.tenantId, sandboxId);
  const page = await listCommandPage(sandboxId, q.limit, q.next_token);
  return { commands: page.items.map(toCommandView), ...(page.nextToken ? { next_token: page.nextToken } : {}) };
}

/** POST .../kill: the host stops every process of the command; the record says `killed` once they are all gone. */
export async function killCommand(p: Principal, sandboxId: string, commandId: string, signal: 'TERM' | 'KILL', deadline: number): Promise<CommandView> {
  const r = await getTenantCommand(p, sandboxId, commandId);
  const sandbox = await getSandbox(sandboxId);
  // An ended command of a running sandbox may have left processes behind: they go too.
  if (!sandbox || !isActive(sandbox.status)) {
    if (isFinalCommandStatus(r.status)) return toCommandView(r);
    throw invalidState(`sandbox ${sandboxId} is ${sandbox?.status ?? 'gone'}; its commands end with it`);
  }
  try {
    await hosts().dispatch(
      sandbox.host_id,
      'kill',
      { sandboxId, commandId, signal },
      { timeoutSeconds: 30, waitSeconds: Math.max(1, (deadline - answerReserveMs - Date.now()) / 1000) },
    );
  } catch (err) {
    if (!(err instanceof HostDispatchError && err.code === 'still_running')) throw hostFailure(err, 'kill the command');
  }
  return toCommandView((await getCommand(sandboxId, commandId)) ?? r);
}

/** POST .../stdin: accepted once at its offset (a retry gets 409 with the offset expected), then delivered. */
export async function writeCommandStdin(
  p: Principal,
  sandboxId: string,
  commandId: string,
  w: { data: string; offset: number; eof: boolean },
  deadline: number,
): Promise<{ offset_next: number }> {
  const r = await getTenantCommand(p, sandboxId, commandId);
  if (!r.stdin_open) throw invalidState(`command ${commandId} was started without stdin_open: true; its stdin is closed`);
  let accepted: CommandRecord;
  try {
    accepted = await acceptStdin(r, w);
  } catch (err) {
    if (!(err instanceof CommandConflictError)) throw err;
    const now = err.current ?? r;
    if (isFinalCommandStatus(now.status)) throw invalidState(`command ${commandId} is ${now.status}; it takes no more input`);
    if (now.stdin_eof) throw invalidState(`stdin of command ${commandId} was closed (eof) at offset ${now.stdin_offset}`);
    throw new ApiError(
      409,
      'offset_mismatch',
      `stdin offset ${w.offset} is not the next one; the next write must be at offset ${now.stdin_offset}`,
      {},
      {
        expected_offset: now.stdin_offset,
      },
    );
  }
  const sandbox = await getSandbox(sandboxId);
  if (sandbox && isActive(sandbox.status)) {
    try {
      await hosts().dispatch(
        sandbox.host_id,
        'stdin',
        { sandboxId, commandId },
        { timeoutSeconds: 30, waitSeconds: Math.max(1, (deadline - answerReserveMs - Date.now()) / 1000) },
      );
    } catch (err) {
      // Accepted and kept: the next write (or the command's start) delivers it. Say so if the host could not be told.
      if (!(err instanceof HostDispatchError && err.code === 'still_running')) {
        throw new ApiError(
          503,
          'host_unavailable',
          `stdin up to offset ${accepted.stdin_offset} was accepted but not yet delivered: ${(err as Error).message}; retrying this write answers 409 with that offset`,
          {
            'Retry-After': '2',
          },
        );
      }
    }
  }
  return { offset_next: accepted.stdin_offset };
}

/** The output /exec answers: everything up to 1 MiB per stream, head and tail past that. */
export async function wholeOutput(
  r: CommandRecord,
  inline?: { stdout: string; stderr: string },
): Promise<{ stdout: { text: string; truncated: boolean }; stderr: { text: string; truncated: boolean } }> {
  if (inline) return { stdout: { text: inline.stdout, truncated: false }, stderr: { text: inline.stderr, truncated: false } };
  const [stdout, stderr] = await Promise.all([
    (r.stdout_bytes ?? 0) === 0 ? { text: '', truncated: false } : readHeadAndTail(prefixOf(r), 'stdout', r.stdout_bytes ?? 0),
    (r.stderr_bytes ?? 0) === 0 ? { text: '', truncated: false } : readHeadAndTail(prefixOf(r), 'stderr', r.stderr_bytes ?? 0),
  ]);
  return {
    stdout: { ...stdout, truncated: stdout.truncated || (r.stdout_truncated ?? false) },
    stderr: { ...stderr, truncated: stderr.truncated || (r.stderr_truncated ?? false) },
  };
}

/** StartCommandBody -> the spec a fingerprint covers. */
export function specOf(body: Pick<StartCommandBody, 'command' | 'cwd' | 'env' | 'user' | 'timeout' | 'stdin'> & { stdin_open?: boolean }): CommandSpec {
  return {
    command: body.command,
    ...(body.cwd !== undefined ? { cwd: body.cwd } : {}),
    ...(body.env !== undefined ? { env: body.env } : {}),
    user: body.user,
    timeout: body.timeout,
    ...(body.stdin !== undefined ? { stdin: body.stdin } : {}),
    stdin_open: body.stdin_open ?? false,
  };
}
