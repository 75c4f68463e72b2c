/**
 * Handler configuration, read once from the environment. The CDK stack sets
 * these on every function; the local stack sets them on its own process.
 * AWS endpoints are not here: the SDK reads AWS_ENDPOINT_URL_<SERVICE> itself.
 */
import { placementStrategies, type PlacementStrategy } from './placement';
import { apiKeysTable, commandsTable, egressLogTable, hostsTable, idempotencyTable, sandboxesTable, tenantsTable } from './tables';

function int(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n)) throw new Error(`environment variable ${name} must be a number, got "${raw}"`);
  return n;
}

function str(name: string, fallback: string): string {
  const raw = process.env[name];
  return raw === undefined || raw === '' ? fallback : raw;
}

function oneOf<T extends string>(name: string, allowed: readonly T[], fallback: T): T {
  const raw = str(name, fallback);
  if (!(allowed as readonly string[]).includes(raw)) throw new Error(`environment variable ${name} must be one of ${allowed.join(', ')}, got "${raw}"`);
  return raw as T;
}

export interface ControlPlaneConfig {
  tables: { sandboxes: string; hosts: string; apiKeys: string; idempotency: string; tenants: string; commands: string; egressLog: string };
  /** Storage bucket: hot/cold tiers and staged host requests. */
  bucket: string;
  /** Image the hosts run sandboxes from. */
  sandboxImage: string;
  /** Command line that runs the host-agent on a host (operator config, never caller text). */
  hostAgentCommand: string;
  /** URL a sandbox uses to reach this API (heartbeat/complete/error). */
  sandboxApiUrl: string;
  limits: {
    defaultCpu: number;
    maxCpu: number;
    defaultMemoryMb: number;
    maxMemoryMb: number;
    defaultTtlSeconds: number;
    maxTtlSeconds: number;
    defaultIdleTimeoutSeconds: number;
    pidsLimit: number;
    /**
     * A sandbox's home size (MB) when the caller names none, and the most it may
     * name: the home's own file system and the hot sync's quota in one number.
     */
    defaultDiskMb: number;
    maxDiskMb: number;
    hotSyncIntervalSeconds: number;
    /** Sandboxes a tenant may have not yet ended; a tenant's max_sandboxes overrides it. */
    maxSandboxesPerTenant: number;
    /** Output kept per stream of a command; past it the stream is cut (and flagged). */
    commandOutputMaxBytes: number;
    /** Days command records and output are kept after their sandbox ends. */
    commandRetentionDays: number;
  };
  /** Host heartbeat age after which a host counts as lost. */
  hostLostAfterSeconds: number;
  /** spread (emptiest host first) or binpack (fullest host that fits first). */
  placementStrategy: PlacementStrategy;
  /** How long a create that found no room waits for a host before it fails with no_capacity. */
  capacityWaitSeconds: number;
  /** The Auto Scaling group of hosts, asked for capacity when a create finds no room ('' = none to ask). */
  autoScalingGroupName: string;
  /** Most sandboxes a host takes (its HOST_SLOTS): sizes a host the fleet has not seen yet. */
  hostSlots: number;
  /** Capacity (percent, scarcest resource) the fleet keeps free ahead of demand (hosts.headroomPercent). */
  fleetHeadroomPercent: number;
  /** The longest a host may drain before it is terminated anyway (hosts.drainTimeoutSeconds). */
  drainTimeoutSeconds: number;
  /** Days an egress log entry is kept (DynamoDB TTL). */
  egressLogRetentionDays: number;
  /** Seconds a presigned upload or download URL stays valid. */
  filesUrlTtlSeconds: number;
}

export function loadConfig(): ControlPlaneConfig {
  return {
    tables: {
      sandboxes: str(sandboxesTable.envVar, 'sandboxes'),
      hosts: str(hostsTable.envVar, 'hosts'),
      apiKeys: str(apiKeysTable.envVar, 'api-keys'),
      idempotency: str(idempotencyTable.envVar, 'idempotency'),
      tenants: str(tenantsTable.envVar, 'tenants'),
      commands: str(commandsTable.envVar, 'commands'),
      egressLog: str(egressLogTable.envVar, 'egress-log'),
    },
    bucket: str('STORAGE_BUCKET', 'ephemeral-sandbox-storage'),
    sandboxImage: str('SANDBOX_IMAGE', 'ephemeral-sandbox:latest'),
    hostAgentCommand: str('HOST_AGENT_COMMAND', '/opt/ephemeral-sandbox/bin/host-agent'),
    sandboxApiUrl: str('SANDBOX_API_URL', ''),
    limits: {
      defaultCpu: int('DEFAULT_CPU', 1),
      maxCpu: int('MAX_CPU', 4),
      defaultMemoryMb: int('DEFAULT_MEMORY_MB', 1024),
      maxMemoryMb: int('MAX_MEMORY_MB', 8192),
      defaultTtlSeconds: int('DEFAULT_TTL_SECONDS', 7200),
      maxTtlSeconds: int('MAX_TTL_SECONDS', 86_400),
      defaultIdleTimeoutSeconds: int('DEFAULT_IDLE_TIMEOUT_SECONDS', 900),
      pidsLimit: int('SANDBOX_PIDS_LIMIT', 512),
      defaultDiskMb: int('DEFAULT_DISK_MB', 1024),
      maxDiskMb: int('MAX_DISK_MB', 4096),
      hotSyncIntervalSeconds: int('HOT_SYNC_INTERVAL_SECONDS', 60),
      maxSandboxesPerTenant: int('MAX_SANDBOXES_PER_TENANT', 20),
      commandOutputMaxBytes: int('COMMAND_OUTPUT_MAX_BYTES', 1024 ** 3),
      commandRetentionDays: int('COMMAND_RETENTION_DAYS', 7),
    },
    hostLostAfterSeconds: int('HOST_LOST_AFTER_SECONDS', 90),
    placementStrategy: oneOf('PLACEMENT_STRATEGY', placementStrategies, 'spread'),
    capacityWaitSeconds: int('CAPACITY_WAIT_SECONDS', 600),
    autoScalingGroupName: str('AUTO_SCALING_GROUP_NAME', ''),
    hostSlots: int('HOST_SLOTS', 8),
    fleetHeadroomPercent: int('FLEET_HEADROOM_PERCENT', 0),
    drainTimeoutSeconds: int('DRAIN_TIMEOUT_SECONDS', 300),
    egressLogRetentionDays: int('EGRESS_LOG_RETENTION_DAYS', 7),
    filesUrlTtlSeconds: int('FILES_URL_TTL_SECONDS', 900),
  };
}

let cached: ControlPlaneConfig | undefined;
/** The process-wide configuration (read on first use). */
export function config(): ControlPlaneConfig {
  cached ??= loadConfig();
  return cached;
}
/** Forget the cached configuration (tests and the local stack change env). */
export function resetConfig(): void {
  cached = undefined;
}
