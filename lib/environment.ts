/**
 * Per-environment settings: `cdk deploy -c env=<name>` picks one entry of the
 * `environments` table in cdk.json. Every knob is spelled out in that table
 * (no hidden defaults), validated here, and a bad table fails synthesis with
 * a message that names the field.
 */
import { type InstanceArchitecture, InstanceType } from 'aws-cdk-lib/aws-ec2';
import * as z from 'zod';
import { maxHeadroomPercent } from '../lambdas/shared/fleet-scaling';

const positiveInt = z.number().int().positive();
const nonNegativeInt = z.number().int().min(0);

/** CloudWatch Logs accepts only these retention periods (days). */
const logRetentionDays = [1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653] as const;
const retention = z
  .number()
  .int()
  .refine((d) => (logRetentionDays as readonly number[]).includes(d), {
    message: `must be one of CloudWatch's retention periods: ${logRetentionDays.join(', ')}`,
  });

const environmentSchema = z
  .object({
    /** Account/region to pin the stacks to; absent = the CLI's current credentials (env-agnostic). */
    account: z
      .string()
      .regex(/^\d{12}$/)
      .optional(),
    region: z
      .string()
      .regex(/^[a-z]{2}(-[a-z]+)+-\d$/)
      .optional(),
    /** 'retain' keeps tables and the bucket when the stack goes and turns on termination/deletion protection. */
    removalPolicy: z.enum(['retain', 'destroy']),
    logRetentionDays: retention,
    network: z.strictObject({
      /** 0 = hosts in public subnets with public IPs and no NAT (cheapest); >=1 = private subnets behind NAT. */
      natGateways: nonNegativeInt.max(3),
      maxAzs: positiveInt.max(3),
      flowLogTrafficType: z.enum(['ALL', 'REJECT']),
    }),
    hosts: z.strictObject({
      /** First entry is the launch template's type; with Spot, all entries are overrides. Same architecture. */
      instanceTypes: z.array(z.string().regex(/^[a-z0-9-]+\.[a-z0-9]+$/)).min(1),
      minHosts: nonNegativeInt,
      maxHosts: positiveInt,
      sandboxSlotsPerHost: positiveInt,
      rootVolumeGiB: positiveInt.min(30).max(16_384),
      /**
       * Encrypted gp3 volume (ext4) for sandbox state at /var/lib/ephemeral-sandbox: each sandbox's home
       * file system (disk_mb, preallocated) and its kept /tmp while stopped. Must hold every slot at the limits.
       */
      stateVolumeGiB: positiveInt.min(1).max(16_384),
      spot: z.strictObject({
        enabled: z.boolean(),
        onDemandBaseCapacity: nonNegativeInt,
        onDemandPercentageAboveBaseCapacity: nonNegativeInt.max(100),
      }),
      /** Stopped, pre-initialised instances kept ready; 0 = no warm pool. */
      warmPoolMinSize: nonNegativeInt,
      /**
       * Running, hardened containers of the default shape each host keeps ready for creates to claim
       * (WARM_CONTAINERS_PER_HOST); never sandboxes, never slots; 0 = every create makes its container.
       */
      warmContainersPerHost: nonNegativeInt.max(32),
      /** How long a terminating host may drain (termination lifecycle hook heartbeat timeout). */
      drainTimeoutSeconds: positiveInt.min(30).max(7200),
      /** How long first-boot setup may take before the launch hook abandons the instance. */
      bootTimeoutSeconds: positiveInt.min(30).max(7200),
      /**
       * Capacity kept free ahead of demand, in percent of the fleet by its scarcest resource (CPU, memory,
       * disk or slots): the fleet adds hosts when less is free, and gives one back only if as much stays
       * free without it. 0 = hosts only for sandboxes that exist or wait (dev: rests at zero).
       */
      headroomPercent: nonNegativeInt.max(maxHeadroomPercent),
      /** How long (minutes) a host must have been spare before the group gives it back; CloudWatch evaluates at most a day. */
      scaleInAfterMinutes: positiveInt.max(1440),
    }),
    api: z.strictObject({
      stageName: z.string().regex(/^[A-Za-z0-9_]+$/),
      /** Per-key (usage plan) steady-state requests per second and burst. */
      throttleRateLimit: positiveInt,
      throttleBurstLimit: positiveInt,
      /** Per-key requests per day; 0 = no quota. */
      quotaPerDay: nonNegativeInt,
      /** Authorizer result cache TTL; 0 turns caching off (max 3600). */
      authorizerCacheSeconds: nonNegativeInt.max(3600),
      executionLogLevel: z.enum(['OFF', 'ERROR', 'INFO']),
    }),
    handlers: z.strictObject({
      memoryMb: positiveInt.min(128).max(10_240),
      /** API handlers; API Gateway gives up at 29 s anyway. */
      apiTimeoutSeconds: positiveInt.max(29),
      reaperTimeoutSeconds: positiveInt.max(900),
    }),
    reaper: z.strictObject({
      rateMinutes: positiveInt.max(1440),
      retryAttempts: nonNegativeInt.max(185),
      maxEventAgeSeconds: positiveInt.min(60).max(86_400),
    }),
    storage: z.strictObject({
      versioned: z.boolean(),
      /** Noncurrent versions expire after this many days (only with versioning). */
      noncurrentVersionExpirationDays: positiveInt,
      /** Objects untouched this long move to Intelligent-Tiering. */
      intelligentTieringAfterDays: nonNegativeInt,
      accessLogRetentionDays: positiveInt,
    }),
    observability: z.strictObject({
      /** Where alarms are mailed (an SNS email subscription, confirmed by its recipient); null = the topic only. */
      alarmEmail: z
        .string()
        .regex(/^[^@\s]+@[^@\s]+\.[^@\s]+$/, 'must be an email address')
        .nullable(),
      /** Alarm thresholds; each alarm looks at 5-minute periods. */
      alarms: z.strictObject({
        /** Share of API requests answered 5xx, in percent. */
        api5xxRatePercent: z.number().positive().max(100),
        /** API latency (p99) the callers see, in ms. */
        apiP99LatencyMs: positiveInt,
        /** no_capacity (503) answers in 5 minutes. */
        noCapacityAnswers: positiveInt,
        /** Hosts marked lost in 5 minutes. */
        hostsLost: positiveInt,
        /** Failed reaper runs in 5 minutes (the dead-letter queue alarms on any message). */
        reaperErrors: positiveInt,
        /** Errors plus throttles of one function in 5 minutes. */
        lambdaErrorsAndThrottles: positiveInt,
        /** Read and write throttle events of one table in 5 minutes. */
        dynamoDbThrottles: positiveInt,
        /** SSM calls answered ThrottlingException in 5 minutes. */
        ssmThrottles: positiveInt,
        /** Lifecycle events the bus did not take, after retries, in 5 minutes. */
        eventsNotDelivered: positiveInt,
      }),
    }),
    limits: z.strictObject({
      defaultCpu: z.number().positive(),
      maxCpu: z.number().positive(),
      defaultMemoryMb: positiveInt,
      maxMemoryMb: positiveInt,
      defaultTtlSeconds: positiveInt,
      maxTtlSeconds: positiveInt,
      defaultIdleTimeoutSeconds: positiveInt,
      pidsLimit: positiveInt,
      /** A sandbox's home size when the caller names none, and the most it may name (its sync quota too). */
      defaultDiskMb: positiveInt.min(64),
      maxDiskMb: positiveInt.min(64),
      hotSyncIntervalSeconds: nonNegativeInt,
      /** Sandboxes a tenant may have not yet ended (a tenant's own item can override it). */
      maxSandboxesPerTenant: positiveInt,
      hostLostAfterSeconds: positiveInt,
      /** Output kept per stream of a command (past it the stream is cut and flagged). */
      commandOutputMaxBytes: positiveInt,
      /** Days command records and output are kept after their sandbox ends (DynamoDB TTL, S3 lifecycle). */
      commandRetentionDays: positiveInt.max(365),
      /** Seconds a presigned upload or download URL of the files API stays valid (S3 allows up to 7 days; role credentials may end it sooner). */
      filesUrlTtlSeconds: positiveInt.min(60).max(43_200),
    }),
  })
  .strict()
  .superRefine((env, ctx) => {
    const h = env.hosts;
    if (h.minHosts > h.maxHosts) {
      ctx.addIssue({ code: 'custom', path: ['hosts', 'minHosts'], message: `minHosts (${h.minHosts}) is above maxHosts (${h.maxHosts})` });
    }
    if (h.warmPoolMinSize > 0 && (h.spot.enabled || h.instanceTypes.length > 1)) {
      // Auto Scaling rejects a warm pool on a group with a mixed instances policy.
      ctx.addIssue({
        code: 'custom',
        path: ['hosts', 'warmPoolMinSize'],
        message: 'a warm pool needs a single instance type and Spot off (Auto Scaling does not support warm pools with mixed instances)',
      });
    }
    if (h.instanceTypes.length > 1 && !h.spot.enabled) {
      ctx.addIssue({
        code: 'custom',
        path: ['hosts', 'instanceTypes'],
        message: 'several instance types are only used with Spot (mixed instances); list one type or enable Spot',
      });
    }
    const arches = new Set(h.instanceTypes.map((t) => new InstanceType(t).architecture));
    if (arches.size > 1) {
      ctx.addIssue({
        code: 'custom',
        path: ['hosts', 'instanceTypes'],
        message: `instance types mix architectures (${h.instanceTypes.join(', ')}); the AMI and the sandbox image are built for one`,
      });
    }
    if (env.api.throttleBurstLimit < env.api.throttleRateLimit) {
      ctx.addIssue({ code: 'custom', path: ['api', 'throttleBurstLimit'], message: 'burst limit must be at least the rate limit' });
    }
    const l = env.limits;
    if (l.defaultCpu > l.maxCpu) ctx.addIssue({ code: 'custom', path: ['limits', 'defaultCpu'], message: 'defaultCpu is above maxCpu' });
    if (l.defaultMemoryMb > l.maxMemoryMb)
      ctx.addIssue({ code: 'custom', path: ['limits', 'defaultMemoryMb'], message: 'defaultMemoryMb is above maxMemoryMb' });
    if (l.defaultTtlSeconds > l.maxTtlSeconds)
      ctx.addIssue({ code: 'custom', path: ['limits', 'defaultTtlSeconds'], message: 'defaultTtlSeconds is above maxTtlSeconds' });
    if (l.defaultDiskMb > l.maxDiskMb) ctx.addIssue({ code: 'custom', path: ['limits', 'defaultDiskMb'], message: 'defaultDiskMb is above maxDiskMb' });
    // Homes are preallocated and a stopped sandbox keeps its /tmp (up to half its memory) on the host: every slot at the limits must fit.
    const neededMb = h.sandboxSlotsPerHost * (l.maxDiskMb + Math.ceil(l.maxMemoryMb / 2));
    if (h.stateVolumeGiB * 1024 < neededMb) {
      ctx.addIssue({
        code: 'custom',
        path: ['hosts', 'stateVolumeGiB'],
        message: `${h.stateVolumeGiB} GiB cannot hold ${h.sandboxSlotsPerHost} slots at maxDiskMb (${l.maxDiskMb}) plus a kept /tmp of half maxMemoryMb (${Math.ceil(l.maxMemoryMb / 2)}): needs at least ${Math.ceil(neededMb / 1024)} GiB`,
      });
    }
  });

export type EnvironmentSettings = z.infer<typeof environmentSchema>;

/** One resolved environment: its name plus its validated settings. */
export interface DeploymentEnvironment extends EnvironmentSettings {
  name: string;
  /** Architecture of every host instance type (drives the AMI, the image platform, the mount-s3 RPM). */
  hostArchitecture: InstanceArchitecture;
}

/** Why synthesis cannot start: a missing or unknown env name, or a bad settings table. */
export class EnvironmentConfigError extends Error {
  override readonly name = 'EnvironmentConfigError';
}

/**
 * Picks and validates one environment from the `environments` context table.
 *
 * @example resolveEnvironment(app.node.tryGetContext('env'), app.node.tryGetContext('environments'))
 */
export function resolveEnvironment(envName: unknown, environments: unknown): DeploymentEnvironment {
  if (environments === undefined || environments === null || typeof environments !== 'object' || Array.isArray(environments)) {
    throw new EnvironmentConfigError('cdk.json has no "environments" table under "context"; it must map environment names (e.g. dev, prod) to their settings');
  }
  const names = Object.keys(environments);
  const valid = names.length > 0 ? names.join(', ') : '(none defined)';
  if (envName === undefined || envName === null || envName === '') {
    throw new EnvironmentConfigError(`no environment chosen: pass -c env=<name> (valid names: ${valid})`);
  }
  if (typeof envName !== 'string' || !Object.hasOwn(environments, envName)) {
    throw new EnvironmentConfigError(`unknown environment "${String(envName)}": valid names are ${valid} (defined in cdk.json under context.environments)`);
  }
  if (!/^[a-z][a-z0-9-]{0,15}$/.test(envName)) {
    throw new EnvironmentConfigError(
      `environment name "${envName}" must be lowercase letters, digits and dashes (at most 16), starting with a letter: it becomes part of stack and resource names`,
    );
  }
  const parsed = environmentSchema.safeParse((environments as Record<string, unknown>)[envName]);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => `  - ${i.path.join('.') || '(root)'}: ${i.message}`).join('\n');
    throw new EnvironmentConfigError(`environment "${envName}" in cdk.json is invalid:\n${problems}`);
  }
  const settings = parsed.data;
  return {
    name: envName,
    ...settings,
    hostArchitecture: new InstanceType(settings.hosts.instanceTypes[0]!).architecture,
  };
}
