/**
 * What each handler may do: the DynamoDB actions per table (and the indexes it
 * queries), and whether it dispatches to hosts (SSM Run Command plus staged
 * requests in S3). The stack turns this into one IAM policy per function; the
 * tests bundle each handler and check this table against the SDK calls its
 * code actually makes, so it can neither lag behind nor grant extra.
 */
import type { backgroundHandlerNames, HandlerName } from '../../lambdas/shared/routes';
import {
  apiKeysTable,
  commandsTable,
  egressLogTable,
  hostsTable,
  idempotencyTable,
  sandboxesTable,
  tenantsTable,
  type TableDefinition,
} from '../../lambdas/shared/tables';

/** Handlers with no API route: the scheduled reaper and the authorizer. */
export type BackgroundHandlerName = (typeof backgroundHandlerNames)[number];

type DynamoAction =
  | 'dynamodb:GetItem'
  | 'dynamodb:PutItem'
  | 'dynamodb:UpdateItem'
  | 'dynamodb:DeleteItem'
  | 'dynamodb:Query'
  | 'dynamodb:BatchGetItem'
  | 'dynamodb:BatchWriteItem'
  | 'dynamodb:ConditionCheckItem'
  | 'dynamodb:DescribeTable';

interface TableGrant {
  table: TableDefinition;
  actions: readonly DynamoAction[];
  /** Indexes the handler queries (needs dynamodb:Query). */
  indexes?: readonly string[];
}

export interface HandlerAccess {
  tables: readonly TableGrant[];
  /**
   * Runs host-agent verbs: ssm:SendCommand (AWS-RunShellScript, sandbox hosts
   * only), GetCommandInvocation, CancelCommand, and s3:PutObject/DeleteObject
   * on staged requests.
   */
  dispatchesToHosts: boolean;
  /** Reads commands' output from the storage bucket (s3:ListBucket, s3:GetObject under commands/). */
  readsCommandOutput?: boolean;
  /**
   * Puts lifecycle events on the environment's bus (events:PutEvents on that
   * bus): its bundle holds the state machine's writes or a command's end.
   */
  publishesEvents?: boolean;
  /** Calls on the hosts' Auto Scaling group (granted on that group only; DescribeAutoScalingGroups on any, as IAM requires). */
  autoScaling?: readonly AutoScalingAction[];
  /**
   * Stages file bytes and transfer records under files-staging/ (s3:PutObject,
   * GetObject, DeleteObject), and presigns URLs for them (a presigned URL acts
   * with its signer's permissions: the same grants).
   */
  stagesFiles?: boolean;
  /** Reads users' stored homes (s3:ListBucket, s3:GetObject under tenants/<t>/users/<u>/hot/), and presigns GETs of them. */
  readsHomes?: boolean;
  /**
   * Ends sandboxes that may have no host: a paused one moved off a drained
   * host leaves its staged state (relocation.ts), deleted when it ends
   * (s3:DeleteObject under tenants/<t>/users/<u>/sandboxes/<id>/paused/).
   */
  dropsPausedState?: boolean;
}

/** Actions publishing lifecycle events needs. */
export const eventBusActions = ['events:PutEvents'] as const;

export type AutoScalingAction =
  | 'autoscaling:DescribeAutoScalingGroups'
  | 'autoscaling:SetDesiredCapacity'
  | 'autoscaling:SetInstanceProtection'
  | 'autoscaling:SetInstanceHealth'
  | 'autoscaling:CompleteLifecycleAction'
  | 'autoscaling:RecordLifecycleActionHeartbeat';

/** Actions host dispatch needs, as the tests compare them with the code. */
export const hostDispatchActions = ['ssm:SendCommand', 'ssm:GetCommandInvocation', 'ssm:CancelCommand', 's3:PutObject', 's3:DeleteObject'] as const;
/** Actions reading command output needs. */
export const commandOutputActions = ['s3:ListBucket', 's3:GetObject'] as const;
/** Where command output lives in the storage bucket (host writes, API reads). */
export const commandOutputKeyPrefix = 'commands/';
/** Actions staging file bytes needs. */
export const fileStagingActions = ['s3:PutObject', 's3:GetObject', 's3:DeleteObject'] as const;
/** Actions reading stored homes needs. */
export const homeReadActions = ['s3:ListBucket', 's3:GetObject'] as const;
/** Stored homes in the storage bucket: tenants/<tenant>/users/<user>/hot/ (lambdas/shared/sandboxes.ts storageFor). */
export const storedHomeKeyPattern = 'tenants/*/users/*/hot/*';
/** Where moved paused sandboxes' state is staged (contract/host-protocol.ts pausedStatePrefix), as IAM can name it. */
export const pausedStateKeyPattern = 'tenants/*/users/*/sandboxes/*/paused/*';
/** Deleting a moved paused sandbox's staged state when it ends. */
export const pausedStateDropActions = ['s3:DeleteObject'] as const;

const index = (table: TableDefinition, name: string): string => {
  if (!table.indexes.some((i) => i.name === name)) throw new Error(`table ${table.id} has no index ${name}`);
  return name;
};

export const handlerAccess: Record<HandlerName | BackgroundHandlerName, HandlerAccess> = {
  health: {
    // Liveness probe of the database, no item access.
    tables: [{ table: sandboxesTable, actions: ['dynamodb:DescribeTable'] }],
    dispatchesToHosts: false,
  },
  // The OpenAPI document: built from the route table and schemas in the bundle, no AWS access.
  openapi: { tables: [], dispatchesToHosts: false },
  'create-sandbox': {
    tables: [
      // The record is put in one transaction with the tenant's slot; at the tenant's cap the records of the
      // sandboxes holding its slots are read (BatchGetItem); asking for capacity counts the waiting creates.
      {
        table: sandboxesTable,
        actions: ['dynamodb:PutItem', 'dynamodb:GetItem', 'dynamodb:BatchGetItem', 'dynamodb:UpdateItem', 'dynamodb:Query'],
        indexes: [index(sandboxesTable, 'by-waiting')],
      },
      { table: idempotencyTable, actions: ['dynamodb:PutItem', 'dynamodb:GetItem', 'dynamodb:UpdateItem', 'dynamodb:DeleteItem'] },
      // Placement: find an active host, take an allocation with a conditional update (and read one back to give it back).
      { table: hostsTable, actions: ['dynamodb:GetItem', 'dynamodb:Query', 'dynamodb:UpdateItem'], indexes: [index(hostsTable, 'by-pool')] },
      // The tenant's sandbox cap: read first, then a conditional update (in the record's transaction) takes a slot.
      { table: tenantsTable, actions: ['dynamodb:GetItem', 'dynamodb:UpdateItem'] },
      // Ending a sandbox closes the commands it still had in flight (killed, or lost with their host).
      { table: commandsTable, actions: ['dynamodb:GetItem', 'dynamodb:UpdateItem'] },
    ],
    dispatchesToHosts: true,
    publishesEvents: true,
    // A create with no room asks the group for hosts; a host's first sandbox protects it from scale-in.
    autoScaling: ['autoscaling:DescribeAutoScalingGroups', 'autoscaling:SetDesiredCapacity', 'autoscaling:SetInstanceProtection'],
  },
  'list-sandboxes': {
    tables: [{ table: sandboxesTable, actions: ['dynamodb:Query'], indexes: [index(sandboxesTable, 'by-tenant'), index(sandboxesTable, 'by-tenant-user')] }],
    dispatchesToHosts: false,
  },
  'get-sandbox': {
    tables: [{ table: sandboxesTable, actions: ['dynamodb:GetItem'] }],
    dispatchesToHosts: false,
  },
  'exec-sandbox': {
    // A command: its record (made with the sandbox's exec entry in one transaction), its output read back.
    tables: [
      { table: sandboxesTable, actions: ['dynamodb:GetItem', 'dynamodb:UpdateItem'] },
      { table: commandsTable, actions: ['dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:DeleteItem'] },
    ],
    dispatchesToHosts: true,
    readsCommandOutput: true,
  },
  'destroy-sandbox': {
    tables: [
      { table: sandboxesTable, actions: ['dynamodb:GetItem', 'dynamodb:UpdateItem'] },
      // Gives the sandbox's share of its host (read first: exactly what the entry holds) and the tenant's slot back.
      { table: hostsTable, actions: ['dynamodb:GetItem', 'dynamodb:UpdateItem'] },
      { table: tenantsTable, actions: ['dynamodb:UpdateItem'] },
      // Ending a sandbox closes the commands it still had in flight (killed, or lost with their host).
      { table: commandsTable, actions: ['dynamodb:GetItem', 'dynamodb:UpdateItem'] },
    ],
    dispatchesToHosts: true,
    publishesEvents: true,
    dropsPausedState: true,
  },
  'sandbox-signal': {
    tables: [{ table: sandboxesTable, actions: ['dynamodb:GetItem', 'dynamodb:UpdateItem'] }],
    dispatchesToHosts: false,
    publishesEvents: true,
  },
  'sandbox-timeout': {
    tables: [{ table: sandboxesTable, actions: ['dynamodb:GetItem', 'dynamodb:UpdateItem'] }],
    dispatchesToHosts: false,
  },
  'pause-resume-sandbox': {
    tables: [
      // The waiting creates are counted when a resume asks the group for a host (relocation.ts).
      { table: sandboxesTable, actions: ['dynamodb:GetItem', 'dynamodb:UpdateItem', 'dynamodb:Query'], indexes: [index(sandboxesTable, 'by-waiting')] },
      // A resume of a sandbox moved off a drained host places it as a create does (and gives the share back if the resume lost a race).
      { table: hostsTable, actions: ['dynamodb:GetItem', 'dynamodb:Query', 'dynamodb:UpdateItem'], indexes: [index(hostsTable, 'by-pool')] },
    ],
    dispatchesToHosts: true,
    publishesEvents: true,
    // No host with room for such a resume: the group is asked for one.
    autoScaling: ['autoscaling:DescribeAutoScalingGroups', 'autoscaling:SetDesiredCapacity'],
  },
  'sandbox-network': {
    tables: [
      { table: sandboxesTable, actions: ['dynamodb:GetItem', 'dynamodb:UpdateItem'] },
      // The egress log the hosts write, read newest first.
      { table: egressLogTable, actions: ['dynamodb:Query'] },
    ],
    dispatchesToHosts: true,
  },
  reaper: {
    tables: [
      {
        table: sandboxesTable,
        actions: ['dynamodb:GetItem', 'dynamodb:UpdateItem', 'dynamodb:Query'],
        indexes: [index(sandboxesTable, 'by-deadline'), index(sandboxesTable, 'by-host')],
      },
      // Finds hosts whose heartbeat stopped and marks them lost; gives back the shares of ended sandboxes.
      { table: hostsTable, actions: ['dynamodb:GetItem', 'dynamodb:Query', 'dynamodb:UpdateItem'], indexes: [index(hostsTable, 'by-pool')] },
      { table: tenantsTable, actions: ['dynamodb:UpdateItem'] },
      // Ending a sandbox closes the commands it still had in flight (killed, or lost with their host).
      { table: commandsTable, actions: ['dynamodb:GetItem', 'dynamodb:UpdateItem'] },
    ],
    dispatchesToHosts: true,
    publishesEvents: true,
    // A lost host is reported unhealthy so the group replaces it.
    autoScaling: ['autoscaling:SetInstanceHealth'],
    // A moved paused sandbox whose TTL ends before it was started again.
    dropsPausedState: true,
  },
  'fleet-events': {
    tables: [
      // The host leaves placement (draining).
      { table: hostsTable, actions: ['dynamodb:GetItem', 'dynamodb:UpdateItem'] },
    ],
    // The drain verb, over SSM.
    dispatchesToHosts: true,
    // A lost host's termination goes ahead at once.
    autoScaling: ['autoscaling:CompleteLifecycleAction'],
  },
  'fleet-capacity': {
    tables: [
      { table: hostsTable, actions: ['dynamodb:Query'], indexes: [index(hostsTable, 'by-pool')] },
      { table: sandboxesTable, actions: ['dynamodb:Query'], indexes: [index(sandboxesTable, 'by-waiting')] },
    ],
    dispatchesToHosts: false,
    autoScaling: ['autoscaling:DescribeAutoScalingGroups', 'autoscaling:SetDesiredCapacity'],
  },
  'start-command': {
    tables: [
      { table: sandboxesTable, actions: ['dynamodb:GetItem', 'dynamodb:UpdateItem'] },
      { table: commandsTable, actions: ['dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:DeleteItem'] },
    ],
    dispatchesToHosts: true,
    readsCommandOutput: true,
  },
  'list-commands': {
    tables: [
      { table: sandboxesTable, actions: ['dynamodb:GetItem'] },
      { table: commandsTable, actions: ['dynamodb:Query'], indexes: [index(commandsTable, 'by-sandbox-created')] },
    ],
    dispatchesToHosts: false,
  },
  'get-command': {
    tables: [{ table: commandsTable, actions: ['dynamodb:GetItem'] }],
    dispatchesToHosts: false,
    readsCommandOutput: true,
  },
  'kill-command': {
    tables: [
      { table: sandboxesTable, actions: ['dynamodb:GetItem'] },
      { table: commandsTable, actions: ['dynamodb:GetItem'] },
    ],
    dispatchesToHosts: true,
  },
  'write-command-stdin': {
    tables: [
      { table: sandboxesTable, actions: ['dynamodb:GetItem'] },
      // The write and the next offset change together (a transaction of a Put and an Update).
      { table: commandsTable, actions: ['dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:UpdateItem'] },
    ],
    dispatchesToHosts: true,
  },
  'sandbox-files': {
    // The sandbox (its tenant, its host) and the activity each file call records.
    tables: [{ table: sandboxesTable, actions: ['dynamodb:GetItem', 'dynamodb:UpdateItem'] }],
    dispatchesToHosts: true,
    stagesFiles: true,
  },
  'sandbox-file-transfers': {
    // The sandbox, its activity, and the exec entry a transfer holds while it runs.
    tables: [{ table: sandboxesTable, actions: ['dynamodb:GetItem', 'dynamodb:UpdateItem'] }],
    dispatchesToHosts: true,
    stagesFiles: true,
  },
  'home-files': {
    // Whether a sandbox of the user is live (its copy may lag): recent records of the user.
    tables: [{ table: sandboxesTable, actions: ['dynamodb:Query'], indexes: [index(sandboxesTable, 'by-tenant-user')] }],
    dispatchesToHosts: false,
    readsHomes: true,
  },
  authorizer: {
    tables: [
      // Key lookup by hash; last-used bookkeeping.
      { table: apiKeysTable, actions: ['dynamodb:GetItem', 'dynamodb:UpdateItem'] },
      // Sandbox tokens are checked against the sandbox's token hash.
      { table: sandboxesTable, actions: ['dynamodb:GetItem'] },
    ],
    dispatchesToHosts: false,
  },
};

/**
 * What a sandbox host does with its instance role: the host daemon registers
 * and heartbeats the host, reconciles the sandboxes placed on it and ends the
 * ones whose container vanished; the CLI and daemon sync hot tiers and fetch
 * staged requests. The tests check this against the daemon and CLI bundles.
 */
export interface HostAccess {
  tables: readonly TableGrant[];
  /** On the storage bucket (objects under any prefix; ListBucket on the bucket). */
  storageActions: readonly string[];
  /** Storage actions no project code calls but mountpoint-s3 (the cold tier's FUSE client) does. */
  mountpointOnlyActions: readonly string[];
  /** The host records outcomes (ready, paused, ended) and commands' ends: it publishes their events. */
  publishesEvents: boolean;
  /** On the host log group: the daemon ships its lines (logs and EMF metrics) there, one stream per host. */
  logActions: readonly string[];
  /** On the host's own Auto Scaling group: its scale-in protection, and the lifecycle actions it completes. */
  autoScaling: readonly AutoScalingAction[];
  /** The sandbox image's registry: the host-agent asks ECR for a token and pulls through the Engine API with it. */
  registryActions: readonly string[];
  /** On the sandbox image parameter only: the daemon reads the fleet's current image reference at each image pass. */
  imageParameterActions: readonly string[];
}

export const hostAccess: HostAccess = {
  tables: [
    // Registration, heartbeats, allocations (reconciled, and taken for waiting creates), drain.
    { table: hostsTable, actions: ['dynamodb:GetItem', 'dynamodb:UpdateItem'] },
    {
      table: sandboxesTable,
      actions: ['dynamodb:GetItem', 'dynamodb:UpdateItem', 'dynamodb:Query'],
      indexes: [index(sandboxesTable, 'by-host'), index(sandboxesTable, 'by-waiting')],
    },
    { table: tenantsTable, actions: ['dynamodb:UpdateItem'] },
    // The daemon runs commands: it claims, follows and ends their records and delivers their stdin.
    { table: commandsTable, actions: ['dynamodb:GetItem', 'dynamodb:UpdateItem', 'dynamodb:Query', 'dynamodb:DeleteItem'] },
    // The resolver's and egress proxy's decisions, in batches.
    { table: egressLogTable, actions: ['dynamodb:BatchWriteItem'] },
  ],
  // AbortMultipartUpload: a download that fails leaves no half object (and mountpoint-s3 aborts its own uploads).
  storageActions: ['s3:ListBucket', 's3:GetObject', 's3:PutObject', 's3:DeleteObject', 's3:AbortMultipartUpload'],
  mountpointOnlyActions: [],
  publishesEvents: true,
  logActions: ['logs:CreateLogStream', 'logs:PutLogEvents'],
  autoScaling: ['autoscaling:SetInstanceProtection', 'autoscaling:CompleteLifecycleAction', 'autoscaling:RecordLifecycleActionHeartbeat'],
  // The layer and manifest reads of the pull itself are Docker's (grantPull on the image repository adds them).
  registryActions: ['ecr:GetAuthorizationToken'],
  imageParameterActions: ['ssm:GetParameter'],
};
