/**
 * The sandbox hosts: an Auto Scaling group of Amazon Linux 2023 instances
 * running Docker and the host-agent. IMDSv2 only with hop limit 1 (containers
 * cannot reach the instance's credentials), encrypted EBS, no SSH (SSM only),
 * tagged so only this environment's control plane may send them commands.
 */
import { Duration, Fn, Stack, Tags } from 'aws-cdk-lib';
import * as autoscaling from 'aws-cdk-lib/aws-autoscaling';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import type { DockerImageAsset } from 'aws-cdk-lib/aws-ecr-assets';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import * as ssm from 'aws-cdk-lib/aws-ssm';
import { NagSuppressions } from 'cdk-nag';
import { Construct } from 'constructs';
import { hostTags, storageBucketArnPattern } from './control-plane-functions';
import { hostAccess } from './handler-access';
import { hostGroupArn, hostGroupArnSuppression, hostGroupName } from './host-group';
import type { HostAgentAssets } from './host-agent-assets';
import { ssmCommandWorkersFor } from '../../contract/host-protocol';
import { hostUserData } from './host-user-data';
import type { SandboxNetwork } from './network';
import type * as logs from 'aws-cdk-lib/aws-logs';
import type { SandboxEventBus } from './observability';
import type { ProjectTables } from './tables';

/** Spot hosts: every instance type is an override, On-Demand only up to these amounts. */
interface HostFleetSpotProps {
  /** Hosts that are always On-Demand, before any Spot host. */
  readonly onDemandBaseCapacity: number;
  /** Percent of the hosts above the base that are On-Demand. */
  readonly onDemandPercentageAboveBaseCapacity: number;
}

export interface HostFleetProps {
  /** The environment's name: the hosts' role, tags, image parameter and Name. */
  readonly envName: string;
  /** Host instance types, all of one architecture: the first is the launch template's; with Spot, all are overrides. */
  readonly instanceTypes: readonly string[];
  /** Architecture of those instance types (the AMI's). */
  readonly architecture: ec2.InstanceArchitecture;
  /** Fewest hosts the group keeps. */
  readonly minHosts: number;
  /** Most hosts the group may have. */
  readonly maxHosts: number;
  /** Sandbox slots of one host (HOST_SLOTS; also sizes the SSM command workers). */
  readonly sandboxSlotsPerHost: number;
  /**
   * Ready containers of the default shape each host keeps for creates to claim (WARM_CONTAINERS_PER_HOST).
   * @default 0 - every create makes its container
   */
  readonly warmContainersPerHost?: number;
  /** Size of each host's root volume (encrypted gp3). */
  readonly rootVolumeGiB: number;
  /** Size of each host's sandbox state volume (encrypted gp3): must hold every slot's home and kept /tmp. */
  readonly stateVolumeGiB: number;
  /**
   * Run Spot hosts (a mixed instances policy with capacity rebalancing).
   * @default - On-Demand hosts of the first instance type only
   */
  readonly spot?: HostFleetSpotProps;
  /**
   * Stopped, pre-initialised hosts kept ready; needs a single instance type and no Spot.
   * @default 0 - no warm pool
   */
  readonly warmPoolMinSize?: number;
  /** How long first-boot setup may take before the launch hook abandons the host. */
  readonly bootTimeoutSeconds: number;
  /** How long a terminating host may drain (the termination hook's heartbeat timeout). */
  readonly drainTimeoutSeconds: number;
  /** The VPC and the hosts' security group (no inbound rules). */
  readonly network: SandboxNetwork;
  /** The tables the host daemon reads and writes (hosts, sandboxes, commands, egress log). */
  readonly tables: ProjectTables;
  /** The storage bucket the hosts sync homes with and mount the cold tier from. */
  readonly bucket: s3.IBucket;
  /** The sandbox image asset: the hosts pull it (ECR credentials) before they register. */
  readonly sandboxImage: DockerImageAsset;
  /** The bundled host-agent CLI, daemon and wrapper the user data fetches. */
  readonly hostAgent: HostAgentAssets;
  /** The control plane's configuration (what the functions get): the host daemon reads the same settings. */
  readonly controlPlaneEnv: Record<string, string>;
  /** The lifecycle event bus: the host records outcomes and commands' ends, and publishes their events. */
  readonly events: SandboxEventBus;
  /** Where each host's daemon ships its lines (logs and EMF metrics), one stream per host (HOST_LOG_GROUP). */
  readonly daemonLogGroup: logs.ILogGroup;
}

/** Block device of the sandbox state volume (user data finds it under this name or its /dev/xvd twin). */
const stateDeviceName = '/dev/sdb';

/** Lifecycle hook that holds a new host until its setup finished (user data completes it). */
export const launchHookName = 'sandbox-host-launching';
/** Lifecycle hook that holds a terminating host while it drains (fleet-events tells the host; the host completes it). */
export const drainHookName = 'sandbox-host-draining';

/** The SSM parameter holding the fleet's current sandbox image reference (the image URI the functions get as SANDBOX_IMAGE). */
export function sandboxImageParameterName(envName: string): string {
  return `/ephemeral-sandbox/${envName}/sandbox-image`;
}

export class HostFleet extends Construct {
  public readonly autoScalingGroup: autoscaling.AutoScalingGroup;
  public readonly launchTemplate: ec2.LaunchTemplate;
  public readonly role: iam.Role;
  /** The fleet's current sandbox image reference, read by running hosts at each image pass. */
  public readonly sandboxImageParameter: ssm.StringParameter;

  constructor(scope: Construct, id: string, props: HostFleetProps) {
    super(scope, id);
    const envName = props.envName;
    const stack = Stack.of(this);
    const autoScalingGroupName = hostGroupName(this);

    this.role = new iam.Role(this, 'Role', {
      assumedBy: new iam.ServicePrincipal('ec2.amazonaws.com'),
      description: `Ephemeral Sandbox ${envName}: sandbox host`,
      managedPolicies: [iam.ManagedPolicy.fromAwsManagedPolicyName('AmazonSSMManagedInstanceCore')],
    });
    // A host's SANDBOX_IMAGE (host.env) is fixed when it launches; a deploy that changes the image reaches the hosts
    // already running through this parameter, which the daemon reads at each image pass (pre-pulls, then records).
    // A parameter rather than an item in the hosts table: CloudFormation writes it in the same deploy that gives the
    // functions the new SANDBOX_IMAGE, from the same value, with no custom resource and nothing for placement to skip;
    // a host reads one standard parameter every pass (well within GetParameter's throughput for a fleet).
    this.sandboxImageParameter = new ssm.StringParameter(this, 'SandboxImageParameter', {
      parameterName: sandboxImageParameterName(envName),
      stringValue: props.sandboxImage.imageUri,
      description: `Ephemeral Sandbox ${envName}: the sandbox image hosts pre-pull and creates run`,
    });
    this.grantHostAccess(props, autoScalingGroupName);

    const userData = hostUserData({
      region: stack.region,
      architecture: props.architecture,
      hostEnv: {
        // The daemon runs control-plane code (records, slots, storage layout): same settings as the functions.
        ...props.controlPlaneEnv,
        AWS_REGION: stack.region,
        AWS_DEFAULT_REGION: stack.region,
        DEPLOYMENT_ENV: envName,
        HOST_SLOTS: String(props.sandboxSlotsPerHost),
        HOST_LOG_GROUP: props.daemonLogGroup.logGroupName,
        WARM_CONTAINERS_PER_HOST: String(props.warmContainersPerHost ?? 0),
        COLD_MOUNT_DRIVER: 'mountpoint-s3',
        AUTO_SCALING_GROUP_NAME: autoScalingGroupName,
        LAUNCH_LIFECYCLE_HOOK: launchHookName,
        DRAIN_LIFECYCLE_HOOK: drainHookName,
        // A host holds the image it serves, not every image a rollout left behind (host-agent/src/image-rollout.ts).
        PRUNE_SANDBOX_IMAGES: '1',
        SANDBOX_IMAGE_PARAMETER: this.sandboxImageParameter.parameterName,
      },
      hostAgentS3Url: props.hostAgent.cli.s3ObjectUrl,
      hostDaemonS3Url: props.hostAgent.daemon.s3ObjectUrl,
      hostAgentWrapperS3Url: props.hostAgent.wrapper.s3ObjectUrl,
      sandboxImageUri: props.sandboxImage.imageUri,
      sandboxImageRegistry: Fn.select(0, Fn.split('/', props.sandboxImage.imageUri)),
      autoScalingGroupName,
      launchHookName,
      ssmCommandWorkers: ssmCommandWorkersFor(props.sandboxSlotsPerHost),
      stateDevice: stateDeviceName,
    });

    this.launchTemplate = new ec2.LaunchTemplate(this, 'LaunchTemplate', {
      machineImage: ec2.MachineImage.latestAmazonLinux2023({
        cpuType: props.architecture === ec2.InstanceArchitecture.ARM_64 ? ec2.AmazonLinuxCpuType.ARM_64 : ec2.AmazonLinuxCpuType.X86_64,
      }),
      instanceType: new ec2.InstanceType(props.instanceTypes[0]!),
      userData,
      role: this.role,
      securityGroup: props.network.hostSecurityGroup,
      // Public subnets without NAT: the host needs a public IP to reach the internet; the security group still admits nothing.
      ...(props.network.hostsNeedPublicIp ? { associatePublicIpAddress: true } : {}),
      httpEndpoint: true,
      httpTokens: ec2.LaunchTemplateHttpTokens.REQUIRED,
      // One hop: a container behind Docker's bridge is a second hop and never gets an answer from IMDS.
      httpPutResponseHopLimit: 1,
      instanceMetadataTags: false,
      blockDevices: [
        {
          deviceName: '/dev/xvda',
          volume: ec2.BlockDeviceVolume.ebs(props.rootVolumeGiB, {
            encrypted: true,
            volumeType: ec2.EbsDeviceVolumeType.GP3,
            deleteOnTermination: true,
          }),
        },
        {
          // Sandbox state (each home's own ext4 file system, preallocated): apart from the root, so no sandbox can fill it.
          deviceName: stateDeviceName,
          volume: ec2.BlockDeviceVolume.ebs(props.stateVolumeGiB, {
            encrypted: true,
            volumeType: ec2.EbsDeviceVolumeType.GP3,
            deleteOnTermination: true,
          }),
        },
      ],
    });

    const spot = props.spot;
    const warmPoolMinSize = props.warmPoolMinSize ?? 0;
    this.autoScalingGroup = new autoscaling.AutoScalingGroup(this, 'Group', {
      autoScalingGroupName,
      vpc: props.network.vpc,
      vpcSubnets: props.network.hostSubnets,
      minCapacity: props.minHosts,
      maxCapacity: props.maxHosts,
      // Only the host daemon protects a host (while it holds sandboxes): an empty host is what scale-in removes.
      newInstancesProtectedFromScaleIn: false,
      ...(spot
        ? {
            mixedInstancesPolicy: {
              launchTemplate: this.launchTemplate,
              launchTemplateOverrides: props.instanceTypes.map((t) => ({ instanceType: new ec2.InstanceType(t) })),
              instancesDistribution: {
                onDemandBaseCapacity: spot.onDemandBaseCapacity,
                onDemandPercentageAboveBaseCapacity: spot.onDemandPercentageAboveBaseCapacity,
                spotAllocationStrategy: autoscaling.SpotAllocationStrategy.PRICE_CAPACITY_OPTIMIZED,
              },
            },
            // Replace a Spot host when AWS signals elevated interruption risk, before the 2-minute notice.
            capacityRebalance: true,
          }
        : { launchTemplate: this.launchTemplate }),
      healthChecks: autoscaling.HealthChecks.ec2({ gracePeriod: Duration.minutes(5) }),
      groupMetrics: [autoscaling.GroupMetrics.all()],
    });

    // On the group (propagated at launch) and in the template's instance tags: SSM's tag condition matches these.
    const tags = { ...hostTags(envName), Name: `ephemeral-sandbox-${envName}-host` };
    for (const [key, value] of Object.entries(tags)) {
      Tags.of(this.autoScalingGroup).add(key, value, { applyToLaunchedInstances: true });
      // Above the priority of the construct-path Name the template sets itself.
      Tags.of(this.launchTemplate).add(key, value, { priority: 300 });
    }

    // In the group's own specification, not separate resources: hooks added after the group miss its first hosts.
    const group = this.autoScalingGroup.node.defaultChild as autoscaling.CfnAutoScalingGroup;
    group.lifecycleHookSpecificationList = [
      {
        lifecycleHookName: launchHookName,
        lifecycleTransition: 'autoscaling:EC2_INSTANCE_LAUNCHING',
        heartbeatTimeout: props.bootTimeoutSeconds,
        // A host that never reported ready is replaced, not put in service.
        defaultResult: 'ABANDON',
      },
      {
        lifecycleHookName: drainHookName,
        lifecycleTransition: 'autoscaling:EC2_INSTANCE_TERMINATING',
        heartbeatTimeout: props.drainTimeoutSeconds,
        // Termination goes ahead when draining runs out of time.
        defaultResult: 'CONTINUE',
      },
    ];

    if (warmPoolMinSize > 0) {
      this.autoScalingGroup.addWarmPool({
        minSize: warmPoolMinSize,
        // Exactly warmPoolMinSize stopped hosts: without a cap the pool fills up to maxHosts.
        maxGroupPreparedCapacity: props.minHosts + warmPoolMinSize,
        // Stopped: pay only for EBS while waiting; user data already ran, so a start takes seconds.
        poolState: autoscaling.PoolState.STOPPED,
        // A scaled-in host may hold stale sandbox state: terminate it rather than recycle it.
        reuseOnScaleIn: false,
      });
    }

    NagSuppressions.addResourceSuppressions(this.autoScalingGroup, [
      {
        id: 'AwsSolutions-AS3',
        reason:
          'Scaling activity is recorded in the group activity history, emitted to EventBridge and measured by the group metrics enabled here; an SNS notification topic arrives with the fleet alerting work.',
      },
      {
        id: 'CdkNagValidationFailure',
        reason:
          "AwsSolutions-EC26 cannot read block devices through the group's launch template reference; the template's only volume is encrypted (asserted in test/cdk/service-stack.test.ts).",
      },
    ]);
  }

  private grantHostAccess(props: HostFleetProps, autoScalingGroupName: string): void {
    const stack = Stack.of(this);
    const bucket = props.bucket;
    // Hot-tier sync and the cold-tier mountpoint-s3 mount read and write tenant files; staged requests are read and deleted.
    const objectActions = hostAccess.storageActions.filter((a) => a !== 's3:ListBucket');
    this.role.addToPolicy(new iam.PolicyStatement({ sid: 'ListStorage', actions: ['s3:ListBucket'], resources: [bucket.bucketArn] }));
    this.role.addToPolicy(new iam.PolicyStatement({ sid: 'ReadWriteStorage', actions: [...objectActions], resources: [bucket.arnForObjects('*')] }));
    if (hostAccess.publishesEvents) props.events.grantPut(this.role);
    this.role.addToPolicy(
      new iam.PolicyStatement({ sid: 'ShipDaemonLines', actions: [...hostAccess.logActions], resources: [`${props.daemonLogGroup.logGroupArn}`] }),
    );
    // Registration, heartbeats, reconciliation of the sandboxes on this host (handler-access.ts, checked against the bundles).
    for (const grant of hostAccess.tables) {
      const table = props.tables.table(grant.table);
      const itemActions = grant.actions.filter((a) => a !== 'dynamodb:Query');
      if (itemActions.length > 0) this.role.addToPolicy(new iam.PolicyStatement({ actions: [...itemActions], resources: [table.tableArn] }));
      if (grant.actions.includes('dynamodb:Query')) {
        const indexes = grant.indexes ?? [];
        // A grant that names indexes queries those; one that names none queries the table itself (a command's items by sandbox).
        const resources = indexes.length > 0 ? indexes.map((i) => `${table.tableArn}/index/${i}`) : [table.tableArn];
        this.role.addToPolicy(new iam.PolicyStatement({ actions: ['dynamodb:Query'], resources }));
      }
    }
    // ecr:GetAuthorizationToken (hostAccess.registryActions: the host-agent asks for the token) and the pull's reads, on this repository only.
    props.sandboxImage.repository.grantPull(this.role);
    // The fleet's current image reference: GetParameter on that one parameter. (AmazonSSMManagedInstanceCore also
    // allows ssm:GetParameter on every parameter, for the SSM agent; this grant says what the daemon itself needs.)
    this.role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'SandboxImageParameter',
        actions: [...hostAccess.imageParameterActions],
        resources: [this.sandboxImageParameter.parameterArn],
      }),
    );
    // Exactly the host-agent objects, not the whole asset bucket.
    this.role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'HostAgentBundles',
        actions: ['s3:GetObject'],
        resources: props.hostAgent.all.map((a) => `arn:${stack.partition}:s3:::${a.s3BucketName}/${a.s3ObjectKey}`),
      }),
    );
    // Its own scale-in protection and the lifecycle actions it completes, on its own group only.
    this.role.addToPolicy(
      new iam.PolicyStatement({ sid: 'OwnGroup', actions: [...hostAccess.autoScaling], resources: [hostGroupArn(this, autoScalingGroupName)] }),
    );

    NagSuppressions.addResourceSuppressions(
      this.role,
      [
        {
          id: 'AwsSolutions-IAM4',
          reason: 'AmazonSSMManagedInstanceCore is the AWS-maintained minimum for the SSM agent, which is how the control plane reaches hosts (no SSH).',
          appliesTo: ['Policy::arn:<AWS::Partition>:iam::aws:policy/AmazonSSMManagedInstanceCore'],
        },
        {
          id: 'AwsSolutions-IAM5',
          reason:
            'A host serves any tenant: hot-tier sync and the cold-tier mount read and write objects under per-tenant prefixes created at run time, so object access covers the storage bucket (and only it).',
          appliesTo: [{ regex: `/^Resource::${storageBucketArnPattern}\\/\\*$/g` }],
        },
        {
          id: 'AwsSolutions-IAM5',
          reason: 'ecr:GetAuthorizationToken supports no resource-level permissions; image pulls themselves are limited to the asset repository.',
          appliesTo: ['Resource::*'],
        },
        hostGroupArnSuppression(autoScalingGroupName),
      ],
      true,
    );
  }
}
