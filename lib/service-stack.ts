/**
 * The service stack: everything stateless. The API and its handlers, the
 * reaper schedule, the sandbox host fleet and its network. It reads the
 * tables and the bucket from the stateful stack.
 */
import { CfnOutput, Duration, RemovalPolicy, Stack, type StackProps } from 'aws-cdk-lib';
import * as ecrAssets from 'aws-cdk-lib/aws-ecr-assets';
import { InstanceArchitecture } from 'aws-cdk-lib/aws-ec2';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import type { Construct } from 'constructs';
import { backgroundHandlerNames, handlerNames, routes } from '../lambdas/shared/routes';
import { ControlPlaneFunctions, handlerEnvironment, type HandlerEnvironmentProps } from './constructs/control-plane-functions';
import { HostAgentAssets } from './constructs/host-agent-assets';
import { FleetWiring } from './constructs/fleet-wiring';
import { HostFleet } from './constructs/host-fleet';
import { hostGroupName } from './constructs/host-group';
import { hostLogGroup, PlatformAlarms, SandboxEventBus } from './constructs/observability';
import { SandboxNetwork } from './constructs/network';
import { ReaperSchedule } from './constructs/reaper-schedule';
import { SandboxApi } from './constructs/sandbox-api';
import type { ProjectTables } from './constructs/tables';
import type { DeploymentEnvironment } from './environment';
import { appVersion } from '../contract/version';
import { sandboxImageDir } from './paths';

export interface ServiceStackProps extends StackProps {
  /** The environment's settings (cdk.json). */
  readonly environment: DeploymentEnvironment;
  /** The stateful stack's tables. */
  readonly tables: ProjectTables;
  /** The stateful stack's bucket. */
  readonly bucket: s3.IBucket;
}

/** The production image builds from Ubuntu pulled through ECR Public (no Docker Hub rate limits). */
const sandboxBaseImage = 'public.ecr.aws/docker/library/ubuntu:24.04';

export class ServiceStack extends Stack {
  public readonly api: SandboxApi;
  public readonly functions: ControlPlaneFunctions;
  public readonly fleet: HostFleet;
  public readonly network: SandboxNetwork;
  public readonly reaperSchedule: ReaperSchedule;
  public readonly fleetWiring: FleetWiring;
  public readonly events: SandboxEventBus;
  public readonly observability: PlatformAlarms;

  constructor(scope: Construct, id: string, props: ServiceStackProps) {
    const e = props.environment;
    const retain = e.removalPolicy === 'retain';
    super(scope, id, { ...props, terminationProtection: props.terminationProtection ?? retain });
    const removalPolicy = retain ? RemovalPolicy.RETAIN : RemovalPolicy.DESTROY;

    const sandboxImage = new ecrAssets.DockerImageAsset(this, 'SandboxImage', {
      directory: sandboxImageDir,
      platform: e.hostArchitecture === InstanceArchitecture.ARM_64 ? ecrAssets.Platform.LINUX_ARM64 : ecrAssets.Platform.LINUX_AMD64,
      buildArgs: { BASE_IMAGE: sandboxBaseImage },
    });

    this.network = new SandboxNetwork(this, 'Network', {
      natGateways: e.network.natGateways,
      maxAzs: e.network.maxAzs,
      flowLogTrafficType: e.network.flowLogTrafficType,
      logRetention: e.logRetentionDays,
      removalPolicy,
    });

    this.api = new SandboxApi(this, 'Api', {
      envName: e.name,
      stageName: e.api.stageName,
      throttleRateLimit: e.api.throttleRateLimit,
      throttleBurstLimit: e.api.throttleBurstLimit,
      quotaPerDay: e.api.quotaPerDay,
      authorizerCacheSeconds: e.api.authorizerCacheSeconds,
      executionLogLevel: e.api.executionLogLevel,
      accessLogRetention: e.logRetentionDays,
      removalPolicy,
    });

    this.events = new SandboxEventBus(this, 'Events', { envName: e.name, archiveRetentionDays: e.logRetentionDays });

    const controlPlane: HandlerEnvironmentProps = {
      envName: e.name,
      limits: e.limits,
      sandboxSlotsPerHost: e.hosts.sandboxSlotsPerHost,
      headroomPercent: e.hosts.headroomPercent,
      drainTimeoutSeconds: e.hosts.drainTimeoutSeconds,
      logRetentionDays: e.logRetentionDays,
      events: this.events,
      tables: props.tables,
      bucket: props.bucket,
      sandboxImageUri: sandboxImage.imageUri,
      sandboxApiUrl: this.api.url,
      appVersion,
      autoScalingGroupName: hostGroupName(this),
    };
    this.functions = new ControlPlaneFunctions(this, 'Handlers', {
      ...controlPlane,
      handlers: [...handlerNames, ...backgroundHandlerNames],
      memoryMb: e.handlers.memoryMb,
      apiTimeoutSeconds: e.handlers.apiTimeoutSeconds,
      reaperTimeoutSeconds: e.handlers.reaperTimeoutSeconds,
      removalPolicy,
    });
    this.api.addRoutes(routes, (h) => this.functions.fn(h), this.functions.fn('authorizer'));

    const reaper = this.functions.fn('reaper');
    // The next tick is the retry: Lambda's own async retries would only overlap runs.
    reaper.configureAsyncInvoke({ retryAttempts: 0, maxEventAge: Duration.seconds(Math.max(60, e.reaper.maxEventAgeSeconds)) });
    this.reaperSchedule = new ReaperSchedule(this, 'Reaper', {
      reaper,
      rateMinutes: e.reaper.rateMinutes,
      retryAttempts: e.reaper.retryAttempts,
      maxEventAgeSeconds: e.reaper.maxEventAgeSeconds,
      envName: e.name,
    });

    const h = e.hosts;
    this.fleet = new HostFleet(this, 'Hosts', {
      envName: e.name,
      instanceTypes: h.instanceTypes,
      architecture: e.hostArchitecture,
      minHosts: h.minHosts,
      maxHosts: h.maxHosts,
      sandboxSlotsPerHost: h.sandboxSlotsPerHost,
      warmContainersPerHost: h.warmContainersPerHost,
      rootVolumeGiB: h.rootVolumeGiB,
      stateVolumeGiB: h.stateVolumeGiB,
      ...(h.spot.enabled
        ? { spot: { onDemandBaseCapacity: h.spot.onDemandBaseCapacity, onDemandPercentageAboveBaseCapacity: h.spot.onDemandPercentageAboveBaseCapacity } }
        : {}),
      warmPoolMinSize: h.warmPoolMinSize,
      bootTimeoutSeconds: h.bootTimeoutSeconds,
      drainTimeoutSeconds: h.drainTimeoutSeconds,
      network: this.network,
      tables: props.tables,
      bucket: props.bucket,
      sandboxImage,
      hostAgent: new HostAgentAssets(this, 'HostAgent'),
      controlPlaneEnv: handlerEnvironment(controlPlane),
      events: this.events,
      daemonLogGroup: hostLogGroup(this, 'HostLogs', { envName: e.name, retentionDays: e.logRetentionDays, removalPolicy }),
    });

    const fleetCapacity = this.functions.fn('fleet-capacity');
    // Like the reaper: the next tick is the retry.
    fleetCapacity.configureAsyncInvoke({ retryAttempts: 0, maxEventAge: Duration.seconds(Math.max(60, e.reaper.maxEventAgeSeconds)) });
    this.fleetWiring = new FleetWiring(this, 'Fleet', {
      envName: e.name,
      group: this.fleet.autoScalingGroup,
      groupName: controlPlane.autoScalingGroupName,
      fleetEvents: this.functions.fn('fleet-events'),
      fleetCapacity,
      spot: e.hosts.spot.enabled,
      headroomPercent: e.hosts.headroomPercent,
      scaleInAfterMinutes: e.hosts.scaleInAfterMinutes,
      // The same delivery policy as the reaper's schedule.
      retryAttempts: e.reaper.retryAttempts,
      maxEventAgeSeconds: e.reaper.maxEventAgeSeconds,
    });

    this.observability = new PlatformAlarms(this, 'Observability', {
      envName: e.name,
      thresholds: e.observability.alarms,
      alarmEmail: e.observability.alarmEmail ?? undefined,
      removalPolicy,
      restApi: this.api.restApi,
      functions: this.functions.functions,
      reaper,
      reaperDeadLetterQueue: this.reaperSchedule.deadLetterQueue,
      fleetDeadLetterQueue: this.fleetWiring.deadLetterQueue,
      tables: props.tables.entries,
    });

    new CfnOutput(this, 'ApiUrl', { value: this.api.restApi.url, description: 'Base URL of the API (stage included)' });
    new CfnOutput(this, 'UsagePlanId', { value: this.api.usagePlan.usagePlanId, description: 'Usage plan tenant keys are attached to' });
    new CfnOutput(this, 'DefaultUsageKeyId', {
      value: this.api.defaultUsageKey.keyId,
      description: 'API Gateway key of the usage plan (its value becomes usageIdentifierKey)',
    });
    new CfnOutput(this, 'HostAutoScalingGroupName', {
      value: this.fleet.autoScalingGroup.autoScalingGroupName,
      description: 'Auto Scaling group of sandbox hosts',
    });
    new CfnOutput(this, 'SandboxImageUri', { value: sandboxImage.imageUri, description: 'Sandbox image in ECR' });
    new CfnOutput(this, 'EventBusName', { value: this.events.bus.eventBusName, description: 'EventBridge bus with sandbox.* and command.finished events' });
    new CfnOutput(this, 'AlarmTopicArn', { value: this.observability.topic.topicArn, description: 'SNS topic every alarm notifies' });
    new CfnOutput(this, 'FleetDeadLetterQueueUrl', {
      value: this.fleetWiring.deadLetterQueue.queueUrl,
      description: 'Fleet events and capacity-schedule deliveries that failed',
    });
    new CfnOutput(this, 'ReaperDeadLetterQueueUrl', {
      value: this.reaperSchedule.deadLetterQueue.queueUrl,
      description: 'Reaper schedule deliveries that failed',
    });
  }
}
