/**
 * Hosts in DynamoDB: registration and heartbeats (by the host daemon), and
 * placement (by create): a slot is taken with one conditional UpdateItem, so
 * two creates can never both take a host's last slot.
 */
import { ConditionalCheckFailedException } from '@aws-sdk/client-dynamodb';
import { GetCommand, UpdateCommand } from '@aws-sdk/lib-dynamodb';
import { dynamo, queryAll } from './clients/dynamodb';
import { config } from './config';
import { ApiError } from './errors';
import { hostsTable, indexName } from './tables';

export type HostStatus = 'active' | 'draining' | 'lost';

export interface HostRecord {
  host_id: string;
  /** 'active' while the host accepts placements (sparse by-pool index). */
  pool?: 'active';
  status: HostStatus;
  capacity: number;
  slots_used: number;
  registered_at: string;
  last_heartbeat_at: number;
  running_sandboxes?: number;
  /** Warm pool containers ready on the host at its last heartbeat (never sandboxes, never slots). */
  warm_containers?: number;
  agent_version?: string;
  lost_at?: string;
}

const table = () => config().tables.hosts;

/** Registers (or re-registers) a host as active with `capacity` slots. */
export async function registerHost(h: { hostId: string; capacity: number; agentVersion?: string; now?: number }): Promise<void> {
  const now = h.now ?? Date.now();
  await dynamo().send(
    new UpdateCommand({
      TableName: table(),
      Key: { host_id: h.hostId },
      UpdateExpression:
        'SET #pool = :active, #status = :active, #capacity = :cap, slots_used = if_not_exists(slots_used, :zero), registered_at = if_not_exists(registered_at, :iso), last_heartbeat_at = :now, agent_version = :v REMOVE lost_at',
      ExpressionAttributeNames: { '#pool': 'pool', '#status': 'status', '#capacity': 'capacity' },
      ExpressionAttributeValues: {
        ':active': 'active',
        ':cap': h.capacity,
        ':zero': 0,
        ':iso': new Date(now).toISOString(),
        ':now': now,
        ':v': h.agentVersion ?? 'unknown',
      },
    }),
  );
}

/** Heartbeat from a host daemon; refused (false) once the host was marked lost. */
export async function heartbeatHost(hostId: string, fields: { runningSandboxes: number; warmContainers?: number; now?: number }): Promise<boolean> {
  const warm = fields.warmContainers !== undefined;
  try {
    await dynamo().send(
      new UpdateCommand({
        TableName: table(),
        Key: { host_id: hostId },
        UpdateExpression: `SET last_heartbeat_at = :now, running_sandboxes = :n${warm ? ', warm_containers = :w' : ''}`,
        ConditionExpression: 'attribute_exists(host_id) AND #status <> :lost',
        ExpressionAttributeNames: { '#status': 'status' },
        ExpressionAttributeValues: { ':now': fields.now ?? Date.now(), ':n': fields.runningSandboxes, ':lost': 'lost', ...(warm ? { ':w': fields.warmContainers } : {}) },
      }),
    );
    return true;
  } catch (err) {
    if (err instanceof ConditionalCheckFailedException) return false;
    throw err;
  }
}

export async function getHost(hostId: string): Promise<HostRecord | undefined> {
  const out = await dynamo().send(new GetCommand({ TableName: table(), Key: { host_id: hostId }, ConsistentRead: true }));
  return out.Item as HostRecord | undefined;
}

/** Hosts accepting placements (Query on the sparse by-pool index). */
export async function activeHosts(): Promise<HostRecord[]> {
  const { items } = await queryAll<HostRecord>({
    TableName: table(),
    IndexName: indexName(hostsTable, 'by-pool'),
    KeyConditionExpression: '#pool = :active',
    ExpressionAttributeNames: { '#pool': 'pool' },
    ExpressionAttributeValues: { ':active': 'active' },
  });
  return items;
}

/**
 * Takes a slot on the least-loaded live host. Throws 503 no_capacity when
 * every live host is full (the Auto Scaling group adds hosts).
 */
export async function placeSandbox(now = Date.now()): Promise<HostRecord> {
  const freshAfter = now - config().hostLostAfterSeconds * 1000;
  const candidates = (await activeHosts())
    .filter((h) => h.last_heartbeat_at >= freshAfter && h.slots_used < h.capacity)
    .sort((a, b) => a.slots_used / a.capacity - b.slots_used / b.capacity);
  for (const host of candidates) {
    try {
      const out = await dynamo().send(
        new UpdateCommand({
          TableName: table(),
          Key: { host_id: host.host_id },
          UpdateExpression: 'SET slots_used = slots_used + :one',
          ConditionExpression: '#pool = :active AND slots_used < #capacity',
          ExpressionAttributeNames: { '#pool': 'pool', '#capacity': 'capacity' },
          ExpressionAttributeValues: { ':one': 1, ':active': 'active' },
          ReturnValues: 'ALL_NEW',
        }),
      );
      return out.Attributes as HostRecord;
    } catch (err) {
      if (!(err instanceof ConditionalCheckFailedException)) throw err; // full since we read it: next host
    }
  }
  throw new ApiError(503, 'no_capacity', 'no sandbox host has a free slot right now; retry shortly', { 'Retry-After': '5' });
}

/** Gives a slot back; never below zero. */
export async function releaseSlot(hostId: string): Promise<void> {
  try {
    await dynamo().send(
      new UpdateCommand({
        TableName: table(),
        Key: { host_id: hostId },
        UpdateExpression: 'SET slots_used = slots_used - :one',
        ConditionExpression: 'slots_used > :zero',
        ExpressionAttributeValues: { ':one': 1, ':zero': 0 },
      }),
    );
  } catch (err) {
    if (!(err instanceof ConditionalCheckFailedException)) throw err;
  }
}

/** Sets slots_used to the counted truth (the daemon's reconciliation). */
export async function setSlotsUsed(hostId: string, used: number): Promise<void> {
  await dynamo().send(
    new UpdateCommand({
      TableName: table(),
      Key: { host_id: hostId },
      UpdateExpression: 'SET slots_used = :n',
      ConditionExpression: 'attribute_exists(host_id)',
      ExpressionAttributeValues: { ':n': used },
    }),
  );
}

/** Marks a host lost (reaper): out of the placement pool. Only one caller wins. */
export async function markHostLost(hostId: string, lastSeenBefore: number): Promise<boolean> {
  try {
    await dynamo().send(
      new UpdateCommand({
        TableName: table(),
        Key: { host_id: hostId },
        UpdateExpression: 'SET #status = :lost, lost_at = :iso REMOVE #pool',
        ConditionExpression: '#status <> :lost AND last_heartbeat_at < :before',
        ExpressionAttributeNames: { '#status': 'status', '#pool': 'pool' },
        ExpressionAttributeValues: { ':lost': 'lost', ':iso': new Date().toISOString(), ':before': lastSeenBefore },
      }),
    );
    return true;
  } catch (err) {
    if (err instanceof ConditionalCheckFailedException) return false;
    throw err;
  }
}
