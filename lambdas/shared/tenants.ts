/**
 * Tenants: the per-tenant cap on sandboxes not yet ended. A create takes a
 * slot with one conditional UpdateItem before placement and the end of the
 * sandbox gives it back, so two creates can never both take a tenant's last
 * slot. The cap is MAX_SANDBOXES_PER_TENANT unless the tenant's item sets
 * its own `max_sandboxes`.
 */
import { ConditionalCheckFailedException } from '@aws-sdk/client-dynamodb';
import { unmarshall } from '@aws-sdk/util-dynamodb';
import { GetCommand, UpdateCommand } from '@aws-sdk/lib-dynamodb';
import { dynamo } from './clients/dynamodb';
import { config } from './config';
import { ApiError } from './errors';
import { logger } from './logger';
import { countCreatingSandboxes } from './sandbox-store';

export interface TenantRecord {
  tenant_id: string;
  /** Sandboxes of the tenant not yet in a terminal status. */
  live_sandboxes?: number;
  /** Overrides MAX_SANDBOXES_PER_TENANT for this tenant. */
  max_sandboxes?: number;
}

/** Seconds a caller over its sandbox cap is told to wait: a slot frees only when one of its sandboxes ends. */
export const tenantFullRetryAfterSeconds = 10;

const table = () => config().tables.tenants;

/**
 * How far back a create can still be in flight: the create timeout (120 s) plus
 * the reaper's period (a minute on AWS) that ends a create that died, with room.
 */
const createInFlightWindowMs = 15 * 60_000;

/**
 * Takes one of the tenant's sandbox slots, or throws 429 too_many_requests
 * (with Retry-After) when the tenant already has its cap of live sandboxes.
 */
export async function takeTenantSlot(tenantId: string): Promise<void> {
  const fallback = config().limits.maxSandboxesPerTenant;
  // No counter yet counts as zero, which is under any cap of at least one.
  const underDefault = fallback > 0 ? '(attribute_not_exists(live_sandboxes) OR live_sandboxes < :default)' : 'live_sandboxes < :default';
  try {
    await dynamo().send(
      new UpdateCommand({
        TableName: table(),
        Key: { tenant_id: tenantId },
        UpdateExpression: 'SET live_sandboxes = if_not_exists(live_sandboxes, :zero) + :one',
        ConditionExpression: `(attribute_not_exists(max_sandboxes) AND ${underDefault}) OR (attribute_exists(max_sandboxes) AND live_sandboxes < max_sandboxes)`,
        ExpressionAttributeValues: { ':zero': 0, ':one': 1, ':default': fallback },
        ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
      }),
    );
  } catch (err) {
    if (!(err instanceof ConditionalCheckFailedException)) throw err;
    const old = (err.Item ? unmarshall(err.Item as Parameters<typeof unmarshall>[0]) : {}) as Partial<TenantRecord>;
    const cap = old.max_sandboxes ?? fallback;
    const held = old.live_sandboxes ?? 0;
    // The counter holds a slot from the start of a create: say how many are still creates
    // (during a burst, all of them may be), since a create that fails gives its slot back.
    // Eventually consistent: a create that wrote its record a moment ago may be missing, and then counts as not yet ended.
    const creating = Math.min(held, await countCreatingSandboxes(tenantId, Date.now() - createInFlightWindowMs));
    throw new ApiError(429, 'too_many_requests', tenantFullMessage(tenantId, cap, held, creating), {
      'Retry-After': String(tenantFullRetryAfterSeconds),
    });
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

/** Gives a slot back; never below zero (a second give-back for one sandbox is logged, not applied). */
export async function releaseTenantSlot(tenantId: string): Promise<void> {
  try {
    await dynamo().send(
      new UpdateCommand({
        TableName: table(),
        Key: { tenant_id: tenantId },
        UpdateExpression: 'SET live_sandboxes = live_sandboxes - :one',
        ConditionExpression: 'live_sandboxes > :zero',
        ExpressionAttributeValues: { ':one': 1, ':zero': 0 },
      }),
    );
  } catch (err) {
    if (!(err instanceof ConditionalCheckFailedException)) throw err;
    logger.warn('tenant slot given back while the counter was already zero', { tenantId });
  }
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
            UpdateExpression: 'SET max_sandboxes = :max, live_sandboxes = if_not_exists(live_sandboxes, :zero)',
            ExpressionAttributeValues: { ':max': max, ':zero': 0 },
          }),
    }),
  );
}
