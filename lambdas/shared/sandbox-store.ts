/**
 * Sandbox records in DynamoDB. Every status change is a conditional write
 * whose allowed source statuses come from the state machine.
 */
import { BatchGetCommand, GetCommand, QueryCommand, UpdateCommand, type BatchGetCommandOutput, type QueryCommandInput } from '@aws-sdk/lib-dynamodb';
import { conditionally, dynamo, queryAll } from './clients/dynamodb';
import { config } from './config';
import { ApiError, notFound } from './errors';
import { eventForTransition, publishEvent, sandboxEvent } from './events';
import { activeStatuses, allowedFrom, liveStatuses, targetOf, type SandboxEvent, type SandboxStatus } from './sandbox-state';
import type { SandboxRecord } from './sandbox-record';
import { activityDeadline, execStartDeadline } from './reaper-rules';
import { indexName, sandboxesTable } from './tables';

const table = () => config().tables.sandboxes;

/** A transition lost to a concurrent change; carries the status found instead. */
export class TransitionRejectedError extends Error {
  constructor(
    readonly sandboxId: string,
    readonly event: SandboxEvent | string,
    readonly current: SandboxRecord | undefined,
  ) {
    super(`sandbox ${sandboxId}: ${event} not allowed in status ${current?.status ?? 'missing'}`);
    this.name = 'TransitionRejectedError';
  }
}

export async function getSandbox(sandboxId: string): Promise<SandboxRecord | undefined> {
  const out = await dynamo().send(new GetCommand({ TableName: table(), Key: { sandbox_id: sandboxId }, ConsistentRead: true }));
  return out.Item as SandboxRecord | undefined;
}

/**
 * The record as it stands, for an answer that already has one to fall back
 * on (202 while a host is at work): undefined when it cannot be read in the
 * request's time, and the caller answers with what it has.
 */
export async function latest(sandboxId: string): Promise<SandboxRecord | undefined> {
  return getSandbox(sandboxId).catch(() => undefined);
}

/** The tenant's sandbox, or 404: another tenant's sandbox is indistinguishable from none. */
export async function getTenantSandbox(tenantId: string, sandboxId: string): Promise<SandboxRecord> {
  const record = await getSandbox(sandboxId);
  if (!record || record.tenant_id !== tenantId) throw notFound(`sandbox ${sandboxId}`);
  return record;
}

interface UpdateSpec {
  set?: Record<string, unknown>;
  remove?: readonly string[];
  /** Extra condition, ANDed; placeholders in `values`/`names`. */
  condition?: string;
  values?: Record<string, unknown>;
  names?: Record<string, string>;
  /** Narrows the statuses the transition is allowed from (a subset of the machine's). */
  only?: readonly SandboxStatus[];
  /** Raw SET / REMOVE clauses for nested paths, using `names`/`values`. */
  extraSet?: string;
  extraRemove?: string;
}

function buildUpdate(spec: UpdateSpec) {
  const names: Record<string, string> = { ...spec.names };
  const values: Record<string, unknown> = { ...spec.values };
  const sets: string[] = [];
  const removes: string[] = [];
  let i = 0;
  for (const [k, v] of Object.entries(spec.set ?? {})) {
    if (v === undefined) continue;
    names[`#s${i}`] = k;
    values[`:s${i}`] = v;
    sets.push(`#s${i} = :s${i}`);
    i++;
  }
  if (spec.extraSet) sets.push(spec.extraSet);
  if (spec.extraRemove) removes.push(spec.extraRemove);
  for (const k of spec.remove ?? []) {
    names[`#r${i}`] = k;
    removes.push(`#r${i}`);
    i++;
  }
  const expression = [sets.length ? `SET ${sets.join(', ')}` : '', removes.length ? `REMOVE ${removes.join(', ')}` : ''].filter(Boolean).join(' ');
  return { names, values, expression };
}

/** One conditional write to a sandbox record, allowed only from `statusCondition` (null: any). */
export async function updateSandbox(
  sandboxId: string,
  event: string,
  spec: UpdateSpec,
  statusCondition: readonly SandboxStatus[] | null,
): Promise<SandboxRecord> {
  const { names, values, expression } = buildUpdate(spec);
  const conds = ['attribute_exists(sandbox_id)'];
  if (statusCondition) {
    names['#status'] = 'status';
    for (const [j, s] of statusCondition.entries()) values[`:from${j}`] = s;
    conds.push(`#status IN (${statusCondition.map((_, j) => `:from${j}`).join(', ')})`);
  }
  if (spec.condition) conds.push(`(${spec.condition})`);
  const out = await conditionally(
    dynamo().send(
      new UpdateCommand({
        TableName: table(),
        Key: { sandbox_id: sandboxId },
        UpdateExpression: expression,
        ConditionExpression: conds.join(' AND '),
        ExpressionAttributeNames: names,
        ExpressionAttributeValues: Object.keys(values).length ? values : undefined,
        ReturnValues: 'ALL_NEW',
        ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
      }),
    ),
  );
  if (!out.applied) throw new TransitionRejectedError(sandboxId, event, (out.current as SandboxRecord | undefined) ?? (await getSandbox(sandboxId)));
  return out.output.Attributes as SandboxRecord;
}

/**
 * Moves a sandbox through the state machine: one conditional write, allowed
 * only from the statuses the machine permits for `event`. The write that wins
 * publishes the lifecycle event it makes true (events.ts), so every change is
 * announced once, by whoever made it; publishing never throws.
 */
export async function transition(sandboxId: string, event: SandboxEvent, spec: UpdateSpec = {}): Promise<SandboxRecord> {
  const updated = await updateSandbox(
    sandboxId,
    event,
    { ...spec, set: { ...spec.set, status: targetOf(event), updated_at: new Date().toISOString() } },
    spec.only ? allowedFrom(event).filter((s) => spec.only!.includes(s)) : allowedFrom(event),
  );
  const type = eventForTransition(event);
  if (type) await publishEvent(sandboxEvent(type, updated));
  return updated;
}

/**
 * Records an exec starting: activity, the exec in the `execs` map (created
 * with the record), and a deadline that covers the exec. The deadline index
 * only shortlists; the reaper re-checks `execs` before ending anything.
 */
export async function beginExec(r: SandboxRecord, execId: string, execEndsBy: number, now: number): Promise<SandboxRecord> {
  const deadline = execStartDeadline(r, execEndsBy, now);
  return updateSandbox(
    r.sandbox_id,
    'exec',
    {
      set: { last_activity_at: now, deadline_at: deadline },
      names: { '#execs': 'execs', '#eid': execId },
      values: { ':ends': execEndsBy },
      extraSet: '#execs.#eid = :ends',
    },
    activeStatuses,
  );
}

/**
 * Records activity (a file call): the idle timer starts again, and the
 * deadline still covers execs in flight. A sandbox that stopped being active
 * meanwhile has nothing to record: the call that raced it fails on its own.
 */
export async function recordActivity(r: SandboxRecord, now: number): Promise<void> {
  const deadline = activityDeadline(r, now);
  try {
    await updateSandbox(r.sandbox_id, 'activity', { set: { last_activity_at: now, deadline_at: deadline } }, activeStatuses);
  } catch (err) {
    if (!(err instanceof TransitionRejectedError)) throw err;
  }
}

/** Records an exec ending: activity, sticky cwd, and the idle deadline from now. */
export async function endExec(r: SandboxRecord, execId: string, cwd: string | undefined, now: number): Promise<void> {
  // Another exec still in flight keeps the deadline out to its own end.
  const deadline = activityDeadline(r, now, execId);
  try {
    await updateSandbox(
      r.sandbox_id,
      'exec_end',
      {
        set: { last_activity_at: now, cwd, deadline_at: deadline },
        names: { '#execs': 'execs', '#eid': execId },
        extraRemove: '#execs.#eid',
      },
      activeStatuses,
    );
    return;
  } catch (err) {
    if (!(err instanceof TransitionRejectedError)) throw err;
    if (!err.current || err.current.reap_shard === undefined) return; // ended meanwhile: nothing to record
  }
  // Paused or shutting down meanwhile (e.g. the exec ran `sandbox complete`): the
  // deadline now belongs to that state, so only the exec's entry goes.
  try {
    await updateSandbox(
      r.sandbox_id,
      'exec_end',
      {
        names: { '#execs': 'execs', '#eid': execId, '#shard': 'reap_shard' },
        extraRemove: '#execs.#eid',
        condition: 'attribute_exists(#shard)',
      },
      null,
    );
  } catch (err) {
    if (!(err instanceof TransitionRejectedError)) throw err; // ended meanwhile: nothing to record
  }
}

export interface ListOptions {
  tenantId: string;
  userId?: string;
  status?: SandboxStatus;
  limit: number;
  nextToken?: string;
}

/**
 * The records of these sandboxes that exist, read consistently (BatchGetItem,
 * 100 keys a call; keys DynamoDB leaves unprocessed are asked again).
 */
export async function getSandboxes(sandboxIds: readonly string[]): Promise<SandboxRecord[]> {
  const found: SandboxRecord[] = [];
  for (let i = 0; i < sandboxIds.length; i += 100) {
    let keys: Record<string, unknown>[] | undefined = sandboxIds.slice(i, i + 100).map((sandbox_id) => ({ sandbox_id }));
    for (let round = 0; keys && keys.length > 0; round++) {
      if (round > 0) await new Promise((r) => setTimeout(r, Math.min(1000, 50 * 2 ** round)));
      const out: BatchGetCommandOutput = await dynamo().send(new BatchGetCommand({ RequestItems: { [table()]: { Keys: keys, ConsistentRead: true } } }));
      found.push(...((out.Responses?.[table()] ?? []) as SandboxRecord[]));
      keys = out.UnprocessedKeys?.[table()]?.Keys;
    }
  }
  return found;
}

export async function listSandboxes(o: ListOptions): Promise<{ items: SandboxRecord[]; nextToken?: string; total: number }> {
  const byUser = o.userId !== undefined;
  const base: QueryCommandInput = {
    TableName: table(),
    IndexName: byUser ? indexName(sandboxesTable, 'by-tenant-user') : indexName(sandboxesTable, 'by-tenant'),
    KeyConditionExpression: '#pk = :pk',
    ExpressionAttributeNames: { '#pk': byUser ? 'tenant_user' : 'tenant_id' },
    ExpressionAttributeValues: { ':pk': byUser ? `${o.tenantId}#${o.userId}` : o.tenantId },
    ScanIndexForward: false,
  };
  if (o.status) {
    base.FilterExpression = '#status = :status';
    base.ExpressionAttributeNames!['#status'] = 'status';
    base.ExpressionAttributeValues![':status'] = o.status;
  }
  const items: SandboxRecord[] = [];
  let startKey = o.nextToken ? decodePageToken(o.nextToken, o.tenantId) : undefined;
  // A filtered page can come back short: keep reading until the page is full.
  do {
    const out = await dynamo().send(new QueryCommand({ ...base, Limit: o.limit - items.length, ExclusiveStartKey: startKey }));
    items.push(...((out.Items ?? []) as SandboxRecord[]));
    startKey = out.LastEvaluatedKey;
  } while (startKey && items.length < o.limit);
  const total = await countSandboxes(base);
  return { items, total, ...(startKey ? { nextToken: encodePageToken(startKey, o.tenantId) } : {}) };
}

async function countSandboxes(base: QueryCommandInput): Promise<number> {
  let total = 0;
  let startKey: Record<string, unknown> | undefined;
  do {
    const out = await dynamo().send(new QueryCommand({ ...base, Select: 'COUNT', ExclusiveStartKey: startKey }));
    total += out.Count ?? 0;
    startKey = out.LastEvaluatedKey;
  } while (startKey);
  return total;
}

function encodePageToken(key: Record<string, unknown>, tenantId: string): string {
  return Buffer.from(JSON.stringify({ t: tenantId, k: key }), 'utf8').toString('base64url');
}

function decodePageToken(token: string, tenantId: string): Record<string, unknown> {
  try {
    const parsed = JSON.parse(Buffer.from(token, 'base64url').toString('utf8')) as { t?: unknown; k?: unknown };
    // A token is only good for the tenant it was issued to.
    if (parsed.t !== tenantId || typeof parsed.k !== 'object' || parsed.k === null) throw new Error('foreign token');
    const key = parsed.k as Record<string, unknown>;
    if (!Object.values(key).every((v) => typeof v === 'string')) throw new Error('bad key');
    if (key.tenant_id !== undefined && key.tenant_id !== tenantId) throw new Error('foreign token');
    if (key.tenant_user !== undefined && !String(key.tenant_user).startsWith(`${tenantId}#`)) throw new Error('foreign token');
    return key;
  } catch {
    throw new ApiError(400, 'validation_error', 'next_token: is not a valid page token');
  }
}

/**
 * A user's sandboxes not yet ended, newest first. Only records made within
 * `sinceMs` are read: no sandbox outlives its TTL, so older ones have ended.
 */
export async function liveSandboxesOfUser(tenantId: string, userId: string, sinceMs: number): Promise<SandboxRecord[]> {
  const { items } = await queryAll<SandboxRecord>({
    TableName: table(),
    IndexName: indexName(sandboxesTable, 'by-tenant-user'),
    KeyConditionExpression: 'tenant_user = :tu AND created_at >= :since',
    FilterExpression: '#status IN (' + liveStatuses.map((_, i) => `:s${i}`).join(', ') + ')',
    ExpressionAttributeNames: { '#status': 'status' },
    ExpressionAttributeValues: {
      ':tu': `${tenantId}#${userId}`,
      ':since': new Date(sinceMs).toISOString(),
      ...Object.fromEntries(liveStatuses.map((st, i) => [`:s${i}`, st])),
    },
    ScanIndexForward: false,
  });
  return items;
}

/** Sandboxes holding a container on a host (Query on the sparse by-host index). */
export async function liveSandboxesOnHost(hostId: string): Promise<SandboxRecord[]> {
  const { items } = await queryAll<SandboxRecord>({
    TableName: table(),
    IndexName: indexName(sandboxesTable, 'by-host'),
    KeyConditionExpression: 'live_host_id = :h',
    ExpressionAttributeValues: { ':h': hostId },
  });
  return items;
}
