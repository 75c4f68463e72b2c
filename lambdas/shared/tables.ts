/**
 * DynamoDB table definitions: the one description of every table, its keys and
 * its indexes. The CDK stateful stack and the local stack both build tables
 * from these objects, and the code queries only the indexes named here.
 */
type AttributeType = 'S' | 'N';

export interface KeyAttribute {
  name: string;
  type: AttributeType;
}

interface IndexDefinition {
  name: string;
  partitionKey: KeyAttribute;
  sortKey?: KeyAttribute;
  /** ALL, KEYS_ONLY, or the non-key attributes to project. */
  projection: 'ALL' | 'KEYS_ONLY' | readonly string[];
}

export interface TableDefinition {
  /** Logical id, used for CDK construct ids and local table names. */
  id: string;
  /** Environment variable from which handlers and the host-agent read the physical name. */
  envVar: string;
  partitionKey: KeyAttribute;
  sortKey?: KeyAttribute;
  indexes: readonly IndexDefinition[];
  /** Attribute holding an epoch-seconds expiry for DynamoDB TTL housekeeping. */
  timeToLiveAttribute?: string;
}

/**
 * An index of a table, by name (checked by the type system): code and the IAM
 * analysis refer to indexes this way, never by their position in the list.
 *
 * @example indexName(sandboxesTable, 'by-deadline')
 */
export function indexName<T extends TableDefinition>(table: T, name: T['indexes'][number]['name']): string {
  if (!table.indexes.some((i) => i.name === name)) throw new Error(`table ${table.id} has no index ${name}`);
  return name;
}

/** Number of partitions of the sparse deadline index; the reaper queries each. */
export const reapShards = 4;

export const sandboxesTable = {
  id: 'Sandboxes',
  envVar: 'SANDBOXES_TABLE',
  partitionKey: { name: 'sandbox_id', type: 'S' },
  indexes: [
    {
      name: 'by-tenant',
      partitionKey: { name: 'tenant_id', type: 'S' },
      sortKey: { name: 'created_at', type: 'S' },
      projection: 'ALL',
    },
    {
      name: 'by-tenant-user',
      partitionKey: { name: 'tenant_user', type: 'S' },
      sortKey: { name: 'created_at', type: 'S' },
      projection: 'ALL',
    },
    {
      // Sparse: only live sandboxes carry reap_shard/deadline_at, so the reaper's
      // Query reads the expired ones and nothing else.
      name: 'by-deadline',
      partitionKey: { name: 'reap_shard', type: 'S' },
      sortKey: { name: 'deadline_at', type: 'N' },
      projection: ['status', 'tenant_id', 'user_id', 'host_id', 'container_id', 'expires_at_ms', 'last_activity_at', 'execs', 'idle_timeout_s'],
    },
    {
      // Sparse: `waiting` is set while a create waits for a host with room (rest at zero, a full fleet); oldest first.
      name: 'by-waiting',
      partitionKey: { name: 'waiting', type: 'S' },
      sortKey: { name: 'created_at', type: 'S' },
      projection: ['config', 'deadline_at', 'staged_request'],
    },
    {
      // Sparse: live_host_id is set while a sandbox holds a container on a host.
      name: 'by-host',
      partitionKey: { name: 'live_host_id', type: 'S' },
      sortKey: { name: 'sandbox_id', type: 'S' },
      projection: ['status', 'tenant_id', 'user_id', 'container_id', 'created_at'],
    },
  ],
} as const satisfies TableDefinition;

export const hostsTable = {
  id: 'Hosts',
  envVar: 'HOSTS_TABLE',
  partitionKey: { name: 'host_id', type: 'S' },
  indexes: [
    {
      // Sparse: pool is set while the host accepts placements ('active').
      name: 'by-pool',
      partitionKey: { name: 'pool', type: 'S' },
      sortKey: { name: 'host_id', type: 'S' },
      projection: 'ALL',
    },
  ],
} as const satisfies TableDefinition;

export const apiKeysTable = {
  id: 'ApiKeys',
  envVar: 'API_KEYS_TABLE',
  partitionKey: { name: 'key_hash', type: 'S' },
  indexes: [
    {
      name: 'by-tenant',
      partitionKey: { name: 'tenant_id', type: 'S' },
      sortKey: { name: 'created_at', type: 'S' },
      projection: 'ALL',
    },
  ],
} as const satisfies TableDefinition;

export const idempotencyTable = {
  id: 'Idempotency',
  envVar: 'IDEMPOTENCY_TABLE',
  partitionKey: { name: 'idempotency_key', type: 'S' },
  indexes: [],
  timeToLiveAttribute: 'expires_at_s',
} as const satisfies TableDefinition;

/**
 * One item per tenant: `live_sandbox_ids` holds the ids of its sandboxes not
 * yet ended (added with one conditional UpdateItem at create, removed at the end),
 * `max_sandboxes` optionally overrides MAX_SANDBOXES_PER_TENANT.
 */
export const tenantsTable = {
  id: 'Tenants',
  envVar: 'TENANTS_TABLE',
  partitionKey: { name: 'tenant_id', type: 'S' },
  indexes: [],
} as const satisfies TableDefinition;

/**
 * Commands run in sandboxes, kept COMMAND_RETENTION_DAYS after their sandbox
 * ends (TTL). Items keyed `<command_id>` are command records; items keyed
 * `<command_id>#stdin#<offset>` hold stdin a caller wrote that the host has not
 * delivered yet (the id alphabet has no `#`, so the two never collide).
 */
export const commandsTable = {
  id: 'Commands',
  envVar: 'COMMANDS_TABLE',
  partitionKey: { name: 'sandbox_id', type: 'S' },
  sortKey: { name: 'command_id', type: 'S' },
  indexes: [
    {
      // Sparse: only command records carry created_seq (`<created ISO>#<command_id>`); newest first when read backwards.
      name: 'by-sandbox-created',
      partitionKey: { name: 'sandbox_id', type: 'S' },
      sortKey: { name: 'created_seq', type: 'S' },
      projection: 'ALL',
    },
  ],
  timeToLiveAttribute: 'expires_at_s',
} as const satisfies TableDefinition;

/**
 * The egress log: one item per decision of a sandbox's resolver or egress
 * proxy (refusals always; allowed names and connections under an allowlist
 * or deny_all). Written by the host daemon in batches, read newest first by
 * GET /sandboxes/{id}/network/log; `seq` sorts by time. Items expire after
 * EGRESS_LOG_RETENTION_DAYS (TTL housekeeping).
 */
export const egressLogTable = {
  id: 'EgressLog',
  envVar: 'EGRESS_LOG_TABLE',
  partitionKey: { name: 'sandbox_id', type: 'S' },
  sortKey: { name: 'seq', type: 'S' },
  indexes: [],
  timeToLiveAttribute: 'expires_at_s',
} as const satisfies TableDefinition;

export const tables: readonly TableDefinition[] = [sandboxesTable, hostsTable, apiKeysTable, idempotencyTable, tenantsTable, commandsTable, egressLogTable];
