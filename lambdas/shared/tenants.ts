/**
 * Tenants: the per-tenant cap on sandboxes not yet ended. A create puts its
 * sandbox id into the tenant's `live_sandbox_ids` set with one conditional
 * UpdateItem before placement, and the end of the sandbox takes it out, so
 * two creates can never both take a tenant's last slot. A set rather than a
 * counter: taking or giving back the same sandbox's slot twice (an SDK retry
 * of a request DynamoDB applied after all, two callers ending one sandbox)
 * changes nothing, and a slot whose sandbox has ended is found by its id.
 * The cap is MAX_SANDBOXES_PER_TENANT unless the tenant's item sets its own
 * `max_sandboxes`.
 */
import { ConditionalCheckFailedException } from '@aws-sdk/client-dynamodb';
import { unmarshall } from '@aws-sdk/util-dynamodb';
import { GetCommand, UpdateCommand } from '@aws-sdk/lib-dynamodb';
import { dynamo } from './clients/dynamodb';
import { config } from './config';
import { ApiError } from './errors';
import { logger } from './logger';
import { getSandboxes } from './sandbox-store';
import { isTerminal } from './sandbox-state';

export interface TenantRecord {
  tenant_id: string;
  /** The tenant's sandboxes not yet in a terminal status (and creates in flight). */
  live_sandbox_ids?: Set<string>;
  /** Overrides MAX_SANDBOXES_PER_TENANT for this tenant. */
  max_sandboxes?: number;
}

/** Seconds a caller over its sandbox cap is told to wait: a slot frees only when one of its sandboxes ends. */
export const tenantFullRetryAfterSeconds = 10;

const table = () => config().tables.tenants;

/** How many slots the tenant holds. */
export function liveSandboxCount(t: Pick<TenantRecord, 'live_sandbox_ids'> | undefined): number {
  return t?.live_sandbox_ids?.size ?? 0;
}

/**
 * Takes one of the tenant's sandbox slots for `sandboxId`, or throws 429
 * too_many_requests (with Retry-After) when the tenant already has its cap of
 * live sandboxes. Taking a slot the sandbox already holds succeeds.
 */
export async function takeTenantSlot(tenantId: string, sandboxId: string): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    const old = await tryTake(tenantId, sandboxId);
    if (!old) return;
    const cap = old.max_sandboxes ?? config().limits.maxSandboxesPerTenant;
    const held = [...(old.live_sandbox_ids ?? [])];
    // A slot whose sandbox has ended is one its end could not give back (the
    // function was stopped between the two writes): give it back now, then try again.
    const records = new Map((await getSandboxes(held)).map((r) => [r.sandbox_id, r]));
    const stale = held.filter((id) => {
      const r = records.get(id);
      return r !== undefined && isTerminal(r.status);
    });
    if (stale.length > 0 && attempt === 0) {
      for (const id of stale) await releaseTenantSlot(tenantId, id);
      logger.warn('tenant slots of ended sandboxes given back', { tenantId, sandboxIds: stale });
      continue;
    }
    // No record yet: a create that took its slot a moment ago and has not written its record.
    const creating = held.filter((id) => (records.get(id)?.status ?? 'creating') === 'creating').length;
    throw new ApiError(429, 'too_many_requests', tenantFullMessage(tenantId, cap, held.length, creating), {
      'Retry-After': String(tenantFullRetryAfterSeconds),
    });
  }
}

/** Adds the id to the tenant's set under its cap; answers the tenant's item when the cap refused it. */
async function tryTake(tenantId: string, sandboxId: string): Promise<Partial<TenantRecord> | undefined> {
  const fallback = config().limits.maxSandboxesPerTenant;
  // No set yet counts as zero, which is under any cap of at least one.
  const under = (cap: string, allowEmpty: boolean) =>
    allowEmpty ? `(attribute_not_exists(#live) OR size(#live) < ${cap})` : `size(#live) < ${cap}`;
  try {
    await dynamo().send(
      new UpdateCommand({
        TableName: table(),
        Key: { tenant_id: tenantId },
        UpdateExpression: 'ADD #live :id',
        ConditionExpression:
          `contains(#live, :sid) OR (attribute_not_exists(max_sandboxes) AND ${under(':default', fallback > 0)}) ` +
          `OR (attribute_exists(max_sandboxes) AND ${under('max_sandboxes', true)} AND max_sandboxes > :zero)`,
        ExpressionAttributeNames: { '#live': 'live_sandbox_ids' },
        ExpressionAttributeValues: { ':id': new Set([sandboxId]), ':sid': sandboxId, ':default': fallback, ':zero': 0 },
        ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
      }),
    );
    return undefined;
  } catch (err) {
    if (!(err instanceof ConditionalCheckFailedException)) throw err;
    return (err.Item ? unmarshall(err.Item as Parameters<typeof unmarshall>[0]) : {}) as Partial<TenantRecord>;
  }
}

/**
 * The 429 message for a tenant at its cap: `held` slots, `creating` of them
 * creates still in flight.
 *
 * @example tenantFullMessage('acme', 2, 2, 1)
 *   // 'tenant acme is at its limit of 2 sandboxes: 1 not yet ended and 1 still being created (a create that fails gives its slot back); destroy one or retry later'
 */
export function tenantFullMessage(tenantId: string, cap: number, held: number, creating: number): string {
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
  await dynamo().send(
    new UpdateCommand({
      TableName: table(),
      Key: { tenant_id: tenantId },
      UpdateExpression: 'DELETE #live :id',
      ConditionExpression: 'attribute_exists(tenant_id)',
      ExpressionAttributeNames: { '#live': 'live_sandbox_ids' },
      ExpressionAttributeValues: { ':id': new Set([sandboxId]) },
    }),
  ).catch((err: unknown) => {
    // No tenant item: nothing to give back (the item is made by the first take).
    if (!(err instanceof ConditionalCheckFailedException)) throw err;
  });
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
