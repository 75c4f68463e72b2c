/**
 * One Lambda function per handler (lambdas/<name>.ts), each with its own role
 * that holds exactly the access handler-access.ts lists for it, its own log
 * group, and the configuration lambdas/shared/config.ts reads.
 */
import { Duration, type RemovalPolicy, Stack } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import { NodejsFunction } from 'aws-cdk-lib/aws-lambda-nodejs';
import * as logs from 'aws-cdk-lib/aws-logs';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import { NagSuppressions } from 'cdk-nag';
import { Construct } from 'constructs';
import { stagedRequestPrefix } from '../../contract/host-protocol';
import type { EnvironmentSettings } from '../environment';
import { handlerCode } from '../handler-bundling';
import { metricNamespace, metricService } from '../../lambdas/shared/metric-names';
import { fileStagingPrefix } from '../../contract/host-protocol';
import {
  commandOutputKeyPrefix,
  handlerAccess,
  pausedStateDropActions,
  pausedStateKeyPattern,
  storedHomeKeyPattern,
  type AutoScalingAction,
  type HandlerAccess,
} from './handler-access';
import { hostGroupArn, hostGroupArnSuppression } from './host-group';
import type { SandboxEventBus } from './observability';
import type { ProjectTables } from './tables';

/** Where user data installs the host-agent wrapper on every host. */
export const hostAgentCommand = '/opt/ephemeral-sandbox/bin/host-agent';

/** Tags every sandbox host carries; SSM SendCommand is allowed only on instances with all of them. */
export function hostTags(envName: string): Record<string, string> {
  return { 'ephemeral-sandbox:role': 'host', 'ephemeral-sandbox:env': envName };
}

/**
 * How cdk-nag renders the storage bucket's ARN in a finding: a token of the
 * stateful stack's bucket, or the cross-stack reference it becomes.
 */
export const storageBucketArnPattern = '(<[^>]*StorageBucket[^>]*\\.Arn>|\\{"Fn::GetStackOutput":.*StorageBucket[^"]*Arn[^"]*".*\\})';

/** `arn:<partition>:<service>:<region>:<account>` as cdk-nag renders it, for env-agnostic and pinned stacks alike. */
export function arnPrefixPattern(service: string): string {
  return `arn:(<AWS::Partition>|aws[a-z-]*):${service}:(<AWS::Region>|[a-z0-9-]+):(<AWS::AccountId>|\\d{12})`;
}

/** The sandbox limits (cdk.json `limits`, documented there): every one is handed to the functions and the hosts. */
type SandboxLimits = Readonly<EnvironmentSettings['limits']>;

/** What the functions' (and the host daemon's) configuration is made of: see handlerEnvironment. */
export interface HandlerEnvironmentProps {
  /** The environment's name: the metrics namespace (and, for the functions, their descriptions). */
  readonly envName: string;
  /** Sizes, lifetimes and quotas of sandboxes and commands. */
  readonly limits: SandboxLimits;
  /** Sandbox slots of one host (HOST_SLOTS). */
  readonly sandboxSlotsPerHost: number;
  /** Capacity kept free ahead of demand, in percent of the fleet (FLEET_HEADROOM_PERCENT). */
  readonly headroomPercent: number;
  /** How long a terminating host may drain (DRAIN_TIMEOUT_SECONDS). */
  readonly drainTimeoutSeconds: number;
  /** Days the logs are kept: the functions' log groups and the egress log (EGRESS_LOG_RETENTION_DAYS). */
  readonly logRetentionDays: number;
  /** The project's tables: each function gets their names and only the grants its bundle's calls need. */
  readonly tables: ProjectTables;
  /** The storage bucket (homes, cold tier, command output, staged requests). */
  readonly bucket: s3.IBucket;
  /** ECR URI of the sandbox image (SANDBOX_IMAGE). */
  readonly sandboxImageUri: string;
  /** Base URL sandboxes call back (SANDBOX_API_URL). */
  readonly sandboxApiUrl: string;
  /** Version string the health route reports. */
  readonly appVersion: string;
  /** The environment's lifecycle event bus (EVENT_BUS_NAME; PutEvents for handlers that publish). */
  readonly events: SandboxEventBus;
  /** The hosts' Auto Scaling group (AUTO_SCALING_GROUP_NAME): its fixed name, so the functions need no reference to the group. */
  readonly autoScalingGroupName: string;
}

export interface ControlPlaneFunctionsProps extends HandlerEnvironmentProps {
  /** Handler names to make a function for (the route table's and the background ones). */
  readonly handlers: readonly string[];
  /** Memory of every function. */
  readonly memoryMb: number;
  /** Timeout of every function but the reaper (API Gateway gives up at 29 s anyway). */
  readonly apiTimeoutSeconds: number;
  /** Timeout of the reaper. */
  readonly reaperTimeoutSeconds: number;
  /** What happens to the functions' log groups when the stack goes. */
  readonly removalPolicy: RemovalPolicy;
}

/** How long a create that found no room waits for a host before it fails no_capacity (the fleet simulation reads it too). */
export const capacityWaitSeconds = 600;

/** `create-sandbox` -> `CreateSandbox`, for construct ids. */
export function pascal(name: string): string {
  return name.replace(/(^|-)([a-z0-9])/g, (_m, _d, c: string) => c.toUpperCase());
}

/** Environment variables of every function: what lambdas/shared/config.ts reads. */
export function handlerEnvironment(props: HandlerEnvironmentProps): Record<string, string> {
  const l = props.limits;
  const env: Record<string, string> = {
    STORAGE_BUCKET: props.bucket.bucketName,
    SANDBOX_IMAGE: props.sandboxImageUri,
    HOST_AGENT_COMMAND: hostAgentCommand,
    SANDBOX_API_URL: props.sandboxApiUrl,
    DEFAULT_CPU: String(l.defaultCpu),
    MAX_CPU: String(l.maxCpu),
    DEFAULT_MEMORY_MB: String(l.defaultMemoryMb),
    MAX_MEMORY_MB: String(l.maxMemoryMb),
    DEFAULT_TTL_SECONDS: String(l.defaultTtlSeconds),
    MAX_TTL_SECONDS: String(l.maxTtlSeconds),
    DEFAULT_IDLE_TIMEOUT_SECONDS: String(l.defaultIdleTimeoutSeconds),
    SANDBOX_PIDS_LIMIT: String(l.pidsLimit),
    DEFAULT_DISK_MB: String(l.defaultDiskMb),
    MAX_DISK_MB: String(l.maxDiskMb),
    HOT_SYNC_INTERVAL_SECONDS: String(l.hotSyncIntervalSeconds),
    MAX_SANDBOXES_PER_TENANT: String(l.maxSandboxesPerTenant),
    HOST_LOST_AFTER_SECONDS: String(l.hostLostAfterSeconds),
    PLACEMENT_STRATEGY: 'spread',
    // A create with no room asks this group for hosts and waits (202 waiting_for_capacity).
    AUTO_SCALING_GROUP_NAME: props.autoScalingGroupName,
    CAPACITY_WAIT_SECONDS: String(capacityWaitSeconds),
    HOST_SLOTS: String(props.sandboxSlotsPerHost),
    // fleet-capacity (each minute) and a create that finds no room add hosts until this much stays free.
    FLEET_HEADROOM_PERCENT: String(props.headroomPercent),
    // The termination hook's heartbeat timeout: how long a terminating host may drain.
    DRAIN_TIMEOUT_SECONDS: String(props.drainTimeoutSeconds),
    COMMAND_OUTPUT_MAX_BYTES: String(l.commandOutputMaxBytes),
    COMMAND_RETENTION_DAYS: String(l.commandRetentionDays),
    FILES_URL_TTL_SECONDS: String(l.filesUrlTtlSeconds),
    // The egress log is a log: kept as long as the environment keeps its logs.
    EGRESS_LOG_RETENTION_DAYS: String(props.logRetentionDays),
    APP_VERSION: props.appVersion,
    EVENT_BUS_NAME: props.events.bus.eventBusName,
    // Powertools: one service, one metrics namespace per environment; events (they carry API keys) and
    // responses (records, command output) never go into logs or traces.
    POWERTOOLS_SERVICE_NAME: metricService,
    POWERTOOLS_METRICS_NAMESPACE: metricNamespace(props.envName),
    POWERTOOLS_LOGGER_LOG_EVENT: 'false',
    POWERTOOLS_TRACER_CAPTURE_RESPONSE: 'false',
    LOG_LEVEL: 'info',
  };
  for (const { definition, table } of props.tables.entries) env[definition.envVar] = table.tableName;
  return env;
}

export class ControlPlaneFunctions extends Construct {
  private readonly byName = new Map<string, NodejsFunction>();

  constructor(scope: Construct, id: string, props: ControlPlaneFunctionsProps) {
    super(scope, id);
    const environment = handlerEnvironment(props);
    for (const name of props.handlers) {
      const access = (handlerAccess as Record<string, HandlerAccess | undefined>)[name];
      if (!access) throw new Error(`handler "${name}" has no entry in lib/constructs/handler-access.ts: list the tables and host access it needs`);
      const id = pascal(name);
      const logGroup = new logs.LogGroup(this, `${id}Logs`, {
        retention: props.logRetentionDays as logs.RetentionDays,
        removalPolicy: props.removalPolicy,
      });
      // A role per function: no managed policies, nothing shared between handlers.
      const role = new iam.Role(this, `${id}Role`, {
        assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
        description: `Ephemeral Sandbox ${props.envName}: ${name} handler`,
      });
      logGroup.grantWrite(role);
      grantAccess(role, access, props);

      const fn = new NodejsFunction(this, id, {
        // One build for every handler (handler-bundling.ts) in place of NodejsFunction's build per function.
        code: handlerCode(name),
        handler: 'index.handler',
        runtime: lambda.Runtime.NODEJS_22_X,
        architecture: lambda.Architecture.ARM_64,
        memorySize: props.memoryMb,
        timeout: Duration.seconds(name === 'reaper' ? props.reaperTimeoutSeconds : props.apiTimeoutSeconds),
        environment,
        role,
        logGroup,
        description: `Ephemeral Sandbox ${props.envName}: ${name}`,
        // X-Ray: the handler's segment (Powertools Tracer) and each AWS call in it.
        tracing: lambda.Tracing.ACTIVE,
      });
      NagSuppressions.addResourceSuppressions(
        role,
        [
          {
            id: 'AwsSolutions-IAM5',
            reason: 'Active tracing: xray:PutTraceSegments and xray:PutTelemetryRecords support no resource-level permissions.',
            appliesTo: ['Resource::*'],
          },
        ],
        true,
      );
      // Make sure the policy exists before the function can run.
      fn.node.addDependency(role);
      NagSuppressions.addResourceSuppressions(fn, [
        {
          id: 'AwsSolutions-L1',
          reason:
            'Node.js 22 is the runtime the handlers are bundled (esbuild target node22) and tested for; moving to a newer runtime is a deliberate upgrade of target, runtime and tests together.',
        },
      ]);
      this.byName.set(name, fn);
    }
  }

  /** The function for handler `name`. */
  fn(name: string): NodejsFunction {
    const fn = this.byName.get(name);
    if (!fn) throw new Error(`no function for handler "${name}"`);
    return fn;
  }

  get functions(): ReadonlyMap<string, NodejsFunction> {
    return this.byName;
  }
}

function grantAccess(role: iam.Role, access: HandlerAccess, props: HandlerEnvironmentProps): void {
  for (const grant of access.tables) {
    const table = props.tables.table(grant.table);
    const itemActions = grant.actions.filter((a) => a !== 'dynamodb:Query');
    if (itemActions.length > 0) {
      role.addToPolicy(new iam.PolicyStatement({ actions: [...itemActions], resources: [table.tableArn] }));
    }
    if (grant.actions.includes('dynamodb:Query')) {
      const indexArns = (grant.indexes ?? []).map((i) => `${table.tableArn}/index/${i}`);
      role.addToPolicy(new iam.PolicyStatement({ actions: ['dynamodb:Query'], resources: [table.tableArn, ...indexArns] }));
    }
  }
  if (access.publishesEvents) props.events.grantPut(role);
  if (access.readsCommandOutput) {
    role.addToPolicy(
      new iam.PolicyStatement({ sid: 'ReadCommandOutput', actions: ['s3:GetObject'], resources: [props.bucket.arnForObjects(`${commandOutputKeyPrefix}*`)] }),
    );
    role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'ListCommandOutput',
        actions: ['s3:ListBucket'],
        resources: [props.bucket.bucketArn],
        conditions: { StringLike: { 's3:prefix': [`${commandOutputKeyPrefix}*`] } },
      }),
    );
    NagSuppressions.addResourceSuppressions(
      role,
      [
        {
          id: 'AwsSolutions-IAM5',
          reason: 'Command output is stored as objects with generated keys under the commands/ prefix only; the prefix is the narrowest scope possible.',
          appliesTo: [{ regex: `/^Resource::${storageBucketArnPattern}\\/commands\\/\\*$/g` }],
        },
      ],
      true,
    );
  }
  if (access.stagesFiles) {
    role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'StageFiles',
        // Presigned upload and download URLs act with these same permissions, on the one key each names.
        actions: ['s3:PutObject', 's3:GetObject', 's3:DeleteObject'],
        resources: [props.bucket.arnForObjects(`${fileStagingPrefix}*`)],
      }),
    );
    NagSuppressions.addResourceSuppressions(
      role,
      [
        {
          id: 'AwsSolutions-IAM5',
          reason:
            'File bytes and transfer records are staged as objects with generated keys under the files-staging/ prefix only; the prefix is the narrowest scope possible.',
          appliesTo: [{ regex: `/^Resource::${storageBucketArnPattern}\\/files-staging\\/\\*$/g` }],
        },
      ],
      true,
    );
  }
  if (access.readsHomes) {
    role.addToPolicy(
      new iam.PolicyStatement({ sid: 'ReadStoredHomes', actions: ['s3:GetObject'], resources: [props.bucket.arnForObjects(storedHomeKeyPattern)] }),
    );
    role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'ListStoredHomes',
        actions: ['s3:ListBucket'],
        resources: [props.bucket.bucketArn],
        conditions: { StringLike: { 's3:prefix': [storedHomeKeyPattern] } },
      }),
    );
    NagSuppressions.addResourceSuppressions(
      role,
      [
        {
          id: 'AwsSolutions-IAM5',
          reason:
            "Stored homes are objects under tenants/<tenant>/users/<user>/hot/; the tenant comes from the caller's key at run time (the handler builds the prefix from it), so IAM can only name the pattern.",
          appliesTo: [{ regex: `/^Resource::${storageBucketArnPattern}\\/tenants\\/\\*\\/users\\/\\*\\/hot\\/\\*$/g` }],
        },
      ],
      true,
    );
  }
  if (access.dropsPausedState) {
    role.addToPolicy(
      new iam.PolicyStatement({ sid: 'DropPausedState', actions: [...pausedStateDropActions], resources: [props.bucket.arnForObjects(pausedStateKeyPattern)] }),
    );
    NagSuppressions.addResourceSuppressions(
      role,
      [
        {
          id: 'AwsSolutions-IAM5',
          reason:
            'A moved paused sandbox keeps its staged state under tenants/<tenant>/users/<user>/sandboxes/<id>/paused/; the ids come from the record being ended at run time, so IAM can only name the pattern (delete only).',
          appliesTo: [{ regex: `/^Resource::${storageBucketArnPattern}\\/tenants\\/\\*\\/users\\/\\*\\/sandboxes\\/\\*\\/paused\\/\\*$/g` }],
        },
      ],
      true,
    );
  }
  if (access.autoScaling && access.autoScaling.length > 0) grantAutoScaling(role, access.autoScaling, props.autoScalingGroupName);
  if (!access.dispatchesToHosts) return;

  const stack = Stack.of(role);
  role.addToPolicy(
    new iam.PolicyStatement({
      sid: 'RunShellScriptDocument',
      actions: ['ssm:SendCommand'],
      resources: [stack.formatArn({ service: 'ssm', account: '', resource: 'document', resourceName: 'AWS-RunShellScript' })],
    }),
  );
  const conditions: Record<string, string> = {};
  for (const [key, value] of Object.entries(hostTags(props.envName))) conditions[`ssm:resourceTag/${key}`] = value;
  role.addToPolicy(
    new iam.PolicyStatement({
      sid: 'SandboxHostsOnly',
      actions: ['ssm:SendCommand'],
      resources: [stack.formatArn({ service: 'ec2', resource: 'instance', resourceName: '*' })],
      conditions: { StringEquals: conditions },
    }),
  );
  role.addToPolicy(
    new iam.PolicyStatement({
      sid: 'FollowCommands',
      // Neither action supports resource-level permissions; command ids are only known at run time.
      actions: ['ssm:GetCommandInvocation', 'ssm:CancelCommand'],
      resources: ['*'],
    }),
  );
  role.addToPolicy(
    new iam.PolicyStatement({
      sid: 'StagedHostRequests',
      actions: ['s3:PutObject', 's3:DeleteObject'],
      resources: [props.bucket.arnForObjects(`${stagedRequestPrefix}*`)],
    }),
  );
  NagSuppressions.addResourceSuppressions(
    role,
    [
      {
        id: 'AwsSolutions-IAM5',
        reason:
          'ssm:SendCommand on instance/* is limited by a StringEquals condition to instances tagged as sandbox hosts of this environment (instance ids change as the fleet scales); ssm:GetCommandInvocation and ssm:CancelCommand support no resource-level permissions.',
        appliesTo: [{ regex: `/^Resource::${arnPrefixPattern('ec2')}:instance\\/\\*$/g` }, 'Resource::*'],
      },
      {
        id: 'AwsSolutions-IAM5',
        reason:
          'Oversized host requests are staged as objects with generated keys under the host-requests/ prefix only; the prefix is the narrowest scope possible.',
        appliesTo: [{ regex: `/^Resource::${storageBucketArnPattern}\\/host-requests\\/\\*$/g` }],
      },
    ],
    true,
  );
}

/** Auto Scaling calls on the hosts' group only; DescribeAutoScalingGroups supports no resource-level permissions. */
function grantAutoScaling(role: iam.Role, actions: readonly AutoScalingAction[], groupName: string): void {
  const describe = 'autoscaling:DescribeAutoScalingGroups';
  const onGroup = actions.filter((a) => a !== describe);
  if (onGroup.length > 0) {
    role.addToPolicy(new iam.PolicyStatement({ sid: 'HostGroup', actions: [...onGroup], resources: [hostGroupArn(role, groupName)] }));
    NagSuppressions.addResourceSuppressions(role, [hostGroupArnSuppression(groupName)], true);
  }
  if (!actions.includes(describe)) return;
  role.addToPolicy(new iam.PolicyStatement({ sid: 'DescribeGroups', actions: [describe], resources: ['*'] }));
  NagSuppressions.addResourceSuppressions(
    role,
    [
      {
        id: 'AwsSolutions-IAM5',
        reason: 'autoscaling:DescribeAutoScalingGroups supports no resource-level permissions; the function names its own group in the call.',
        appliesTo: ['Resource::*'],
      },
    ],
    true,
  );
}
