/**
 * Tenants: the per-tenant cap on sandboxes not yet ended. A create puts its
 * sandbox id into the tenant's `live_sandbox_ids` set under a condition, in
 * one transaction with the sandbox's record, and the end of the sandbox takes it out, so
 * two creates can never both take a tenant's last slot. A set rather than a
 * counter: taking or giving back the same sandbox's slot twice (an SDK retry
 * of a request DynamoDB applied after all, two callers ending one sandbox)
 * changes nothing, and a slot whose sandbox has ended is found by its id.
 * The cap is MAX_SANDBOXES_PER_TENANT unless the tenant's item sets its own
 * `max_sandboxes`.
 */
import { GetCommand, TransactWriteCommand, UpdateCommand } from '@aws-sdk/lib-dynamodb';
import { conditionally, dynamo, transactionally } from './clients/dynamodb';
import { config } from './config';
import { ApiError } from './errors';
import { publishEvent, sandboxEvent } from './events';
import { logger } from './logger';
import { getSandboxes } from './sandbox-store';
import { isTerminal } from './sandbox-state';
import type { SandboxRecord } from './sandbox-record';

export interface TenantRecord {
  tenant_id: string;
  /** The tenant's sandboxes not yet in a terminal status (and creates in flight). */
  live_sandbox_ids?: Set<string>;
  /** Overrides MAX_SANDBOXES_PER_TENANT for this tenant. */
  max_sandboxes?: number;
}

/** Seconds a caller over its sandbox cap is told to wait: a slot frees only when one of its sandboxes ends. */
const tenantFullRetryAfterSeconds = 10;

const table = () => config().tables.tenants;

/** How many slots the tenant holds. */
export function liveSandboxCount(t: Pick<TenantRecord, 'live_sandbox_ids'> | undefined): number {
  return t?.live_sandbox_ids?.size ?? 0;
}

/**
 * Records a new sandbox and takes one of its tenant's slots for it in one
 * transaction, or throws 429 too_many_requests (with Retry-After) when the
 * tenant already has its cap of live sandboxes. One transaction, so a slot
 * never exists without its record: a create that dies or times out either
 * holds both (and its record is ended by the reaper like any create that
 * died) or neither; an SDK retry carries the same ClientRequestToken and is
 * applied once. Publishes sandbox.created once the record is there.
 */
export async function recordWithTenantSlot(record: SandboxRecord): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    const write = await transactionally(
      dynamo().send(
        new TransactWriteCommand({
          TransactItems: [
            { Update: { ...takeSlot(record.tenant_id, record.sandbox_id), ReturnValuesOnConditionCheckFailure: 'ALL_OLD' } },
            { Put: { TableName: config().tables.sandboxes, Item: record, ConditionExpression: 'attribute_not_exists(sandbox_id)' } },
          ],
        }),
      ),
    );
    if (write.applied) {
      await publishEvent(sandboxEvent('sandbox.created', record));
      return;
    }
    const [slot] = write.items;
    if (!slot?.conditionFailed) throw write.error;
    // Only a first refusal may give back slots of ended sandboxes and try again.
    if (!(await refuseIfFull(record.tenant_id, (slot.current ?? {}) as Partial<TenantRecord>, attempt === 0)))
      throw new Error('tenant slot refused under the cap');
  }
}

/**
 * Throws 429 when the tenant is at its cap now (a consistent read), so a
 * create refused for its tenant never takes a host slot; the transaction in
 * recordWithTenantSlot is what holds the cap under races.
 */
export async function refuseIfTenantFull(tenantId: string): Promise<void> {
  await refuseIfFull(tenantId, await getTenant(tenantId));
}

/** The UpdateItem that adds the id to the tenant's set under its cap (taking a slot it holds already succeeds). */
function takeSlot(tenantId: string, sandboxId: string) {
  const fallback = config().limits.maxSandboxesPerTenant;
  // No set yet counts as zero, which is under any cap of at least one.
  const under = (cap: string, allowEmpty: boolean) => (allowEmpty ? `(attribute_not_exists(#live) OR size(#live) < ${cap})` : `size(#live) < ${cap}`);
  return {
    TableName: table(),
    Key: { tenant_id: tenantId },
    UpdateExpression: 'ADD #live :id',
    ConditionExpression:
      `contains(#live, :sid) OR (attribute_not_exists(max_sandboxes) AND ${under(':default', fallback > 0)}) ` +
      `OR (attribute_exists(max_sandboxes) AND ${under('max_sandboxes', true)} AND max_sandboxes > :zero)`,
    ExpressionAttributeNames: { '#live': 'live_sandbox_ids' },
    ExpressionAttributeValues: { ':id': new Set([sandboxId]), ':sid': sandboxId, ':default': fallback, ':zero': 0 },
  };
}

/**
 * Throws 429 when the tenant item shows it at its cap, after giving back the
 * slots of sandboxes that have ended (an end whose give-back did not land);
 * answers true when it gave some back (worth another try), false when under the cap.
 */
async function refuseIfFull(tenantId: string, t: Partial<TenantRecord> | undefined, heal = true): Promise<boolean> {
  const cap = t?.max_sandboxes ?? config().limits.maxSandboxesPerTenant;
  const held = [...(t?.live_sandbox_ids ?? [])];
  if (held.length < cap) return false;
  const records = new Map((await getSandboxes(held)).map((r) => [r.sandbox_id, r]));
  const stale = held.filter((id) => {
    const r = records.get(id);
    // No record: the slot was taken with one that has gone (records are never deleted while live), or by an older version.
    return r === undefined || isTerminal(r.status);
  });
  if (heal && stale.length > 0 && held.length - stale.length < cap) {
    for (const id of stale) await releaseTenantSlot(tenantId, id);
    logger.warn('tenant slots of ended sandboxes given back', { tenantId, sandboxIds: stale });
    return true;
  }
  const creating = held.filter((id) => records.get(id)?.status === 'creating').length;
  throw new ApiError(429, 'too_many_requests', tenantFullMessage(tenantId, cap, held.length, creating), {
    'Retry-After': String(tenantFullRetryAfterSeconds),
  });
}

/**
 * The 429 message for a tenant at its cap: `held` slots, `creating` of them
 * creates still in flight.
 *
 * @example tenantFullMessage('acme', 2, 2, 1)
 *   // 'tenant acme is at its limit of 2 sandboxes: 1 not yet ended and 1 still being created (a create that fails gives its slot back); destroy one or retry later'
 */
function tenantFullMessage(tenantId: string, cap: number, held: number, creating: number): string {
  const plural = (n: number, one: string, many: string) => `${n} ${n === 1 ? one : many}`;
  const existing = held - creating;
  const parts =
    creating === 0
      ? `${plural(existing, 'sandbox', 'sandboxes')} not yet ended`
      : existing === 0
        ? `${plural(creating, 'sandbox', 'sandboxes')} still being created (a create that fails gives its slot back)`
        : `${existing} not yet ended and ${creating} still being created (a create that fails gives its slot back)`;
  return `tenant ${tenantId} is at its limit of ${plural(cap, 'sandbox', 'sandboxes')}: ${parts}; destroy one or retry later`;
}

/** Gives the sandbox's slot back; giving back a slot it no longer holds changes nothing. */
export async function releaseTenantSlot(tenantId: string, sandboxId: string): Promise<void> {
  // Not applied: no tenant item, nothing to give back (the item is made by the first take).
  await conditionally(
    dynamo().send(
      new UpdateCommand({
        TableName: table(),
        Key: { tenant_id: tenantId },
        UpdateExpression: 'DELETE #live :id',
        ConditionExpression: 'attribute_exists(tenant_id)',
        ExpressionAttributeNames: { '#live': 'live_sandbox_ids' },
        ExpressionAttributeValues: { ':id': new Set([sandboxId]) },
      }),
    ),
  );
}

export async function getTenant(tenantId: string): Promise<TenantRecord | undefined> {
  const out = await dynamo().send(new GetCommand({ TableName: table(), Key: { tenant_id: tenantId }, ConsistentRead: true }));
  return out.Item as TenantRecord | undefined;
}

/** Sets (a number) or removes (undefined) the tenant's own sandbox cap. */
export async function setTenantSandboxLimit(tenantId: string, max: number | undefined): Promise<void> {
  if (max !== undefined && (!Number.isInteger(max) || max < 0)) throw new Error(`max_sandboxes must be a non-negative integer, got ${max}`);
  await dynamo().send(
    new UpdateCommand({
      TableName: table(),
      Key: { tenant_id: tenantId },
      ...(max === undefined
        ? { UpdateExpression: 'REMOVE max_sandboxes' }
        : {
            UpdateExpression: 'SET max_sandboxes = :max',
            ExpressionAttributeValues: { ':max': max },
          }),
    }),
  );
}
