/**
 * Hosts in DynamoDB: registration and heartbeats (by the host daemon), and
 * placement (by create). A host advertises what it can allocate (CPU, memory,
 * disk, sandboxes); each sandbox's share is one entry of the host's
 * `allocations` map, taken together with the totals in one conditional
 * UpdateItem, so two creates can never both take a host's last gigabyte, and
 * given back the same way (once: the entry must still be there). The daemon's
 * reconciliation corrects the entries against the sandboxes really there
 * (placement.ts decides, this module writes).
 */
import { GetCommand, UpdateCommand } from '@aws-sdk/lib-dynamodb';
import { conditionally, dynamo, queryAll } from './clients/dynamodb';
import { config } from './config';
import { logger } from './logger';
import { rankHosts, zeroResources, type Allocation, type PlacementStrategy, type Resources } from './placement';
import { hostsTable, indexName } from './tables';

export type HostStatus = 'active' | 'draining' | 'lost';
/** The by-pool index partitions: hosts taking placements, and hosts draining (still watched for heartbeats). */
export type HostPool = 'active' | 'draining';

export interface HostRecord {
  host_id: string;
  /** Set while the host heartbeats into the control plane's view: 'active' takes placements (sparse by-pool index). */
  pool?: HostPool;
  status: HostStatus;
  /** What the host may hand out. */
  capacity: Resources;
  /** The sum of `allocations`, kept with them in every write. */
  allocated: Resources;
  /** sandbox id -> its share. */
  allocations: Record<string, Allocation>;
  registered_at: string;
  last_heartbeat_at: number;
  running_sandboxes?: number;
  /** Warm pool containers ready on the host at its last heartbeat (never sandboxes, never slots). */
  warm_containers?: number;
  agent_version?: string;
  /** Image (by digest) the host has pulled and creates on it use. */
  image?: string;
  /** The image reference (SANDBOX_IMAGE, e.g. repo:tag) the host resolved to `image`. */
  image_ref?: string;
  /** Whether the host asked Auto Scaling to protect it from scale-in (it holds sandboxes). */
  scale_in_protected?: boolean;
  draining_since?: string;
  /** Why it drains: a termination lifecycle action, a Spot interruption warning, an operator. */
  drain_reason?: string;
  /** Epoch ms by which its drain must be over (the environment's longest drain, or a Spot warning's two minutes). */
  drain_deadline_at?: number;
  lost_at?: string;
}

const table = () => config().tables.hosts;

// `capacity` is one of DynamoDB's reserved words: every attribute of placement goes by a placeholder.
const allocationNames = { '#allocs': 'allocations', '#used': 'allocated' };
/** Adds :cpu, :mem, :disk and :one (a sandbox) to the totals. */
const addToTotals =
  '#used.cpu_milli = #used.cpu_milli + :cpu, #used.memory_mb = #used.memory_mb + :mem, #used.disk_mb = #used.disk_mb + :disk, #used.sandboxes = #used.sandboxes + :one';

/**
 * Registers (or re-registers) a host with what it can allocate. A new or
 * returning host (lost, or never seen) becomes active; a host that is
 * draining stays draining (its daemon restarted in the middle of a drain).
 * `image`: the sandbox image it has pulled, recorded in the same write (by
 * digest, with the reference it resolved), so a host is never offered creates
 * before the control plane can name its image.
 */
export async function registerHost(h: {
  hostId: string;
  capacity: Resources;
  agentVersion?: string;
  image?: { digestRef: string; ref: string };
  now?: number;
}): Promise<HostStatus> {
  const now = h.now ?? Date.now();
  const common = {
    ':cap': h.capacity,
    ':zero': zeroResources,
    ':none': {},
    ':iso': new Date(now).toISOString(),
    ':now': now,
    ':v': h.agentVersion ?? 'unknown',
  };
  const fields =
    '#cap = :cap, #used = if_not_exists(#used, :zero), #allocs = if_not_exists(#allocs, :none), registered_at = if_not_exists(registered_at, :iso), last_heartbeat_at = :now, agent_version = :v' +
    (h.image ? ', #image = :image, image_ref = :imageRef' : '');
  const fieldNames = { '#cap': 'capacity', '#used': 'allocated', '#allocs': 'allocations', ...(h.image ? { '#image': 'image' } : {}) };
  const values = { ...common, ...(h.image ? { ':image': h.image.digestRef, ':imageRef': h.image.ref } : {}) };
  const write = await conditionally(
    dynamo().send(
      new UpdateCommand({
        TableName: table(),
        Key: { host_id: h.hostId },
        // slots_used: the counter allocations replaced.
        UpdateExpression: `SET #pool = :active, #status = :active, ${fields} REMOVE lost_at, slots_used`,
        ConditionExpression: 'attribute_not_exists(host_id) OR #status <> :draining',
        ExpressionAttributeNames: { '#pool': 'pool', '#status': 'status', ...fieldNames },
        ExpressionAttributeValues: { ...values, ':active': 'active', ':draining': 'draining' },
      }),
    ),
  );
  if (write.applied) return 'active';
  await dynamo().send(
    new UpdateCommand({
      TableName: table(),
      Key: { host_id: h.hostId },
      UpdateExpression: `SET ${fields}`,
      ConditionExpression: '#status = :draining',
      ExpressionAttributeNames: { '#status': 'status', ...fieldNames },
      ExpressionAttributeValues: { ...values, ':draining': 'draining' },
    }),
  );
  return 'draining';
}

/** Heartbeat from a host daemon: the host as it stands now, or undefined once it was marked lost. */
export async function heartbeatHost(
  hostId: string,
  fields: { runningSandboxes: number; warmContainers?: number; now?: number },
): Promise<HostRecord | undefined> {
  const warm = fields.warmContainers !== undefined;
  const out = await conditionally(
    dynamo().send(
      new UpdateCommand({
        TableName: table(),
        Key: { host_id: hostId },
        UpdateExpression: `SET last_heartbeat_at = :now, running_sandboxes = :n${warm ? ', warm_containers = :w' : ''}`,
        ConditionExpression: 'attribute_exists(host_id) AND #status <> :lost',
        ExpressionAttributeNames: { '#status': 'status' },
        ExpressionAttributeValues: {
          ':now': fields.now ?? Date.now(),
          ':n': fields.runningSandboxes,
          ':lost': 'lost',
          ...(warm ? { ':w': fields.warmContainers } : {}),
        },
        ReturnValues: 'ALL_NEW',
      }),
    ),
  );
  return out.applied ? (out.output.Attributes as HostRecord) : undefined;
}

export async function getHost(hostId: string): Promise<HostRecord | undefined> {
  const out = await dynamo().send(new GetCommand({ TableName: table(), Key: { host_id: hostId }, ConsistentRead: true }));
  return out.Item as HostRecord | undefined;
}

/** Hosts in one pool (Query on the sparse by-pool index). */
export async function hostsInPool(pool: HostPool): Promise<HostRecord[]> {
  const { items } = await queryAll<HostRecord>({
    TableName: table(),
    IndexName: indexName(hostsTable, 'by-pool'),
    KeyConditionExpression: '#pool = :pool',
    ExpressionAttributeNames: { '#pool': 'pool' },
    ExpressionAttributeValues: { ':pool': pool },
  });
  return items;
}

/** Hosts accepting placements. */
export function activeHosts(): Promise<HostRecord[]> {
  return hostsInPool('active');
}

/**
 * The conditional write that takes `request` on `host` for `sandboxId`: it
 * holds only while the host is active, has the capacity it had when it was
 * read, and still has room (the totals never pass the capacity). Alone in
 * takeAllocation, or in a transaction with the record (a waiting create).
 */
export function allocationUpdate(host: Pick<HostRecord, 'host_id' | 'capacity'>, sandboxId: string, request: Resources, now: number) {
  const c = host.capacity;
  return {
    TableName: table(),
    Key: { host_id: host.host_id },
    UpdateExpression: `SET #allocs.#sbx = :entry, ${addToTotals}`,
    ConditionExpression: [
      '#pool = :active',
      'attribute_not_exists(#allocs.#sbx)',
      '#cap.cpu_milli = :capCpu AND #cap.memory_mb = :capMem AND #cap.disk_mb = :capDisk AND #cap.sandboxes = :capCount',
      '#used.cpu_milli <= :roomCpu AND #used.memory_mb <= :roomMem AND #used.disk_mb <= :roomDisk AND #used.sandboxes <= :roomCount',
    ].join(' AND '),
    ExpressionAttributeNames: { '#pool': 'pool', '#sbx': sandboxId, ...allocationNames, '#cap': 'capacity' },
    ExpressionAttributeValues: {
      ':entry': { cpu_milli: request.cpu_milli, memory_mb: request.memory_mb, disk_mb: request.disk_mb, at: now } satisfies Allocation,
      ':cpu': request.cpu_milli,
      ':mem': request.memory_mb,
      ':disk': request.disk_mb,
      ':one': 1,
      ':active': 'active',
      ':capCpu': c.cpu_milli,
      ':capMem': c.memory_mb,
      ':capDisk': c.disk_mb,
      ':capCount': c.sandboxes,
      ':roomCpu': c.cpu_milli - request.cpu_milli,
      ':roomMem': c.memory_mb - request.memory_mb,
      ':roomDisk': c.disk_mb - request.disk_mb,
      ':roomCount': c.sandboxes - 1,
    },
  };
}

/**
 * Takes `request` on `host` for `sandboxId` (allocationUpdate). Undefined
 * when it lost the race (another create took the room, the host left the pool).
 */
async function takeAllocation(
  host: Pick<HostRecord, 'host_id' | 'capacity'>,
  sandboxId: string,
  request: Resources,
  now = Date.now(),
): Promise<HostRecord | undefined> {
  const out = await conditionally(dynamo().send(new UpdateCommand({ ...allocationUpdate(host, sandboxId, request, now), ReturnValues: 'ALL_NEW' })));
  return out.applied ? (out.output.Attributes as HostRecord) : undefined;
}

/**
 * Places a sandbox: tries the hosts it fits on in the strategy's order and
 * takes the first allocation that holds. Undefined when no active host has
 * room (the caller waits for capacity), logged with why at `noRoomLevel`:
 * `info` for a caller that waits for a host as a matter of course (a create in
 * a fleet that rests at zero), `warn` (the default) when no room is an answer.
 */
export async function placeSandbox(
  sandboxId: string,
  request: Resources,
  o: { strategy?: PlacementStrategy; image?: string; now?: number; noRoomLevel?: 'info' | 'warn' } = {},
): Promise<HostRecord | undefined> {
  const now = o.now ?? Date.now();
  const freshAfter = now - config().hostLostAfterSeconds * 1000;
  const active = await activeHosts();
  const ranked = rankHosts(active, request, { strategy: o.strategy ?? config().placementStrategy, freshAfter, image: o.image });
  for (const host of ranked) {
    const taken = await takeAllocation(host, sandboxId, request, now);
    if (taken) return taken;
  }
  // Why there was no room, for whoever reads the logs of a create answered no_capacity.
  logger[o.noRoomLevel ?? 'warn']('placement: no host took the sandbox', {
    sandboxId,
    request,
    activeHosts: active.length,
    freshHosts: active.filter((h) => h.last_heartbeat_at >= freshAfter).length,
    // Each was tried, and its conditional write did not hold (another create took the room, the host changed).
    fittingHosts: ranked.length,
    hosts: active.map((h) => ({ hostId: h.host_id, lastHeartbeatAt: h.last_heartbeat_at, capacity: h.capacity, allocated: h.allocated })),
  });
  return undefined;
}

/**
 * Gives a sandbox's share back: only if it is still there (so a release that
 * runs twice, or after the daemon's reconciliation, subtracts once), exactly
 * what the entry holds.
 */
export async function releaseAllocation(hostId: string, sandboxId: string): Promise<boolean> {
  if (!hostId) return false;
  for (let attempt = 0; attempt < 5; attempt++) {
    const out = await dynamo().send(
      new GetCommand({
        TableName: table(),
        Key: { host_id: hostId },
        ProjectionExpression: '#allocs.#sbx',
        ExpressionAttributeNames: { '#allocs': 'allocations', '#sbx': sandboxId },
        ConsistentRead: true,
      }),
    );
    const entry = (out.Item as { allocations?: Record<string, Allocation> } | undefined)?.allocations?.[sandboxId];
    if (!entry) return false;
    const write = await conditionally(
      dynamo().send(
        new UpdateCommand({
          TableName: table(),
          Key: { host_id: hostId },
          UpdateExpression:
            'REMOVE #allocs.#sbx SET #used.cpu_milli = #used.cpu_milli - :cpu, #used.memory_mb = #used.memory_mb - :mem, #used.disk_mb = #used.disk_mb - :disk, #used.sandboxes = #used.sandboxes - :one',
          ConditionExpression: '#allocs.#sbx.#at = :at',
          ExpressionAttributeNames: { '#sbx': sandboxId, '#at': 'at', ...allocationNames },
          ExpressionAttributeValues: { ':cpu': entry.cpu_milli, ':mem': entry.memory_mb, ':disk': entry.disk_mb, ':one': 1, ':at': entry.at },
        }),
      ),
    );
    if (write.applied) return true;
    // Released (or replaced) meanwhile: read again.
  }
  throw new Error(`host ${hostId}: the allocation of ${sandboxId} kept changing while it was being released`);
}

/**
 * Records the share of a sandbox that lives on the host without one (the
 * daemon's reconciliation): no capacity check, it is there already.
 */
export async function addAllocation(hostId: string, sandboxId: string, resources: Resources, now = Date.now()): Promise<boolean> {
  const write = await conditionally(
    dynamo().send(
      new UpdateCommand({
        TableName: table(),
        Key: { host_id: hostId },
        UpdateExpression: `SET #allocs.#sbx = :entry, ${addToTotals}`,
        ConditionExpression: 'attribute_exists(#allocs) AND attribute_not_exists(#allocs.#sbx)',
        ExpressionAttributeNames: { '#sbx': sandboxId, ...allocationNames },
        ExpressionAttributeValues: {
          ':entry': { cpu_milli: resources.cpu_milli, memory_mb: resources.memory_mb, disk_mb: resources.disk_mb, at: now } satisfies Allocation,
          ':cpu': resources.cpu_milli,
          ':mem': resources.memory_mb,
          ':disk': resources.disk_mb,
          ':one': 1,
        },
      }),
    ),
  );
  return write.applied;
}

/**
 * Takes a host out of placement because it is going away: active -> draining
 * (it stays in the draining pool, so a host that dies while draining is still
 * found lost). Answers the host when this call moved it, undefined when it
 * was draining (or lost, or unknown) already.
 */
export async function markHostDraining(hostId: string, reason: string, deadlineAt: number, now = Date.now()): Promise<HostRecord | undefined> {
  const out = await conditionally(
    dynamo().send(
      new UpdateCommand({
        TableName: table(),
        Key: { host_id: hostId },
        UpdateExpression: 'SET #status = :draining, #pool = :draining, draining_since = :iso, drain_reason = :reason, drain_deadline_at = :deadline',
        ConditionExpression: '#status = :active',
        ExpressionAttributeNames: { '#status': 'status', '#pool': 'pool' },
        ExpressionAttributeValues: {
          ':draining': 'draining',
          ':active': 'active',
          ':iso': new Date(now).toISOString(),
          ':reason': reason,
          ':deadline': deadlineAt,
        },
        ReturnValues: 'ALL_NEW',
      }),
    ),
  );
  return out.applied ? (out.output.Attributes as HostRecord) : undefined;
}

/** Records whether the host is protected from scale-in (what it last asked Auto Scaling for). */
export async function recordScaleInProtection(hostId: string, isProtected: boolean): Promise<void> {
  await dynamo().send(
    new UpdateCommand({
      TableName: table(),
      Key: { host_id: hostId },
      UpdateExpression: 'SET scale_in_protected = :p',
      ConditionExpression: 'attribute_exists(host_id)',
      ExpressionAttributeValues: { ':p': isProtected },
    }),
  );
}

/**
 * Records the image (by digest) the host now serves creates with, once it has
 * pulled it, and the reference it resolved (what the control plane names).
 */
export async function recordHostImage(hostId: string, image: { digestRef: string; ref: string }): Promise<void> {
  await dynamo().send(
    new UpdateCommand({
      TableName: table(),
      Key: { host_id: hostId },
      UpdateExpression: 'SET #image = :image, image_ref = :ref',
      ConditionExpression: 'attribute_exists(host_id)',
      ExpressionAttributeNames: { '#image': 'image' },
      ExpressionAttributeValues: { ':image': image.digestRef, ':ref': image.ref },
    }),
  );
}

/** Marks a host lost (reaper): out of every pool. Only one caller wins. */
export async function markHostLost(hostId: string, lastSeenBefore: number): Promise<boolean> {
  const write = await conditionally(
    dynamo().send(
      new UpdateCommand({
        TableName: table(),
        Key: { host_id: hostId },
        UpdateExpression: 'SET #status = :lost, lost_at = :iso REMOVE #pool',
        ConditionExpression: '#status <> :lost AND last_heartbeat_at < :before',
        ExpressionAttributeNames: { '#status': 'status', '#pool': 'pool' },
        ExpressionAttributeValues: { ':lost': 'lost', ':iso': new Date().toISOString(), ':before': lastSeenBefore },
      }),
    ),
  );
  return write.applied;
}
