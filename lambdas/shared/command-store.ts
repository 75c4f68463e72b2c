/**
 * Command records in DynamoDB. The control plane creates them; the host that
 * runs a command moves it on; every change is a conditional write on the
 * command's status, so a command starts once and ends once.
 */
import { DeleteCommand, GetCommand, QueryCommand, TransactWriteCommand, UpdateCommand } from '@aws-sdk/lib-dynamodb';
import { conditionally, dynamo, queryAll, transactionally } from './clients/dynamodb';
import { config } from './config';
import { ApiError } from './errors';
import { commandFinishedEvent, publishEvent } from './events';
import { emitMetrics } from './metrics';
import { openCommandStatuses, type CommandEndReason, type CommandRecord, type CommandStatus } from './command-state';
import type { SandboxRecord } from './sandbox-record';
import { activeStatuses } from './sandbox-state';
import { execStartDeadline, idleDeadline } from './reaper-rules';
import { commandsTable, indexName } from './tables';

const table = () => config().tables.commands;

/** A command change lost to a concurrent one; carries what is there now. */
export class CommandConflictError extends Error {
  constructor(
    readonly commandId: string,
    readonly current: CommandRecord | undefined,
  ) {
    super(`command ${commandId}: changed concurrently (now ${current?.status ?? 'missing'})`);
    this.name = 'CommandConflictError';
  }
}

/** The condition that a sandbox still accepts commands (its status is active: sandbox-state.ts), with its values. */
const sandboxAcceptsCommands = {
  expression: `attribute_exists(sandbox_id) AND #status IN (${activeStatuses.map((_, i) => `:active${i}`).join(', ')})`,
  values: Object.fromEntries(activeStatuses.map((status, i) => [`:active${i}`, status])),
};

/**
 * A new command and its place on the sandbox record, in one transaction: the
 * command is recorded only if the sandbox still accepts commands, and the
 * sandbox's `execs` (what keeps the idle reaper away) only if the command is new.
 */
export async function createCommand(
  sandbox: SandboxRecord,
  record: CommandRecord,
  now: number,
  endsBy: number,
): Promise<{ created: true } | { created: false; existing: CommandRecord } | { created: false; sandboxStatus: string }> {
  const deadline = execStartDeadline(sandbox, endsBy, now);
  const write = await transactionally(
    dynamo().send(
      new TransactWriteCommand({
        TransactItems: [
          {
            Put: {
              TableName: config().tables.commands,
              Item: record,
              ConditionExpression: 'attribute_not_exists(command_id)',
              ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
            },
          },
          {
            Update: {
              TableName: config().tables.sandboxes,
              Key: { sandbox_id: sandbox.sandbox_id },
              UpdateExpression: 'SET last_activity_at = :now, deadline_at = :deadline, #execs.#eid = :ends',
              ConditionExpression: sandboxAcceptsCommands.expression,
              ExpressionAttributeNames: { '#status': 'status', '#execs': 'execs', '#eid': record.command_id },
              ExpressionAttributeValues: { ':now': now, ':deadline': deadline, ':ends': endsBy, ...sandboxAcceptsCommands.values },
              ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
            },
          },
        ],
      }),
    ),
  );
  if (write.applied) return { created: true };
  const [commandItem, sandboxItem] = write.items;
  if (commandItem?.conditionFailed) {
    const existing = await commandAsItStood(commandItem.current, record.sandbox_id, record.command_id);
    if (existing) return { created: false, existing };
  }
  if (sandboxItem?.conditionFailed) return { created: false, sandboxStatus: sandboxItem.current ? String(sandboxItem.current.status) : 'gone' };
  throw write.error;
}

export async function getCommand(sandboxId: string, commandId: string): Promise<CommandRecord | undefined> {
  const out = await dynamo().send(new GetCommand({ TableName: table(), Key: { sandbox_id: sandboxId, command_id: commandId }, ConsistentRead: true }));
  return out.Item as CommandRecord | undefined;
}

/** The command as a refused write found it (DynamoDB returns it when asked), else as it is now. */
async function commandAsItStood(current: unknown, sandboxId: string, commandId: string): Promise<CommandRecord | undefined> {
  return (current as CommandRecord | undefined) ?? (await getCommand(sandboxId, commandId));
}

/** Removes a record nobody started (its start could not be delivered), so the same id can be tried again. */
export async function deleteUnstartedCommand(sandboxId: string, commandId: string, createdAt: string): Promise<boolean> {
  const write = await conditionally(
    dynamo().send(
      new DeleteCommand({
        TableName: table(),
        Key: { sandbox_id: sandboxId, command_id: commandId },
        ConditionExpression: '#status = :pending AND created_at = :created',
        ExpressionAttributeNames: { '#status': 'status' },
        ExpressionAttributeValues: { ':pending': 'pending', ':created': createdAt },
      }),
    ),
  );
  return write.applied;
}

interface Update {
  set?: Record<string, unknown>;
  remove?: readonly string[];
  /** The record must be in one of these statuses. */
  from: readonly CommandStatus[];
  condition?: string;
  values?: Record<string, unknown>;
}

async function updateCommand(sandboxId: string, commandId: string, u: Update): Promise<CommandRecord> {
  const names: Record<string, string> = { '#status': 'status' };
  const values: Record<string, unknown> = { ...u.values };
  const sets: string[] = [];
  let i = 0;
  for (const [k, v] of Object.entries(u.set ?? {})) {
    if (v === undefined) continue;
    names[`#s${i}`] = k;
    values[`:s${i}`] = v;
    sets.push(`#s${i} = :s${i}`);
    i++;
  }
  const removes = (u.remove ?? []).map((k) => {
    names[`#r${i}`] = k;
    return `#r${i++}`;
  });
  for (const [j, s] of u.from.entries()) values[`:from${j}`] = s;
  const conditions = [`attribute_exists(created_seq)`, `#status IN (${u.from.map((_, j) => `:from${j}`).join(', ')})`];
  if (u.condition) conditions.push(`(${u.condition})`);
  const out = await conditionally(
    dynamo().send(
      new UpdateCommand({
        TableName: table(),
        Key: { sandbox_id: sandboxId, command_id: commandId },
        UpdateExpression: [sets.length ? `SET ${sets.join(', ')}` : '', removes.length ? `REMOVE ${removes.join(', ')}` : ''].filter(Boolean).join(' '),
        ConditionExpression: conditions.join(' AND '),
        ExpressionAttributeNames: names,
        ExpressionAttributeValues: values,
        ReturnValues: 'ALL_NEW',
        ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
      }),
    ),
  );
  if (!out.applied) throw new CommandConflictError(commandId, await commandAsItStood(out.current, sandboxId, commandId));
  return out.output.Attributes as CommandRecord;
}

/**
 * pending -> running, once, in one write: the caller's secrets (env, initial
 * stdin) leave the record here, and the record as it was (with them) is the
 * answer, for the host to start the command with.
 */
export async function claimCommandStart(
  sandboxId: string,
  commandId: string,
  f: { runnerId: string; startedAt: string },
): Promise<{ before: CommandRecord; after: CommandRecord }> {
  const out = await conditionally(
    dynamo().send(
      new UpdateCommand({
        TableName: table(),
        Key: { sandbox_id: sandboxId, command_id: commandId },
        // The initial stdin is written at start: later writes continue from its end.
        UpdateExpression: 'SET #status = :running, started_at = :at, runner_id = :runner, stdin_delivered = stdin_initial_bytes REMOVE env, stdin',
        ConditionExpression: 'attribute_exists(created_seq) AND #status = :pending',
        ExpressionAttributeNames: { '#status': 'status' },
        ExpressionAttributeValues: { ':running': 'running', ':pending': 'pending', ':at': f.startedAt, ':runner': f.runnerId },
        ReturnValues: 'ALL_OLD',
        ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
      }),
    ),
  );
  if (!out.applied) throw new CommandConflictError(commandId, await commandAsItStood(out.current, sandboxId, commandId));
  const before = out.output.Attributes as CommandRecord;
  const after: CommandRecord = { ...before, status: 'running', started_at: f.startedAt, runner_id: f.runnerId, stdin_delivered: before.stdin_initial_bytes };
  delete after.env;
  delete after.stdin;
  return { before, after };
}

/** The stored output so far (the API follows these counters). */
export async function recordCommandProgress(
  sandboxId: string,
  commandId: string,
  p: { stdoutBytes: number; stderrBytes: number; stdoutTotal: number; stderrTotal: number },
): Promise<void> {
  try {
    await updateCommand(sandboxId, commandId, {
      set: { stdout_bytes: p.stdoutBytes, stderr_bytes: p.stderrBytes, stdout_total_bytes: p.stdoutTotal, stderr_total_bytes: p.stderrTotal },
      from: ['running'],
      // Counters only grow, whatever order two updates land in.
      condition: 'stdout_bytes <= :o AND stderr_bytes <= :e',
      values: { ':o': p.stdoutBytes, ':e': p.stderrBytes },
    });
  } catch (err) {
    if (!(err instanceof CommandConflictError)) throw err;
  }
}

export interface CommandEnd {
  status: Exclude<CommandStatus, 'pending' | 'running'>;
  exitCode: number | null;
  endedAt: string;
  durationMs?: number;
  finalCwd?: string;
  endReason?: CommandEndReason;
  endDetail?: string;
  stdoutBytes?: number;
  stderrBytes?: number;
  stdoutTotal?: number;
  stderrTotal?: number;
  stdoutTruncated?: boolean;
  stderrTruncated?: boolean;
}

function finishedFields(end: CommandEnd): Record<string, unknown> {
  return {
    status: end.status,
    exit_code: end.exitCode,
    ended_at: end.endedAt,
    duration_ms: end.durationMs,
    final_cwd: end.finalCwd,
    end_reason: end.endReason,
    end_detail: end.endDetail,
    stdout_bytes: end.stdoutBytes,
    stderr_bytes: end.stderrBytes,
    stdout_total_bytes: end.stdoutTotal,
    stderr_total_bytes: end.stderrTotal,
    stdout_truncated: end.stdoutTruncated,
    stderr_truncated: end.stderrTruncated,
  };
}

/** The update that records an end, as UpdateItem parameters (for a transaction item). */
function finishExpression(end: CommandEnd) {
  const names: Record<string, string> = { '#status': 'status' };
  const values: Record<string, unknown> = { ':p': 'pending', ':r': 'running' };
  const sets: string[] = [];
  Object.entries(finishedFields(end)).forEach(([k, v], i) => {
    if (v === undefined) return;
    names[`#f${i}`] = k;
    values[`:f${i}`] = v;
    sets.push(`#f${i} = :f${i}`);
  });
  return {
    UpdateExpression: `SET ${sets.join(', ')} REMOVE env, stdin`,
    ConditionExpression: 'attribute_exists(created_seq) AND #status IN (:p, :r)',
    ExpressionAttributeNames: names,
    ExpressionAttributeValues: values,
  };
}

/** Records a command's end (from pending or running); throws CommandConflictError when it already ended. */
export async function finishCommand(
  sandboxId: string,
  commandId: string,
  end: CommandEnd,
  from: readonly CommandStatus[] = openCommandStatuses,
): Promise<CommandRecord> {
  const record = await updateCommand(sandboxId, commandId, {
    set: finishedFields(end),
    remove: ['env', 'stdin'],
    from,
  });
  await announceFinished(record);
  return record;
}

/** The write that ended a command won: its metrics and its command.finished event (which never throws). */
async function announceFinished(r: CommandRecord): Promise<void> {
  emitMetrics({ Status: r.status }, { CommandsFinished: 1, CommandDuration: r.duration_ms });
  await publishEvent(commandFinishedEvent(r));
}

/**
 * Records a command's end and gives its sandbox the activity, the sticky cwd
 * (`cwd`, when the command named none) and its place in `execs` back, in one
 * transaction. When the sandbox is no longer ready or running the command's
 * end is recorded alone (the sandbox's own end owns its record).
 */
export async function finishCommandOnSandbox(
  r: CommandRecord,
  end: CommandEnd,
  sandbox: { cwd?: string; now: number },
): Promise<{ record: CommandRecord; sandboxUpdated: boolean }> {
  const deadline = idleDeadline({ idle_timeout_s: r.sandbox_idle_s, expires_at_ms: r.sandbox_expires_ms }, sandbox.now);
  const commandUpdate = finishExpression(end);
  const write = await transactionally(
    dynamo().send(
      new TransactWriteCommand({
        TransactItems: [
          {
            Update: {
              TableName: config().tables.commands,
              Key: { sandbox_id: r.sandbox_id, command_id: r.command_id },
              ...commandUpdate,
              ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
            },
          },
          {
            Update: {
              TableName: config().tables.sandboxes,
              Key: { sandbox_id: r.sandbox_id },
              // Other commands still running keep the sandbox alive: the reaper re-checks `execs` before it ends anything.
              UpdateExpression: `SET last_activity_at = :now, deadline_at = :deadline${sandbox.cwd !== undefined ? ', cwd = :cwd' : ''} REMOVE #execs.#eid`,
              ConditionExpression: sandboxAcceptsCommands.expression,
              ExpressionAttributeNames: { '#status': 'status', '#execs': 'execs', '#eid': r.command_id },
              ExpressionAttributeValues: {
                ':now': sandbox.now,
                ':deadline': deadline,
                ...sandboxAcceptsCommands.values,
                ...(sandbox.cwd !== undefined ? { ':cwd': sandbox.cwd } : {}),
              },
            },
          },
        ],
      }),
    ),
  );
  if (!write.applied) {
    const [commandItem] = write.items;
    if (commandItem?.conditionFailed) {
      throw new CommandConflictError(r.command_id, await commandAsItStood(commandItem.current, r.sandbox_id, r.command_id));
    }
    // The sandbox is pausing or ending: record the command's end by itself (the caller tidies the sandbox's record).
    return { record: await finishCommand(r.sandbox_id, r.command_id, end), sandboxUpdated: false };
  }
  const record = { ...r, ...finishedFields(end), status: end.status } as CommandRecord;
  delete record.env;
  delete record.stdin;
  await announceFinished(record);
  return { record, sandboxUpdated: true };
}

/** Commands of a sandbox that may still run (pending or running). */
export async function openCommandsOfSandbox(sandboxId: string): Promise<CommandRecord[]> {
  const { items } = await queryAll<CommandRecord>({
    TableName: table(),
    KeyConditionExpression: 'sandbox_id = :s',
    FilterExpression: 'attribute_exists(created_seq) AND #status IN (:p, :r)',
    ExpressionAttributeNames: { '#status': 'status' },
    ExpressionAttributeValues: { ':s': sandboxId, ':p': 'pending', ':r': 'running' },
    ConsistentRead: true,
  });
  return items;
}

/**
 * Closes the given commands of an ended sandbox that are still open: whatever
 * the host could not finish itself is `killed` (the sandbox ended it) or
 * `lost` (its host is gone). Commands that already ended stay as they are.
 */
export async function closeOpenCommands(
  sandboxId: string,
  commandIds: readonly string[],
  status: 'killed' | 'lost',
  reason: CommandEndReason,
  detail?: string,
): Promise<number> {
  let closed = 0;
  for (const commandId of commandIds) {
    try {
      await finishCommand(sandboxId, commandId, { status, exitCode: null, endedAt: new Date().toISOString(), endReason: reason, endDetail: detail });
      closed++;
    } catch (err) {
      if (!(err instanceof CommandConflictError)) throw err; // ended by its host meanwhile, or never made
    }
  }
  return closed;
}

/** One page of a sandbox's commands, newest first. */
export async function listCommandPage(sandboxId: string, limit: number, nextToken?: string): Promise<{ items: CommandRecord[]; nextToken?: string }> {
  let startKey: Record<string, unknown> | undefined;
  if (nextToken) {
    try {
      const parsed = JSON.parse(Buffer.from(nextToken, 'base64url').toString('utf8')) as Record<string, unknown>;
      if (parsed.sandbox_id !== sandboxId || !Object.values(parsed).every((v) => typeof v === 'string')) throw new Error('foreign');
      startKey = parsed;
    } catch {
      throw new ApiError(400, 'validation_error', 'next_token: is not a valid page token');
    }
  }
  const out = await dynamo().send(
    new QueryCommand({
      TableName: table(),
      IndexName: indexName(commandsTable, 'by-sandbox-created'),
      KeyConditionExpression: 'sandbox_id = :s',
      ExpressionAttributeValues: { ':s': sandboxId },
      ScanIndexForward: false,
      Limit: limit,
      ExclusiveStartKey: startKey,
    }),
  );
  return {
    items: (out.Items ?? []) as CommandRecord[],
    ...(out.LastEvaluatedKey ? { nextToken: Buffer.from(JSON.stringify(out.LastEvaluatedKey)).toString('base64url') } : {}),
  };
}

// --- stdin ------------------------------------------------------------------------------

const stdinKey = (commandId: string, offset: number) => `${commandId}#stdin#${String(offset).padStart(16, '0')}`;

export interface StdinChunk {
  offset: number;
  data: string;
  bytes: number;
}

/**
 * Accepts a caller's stdin write at `offset`, once: the chunk item and the
 * record's next offset change together, only if `offset` is the one expected.
 * Answers the record after the write; throws CommandConflictError with the
 * record as it is when the offset or the command's state does not allow it.
 */
export async function acceptStdin(record: CommandRecord, w: { offset: number; data: string; eof: boolean }): Promise<CommandRecord> {
  const bytes = Buffer.byteLength(w.data, 'utf8');
  const next = w.offset + bytes;
  const key = { sandbox_id: record.sandbox_id, command_id: record.command_id };
  const write = await transactionally(
    dynamo().send(
      new TransactWriteCommand({
        TransactItems: [
          {
            Update: {
              TableName: config().tables.commands,
              Key: key,
              UpdateExpression: `SET stdin_offset = :next${w.eof ? ', stdin_eof = :true' : ''}`,
              ConditionExpression: '#status IN (:p, :r) AND stdin_offset = :offset AND stdin_open = :true AND attribute_not_exists(stdin_eof)',
              ExpressionAttributeNames: { '#status': 'status' },
              ExpressionAttributeValues: { ':p': 'pending', ':r': 'running', ':offset': w.offset, ':next': next, ':true': true },
            },
          },
          ...(bytes > 0
            ? [
                {
                  Put: {
                    TableName: config().tables.commands,
                    Item: {
                      sandbox_id: record.sandbox_id,
                      command_id: stdinKey(record.command_id, w.offset),
                      offset: w.offset,
                      data: w.data,
                      bytes,
                      expires_at_s: record.expires_at_s,
                    },
                    ConditionExpression: 'attribute_not_exists(command_id)',
                  },
                },
              ]
            : []),
        ],
      }),
    ),
  );
  // Any refusal (the offset moved on, the command ended, a write racing this one) answers with the record as it is now.
  if (!write.applied) throw new CommandConflictError(record.command_id, await getCommand(record.sandbox_id, record.command_id));
  return { ...record, stdin_offset: next, ...(w.eof ? { stdin_eof: true } : {}) };
}

/** Stdin written by the caller and not yet delivered, in order. */
export async function pendingStdin(sandboxId: string, commandId: string): Promise<StdinChunk[]> {
  const { items } = await queryAll<StdinChunk>({
    TableName: table(),
    KeyConditionExpression: 'sandbox_id = :s AND begins_with(command_id, :p)',
    ExpressionAttributeValues: { ':s': sandboxId, ':p': `${commandId}#stdin#` },
    ConsistentRead: true,
  });
  return items.sort((a, b) => a.offset - b.offset);
}

/** After the host wrote a chunk to the command: forget it and count it delivered. */
export async function markStdinDelivered(sandboxId: string, commandId: string, chunk: StdinChunk): Promise<void> {
  const delivered = chunk.offset + chunk.bytes;
  await dynamo().send(
    new TransactWriteCommand({
      TransactItems: [
        { Delete: { TableName: config().tables.commands, Key: { sandbox_id: sandboxId, command_id: stdinKey(commandId, chunk.offset) } } },
        {
          Update: {
            TableName: config().tables.commands,
            Key: { sandbox_id: sandboxId, command_id: commandId },
            UpdateExpression: 'SET stdin_delivered = :d',
            ConditionExpression: 'attribute_exists(created_seq)',
            ExpressionAttributeValues: { ':d': delivered },
          },
        },
      ],
    }),
  );
}

/** Drops stdin nobody will read (the command ended). */
export async function dropPendingStdin(sandboxId: string, commandId: string): Promise<void> {
  for (const chunk of await pendingStdin(sandboxId, commandId)) {
    await dynamo().send(new DeleteCommand({ TableName: table(), Key: { sandbox_id: sandboxId, command_id: stdinKey(commandId, chunk.offset) } }));
  }
}
