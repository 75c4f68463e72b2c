/**
 * Seeing the platform run: the environment's event bus (lifecycle events for
 * users' callbacks), and the operators' side: an SNS topic for alarms (mailed
 * to `observability.alarmEmail` from cdk.json when set), the alarms, and one
 * CloudWatch dashboard. Thresholds come from the environment's settings;
 * custom metrics from lambdas/shared/metric-names.ts, the list the code emits.
 * README ("What to watch") says what each alarm means and what to do.
 */
import { Duration, type RemovalPolicy, Stack } from 'aws-cdk-lib';
import * as cw from 'aws-cdk-lib/aws-cloudwatch';
import { SnsAction } from 'aws-cdk-lib/aws-cloudwatch-actions';
import type * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as events from 'aws-cdk-lib/aws-events';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as logs from 'aws-cdk-lib/aws-logs';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as subscriptions from 'aws-cdk-lib/aws-sns-subscriptions';
import type * as sqs from 'aws-cdk-lib/aws-sqs';
import type * as apigw from 'aws-cdk-lib/aws-apigateway';
import { Construct } from 'constructs';
import { eventSource } from '../../lambdas/shared/event-types';
import { metricDefinitions, metricNamespace, metricService, type MetricName } from '../../lambdas/shared/metric-names';
import type { EnvironmentSettings } from '../environment';

/** Every alarm evaluates one period of this length. */
const alarmPeriod = Duration.minutes(5);

/** The bus's name: one per environment. */
function eventBusName(envName: string): string {
  return `ephemeral-sandbox-${envName}`;
}

export interface SandboxEventBusProps {
  /** The environment's name, in the bus's and the archive's names. */
  readonly envName: string;
  /** Days the archive keeps events (replay after a consumer's outage). */
  readonly archiveRetentionDays: number;
}

/** The environment's EventBridge bus for sandbox.* and command.finished events, with an archive to replay from. */
export class SandboxEventBus extends Construct {
  public readonly bus: events.EventBus;
  public readonly archive: events.Archive;

  constructor(scope: Construct, id: string, props: SandboxEventBusProps) {
    super(scope, id);
    this.bus = new events.EventBus(this, 'Bus', {
      eventBusName: eventBusName(props.envName),
      description: `Ephemeral Sandbox ${props.envName}: sandbox and command lifecycle events`,
    });
    this.archive = this.bus.archive('Archive', {
      archiveName: `${eventBusName(props.envName)}-archive`,
      description: 'Every platform event, for replay to a consumer that missed them',
      eventPattern: { source: [eventSource] },
      retention: Duration.days(props.archiveRetentionDays),
    });
  }

  /** Lets `grantee` put events on the bus (events:PutEvents on this bus only). */
  grantPut(grantee: iam.IGrantable): void {
    this.bus.grantPutEventsTo(grantee);
  }
}

/** The log group every host's daemon ships its lines to (one stream per host): its logs and its metrics. */
export function hostLogGroup(scope: Construct, id: string, props: { envName: string; retentionDays: number; removalPolicy: RemovalPolicy }): logs.LogGroup {
  return new logs.LogGroup(scope, id, {
    logGroupName: `/ephemeral-sandbox/${props.envName}/hosts`,
    retention: props.retentionDays as logs.RetentionDays,
    removalPolicy: props.removalPolicy,
  });
}

/** Each alarm's threshold per 5-minute period (cdk.json `observability.alarms`, documented there). */
export type AlarmThresholds = Readonly<EnvironmentSettings['observability']['alarms']>;

export interface PlatformAlarmsProps {
  /** The environment's name: the metrics namespace, the dashboard's, the topic's and the key's names. */
  readonly envName: string;
  /** What each alarm fires at. */
  readonly thresholds: AlarmThresholds;
  /**
   * Where alarms are mailed (an SNS email subscription its recipient confirms).
   * @default - no subscription: the topic only
   */
  readonly alarmEmail?: string;
  /** What happens to the topic's KMS key when the stack goes. */
  readonly removalPolicy: RemovalPolicy;
  /** The REST API whose 5xx rate and p99 latency are watched. */
  readonly restApi: apigw.RestApi;
  /** Every function, by handler name. */
  readonly functions: ReadonlyMap<string, lambda.IFunction>;
  /** The reaper function (its errors alarm). */
  readonly reaper: lambda.IFunction;
  /** Where the reaper's schedule puts runs it could not deliver (any message alarms). */
  readonly reaperDeadLetterQueue: sqs.IQueue;
  /** Where the fleet's drain events and capacity-schedule deliveries land when fleet-events or fleet-capacity could not take them. */
  readonly fleetDeadLetterQueue: sqs.IQueue;
  /** The tables whose throttled requests alarm. */
  readonly tables: readonly { definition: { id: string }; table: dynamodb.ITable }[];
}

/** One alarm as the README explains it: what it watches and its threshold. */
export interface AlarmSpec {
  id: string;
  alarm: cw.Alarm;
}

/**
 * The alarms (to an SNS topic) and the dashboard of one environment.
 *
 * @example new PlatformAlarms(this, 'Observability', { envName, thresholds, removalPolicy, restApi, functions, reaper, reaperDeadLetterQueue, fleetDeadLetterQueue, tables });
 */
export class PlatformAlarms extends Construct {
  public readonly topic: sns.Topic;
  public readonly dashboard: cw.Dashboard;
  public readonly alarms: AlarmSpec[] = [];
  private readonly namespace: string;

  constructor(scope: Construct, id: string, props: PlatformAlarmsProps) {
    super(scope, id);
    const t = props.thresholds;
    this.namespace = metricNamespace(props.envName);

    // CloudWatch publishes to an encrypted topic only with a key whose policy lets it.
    const key = new kms.Key(this, 'TopicKey', {
      description: `Ephemeral Sandbox ${props.envName}: alarm topic encryption`,
      enableKeyRotation: true,
      removalPolicy: props.removalPolicy,
    });
    key.addToResourcePolicy(
      new iam.PolicyStatement({
        principals: [new iam.ServicePrincipal('cloudwatch.amazonaws.com')],
        actions: ['kms:Decrypt', 'kms:GenerateDataKey*'],
        resources: ['*'],
        conditions: { StringEquals: { 'aws:SourceAccount': Stack.of(this).account } },
      }),
    );
    this.topic = new sns.Topic(this, 'AlarmTopic', { displayName: `Ephemeral Sandbox ${props.envName} alarms`, masterKey: key, enforceSSL: true });
    if (props.alarmEmail) this.topic.addSubscription(new subscriptions.EmailSubscription(props.alarmEmail));

    // API Gateway: what callers see.
    const api5xxRate = new cw.MathExpression({
      expression: '100 * errors / MAX([requests, 1])',
      usingMetrics: {
        errors: props.restApi.metricServerError({ statistic: 'Sum', period: alarmPeriod }),
        requests: props.restApi.metricCount({ statistic: 'SampleCount', period: alarmPeriod }),
      },
      label: 'API 5xx (% of requests)',
      period: alarmPeriod,
    });
    this.add('Api5xxRate', api5xxRate, t.api5xxRatePercent, 'API answers 5xx to more than the threshold share of requests');
    const p99 = props.restApi.metricLatency({ statistic: 'p99', period: alarmPeriod, label: 'API latency p99 (ms)' });
    this.add('ApiLatencyP99', p99, t.apiP99LatencyMs, 'API p99 latency above the threshold');

    // Capacity and hosts.
    this.add(
      'NoCapacity',
      this.custom('ApiErrors', { Code: 'no_capacity' }, 'Sum'),
      t.noCapacityAnswers,
      'creates answered 503 no_capacity: every host is full',
    );
    this.add('HostsLost', this.custom('HostsLost', {}, 'Sum'), t.hostsLost, 'hosts stopped heartbeating; their sandboxes failed with host_lost');

    // The reaper and its schedule.
    this.add(
      'ReaperErrors',
      props.reaper.metricErrors({ statistic: 'Sum', period: alarmPeriod }),
      t.reaperErrors,
      'reaper runs failed (sandboxes it could not end stay due)',
    );
    this.add(
      'ReaperDeadLetters',
      props.reaperDeadLetterQueue.metricApproximateNumberOfMessagesVisible({ statistic: 'Maximum', period: alarmPeriod }),
      1,
      'the schedule could not invoke the reaper (messages in its dead-letter queue)',
    );
    this.add(
      'FleetDeadLetters',
      props.fleetDeadLetterQueue.metricApproximateNumberOfMessagesVisible({ statistic: 'Maximum', period: alarmPeriod }),
      1,
      'a drain event or a capacity run never reached its function (messages in the fleet dead-letter queue): a host may have gone without draining',
    );

    // Every function: errors (crashes, timeouts) and throttles (concurrency).
    for (const [name, fn] of props.functions) {
      const expression = new cw.MathExpression({
        expression: 'errors + throttles',
        usingMetrics: {
          errors: fn.metricErrors({ statistic: 'Sum', period: alarmPeriod }),
          throttles: fn.metricThrottles({ statistic: 'Sum', period: alarmPeriod }),
        },
        label: `${name}: errors + throttles`,
        period: alarmPeriod,
      });
      this.add(`Lambda-${name}`, expression, t.lambdaErrorsAndThrottles, `${name} function errors or throttles`);
    }

    // Dependencies throttling us.
    for (const { definition, table } of props.tables) {
      const expression = new cw.MathExpression({
        expression: 'reads + writes',
        usingMetrics: {
          reads: table.metric('ReadThrottleEvents', { statistic: 'Sum', period: alarmPeriod }),
          writes: table.metric('WriteThrottleEvents', { statistic: 'Sum', period: alarmPeriod }),
        },
        label: `${definition.id}: throttle events`,
        period: alarmPeriod,
      });
      this.add(`DynamoDbThrottles-${definition.id}`, expression, t.dynamoDbThrottles, `DynamoDB table ${definition.id} throttled reads or writes`);
    }
    this.add('SsmThrottles', this.custom('SsmThrottled', {}, 'Sum'), t.ssmThrottles, 'SSM Run Command answered ThrottlingException');
    this.add(
      'EventsNotDelivered',
      this.custom('EventsNotDelivered', {}, 'Sum'),
      t.eventsNotDelivered,
      'lifecycle events the bus did not take after retries (logged whole)',
    );

    this.dashboard = this.buildDashboard(props);
  }

  /** A custom metric of the platform (metric-names.ts), with the service dimension. */
  custom(name: MetricName, dimensions: Record<string, string>, statistic: string, label?: string): cw.Metric {
    return new cw.Metric({
      namespace: this.namespace,
      metricName: name,
      dimensionsMap: { service: metricService, ...dimensions },
      statistic,
      period: alarmPeriod,
      unit: undefined,
      ...(label ? { label } : {}),
    });
  }

  /** Every series of `name`, one per value of its dimensions (SEARCH: values appear as the code emits them). */
  private search(name: MetricName, statistic: string, label?: string): cw.MathExpression {
    const dims = ['service', ...metricDefinitions[name].dimensions].join(',');
    return new cw.MathExpression({
      expression: `SEARCH('{${this.namespace},${dims}} MetricName="${name}"', '${statistic}', 300)`,
      usingMetrics: {},
      label: label ?? '',
      period: alarmPeriod,
    });
  }

  private add(id: string, metric: cw.IMetric, threshold: number, description: string): void {
    const alarm = new cw.Alarm(this, id, {
      alarmDescription: `${description} (threshold ${threshold} per ${alarmPeriod.toMinutes()} min); see README, "What to watch"`,
      metric,
      threshold,
      evaluationPeriods: 1,
      comparisonOperator: cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
      // No data is no traffic (or no failures): not an alarm.
      treatMissingData: cw.TreatMissingData.NOT_BREACHING,
    });
    alarm.addAlarmAction(new SnsAction(this.topic));
    alarm.addOkAction(new SnsAction(this.topic));
    this.alarms.push({ id, alarm });
  }

  private buildDashboard(props: PlatformAlarmsProps): cw.Dashboard {
    const graph = (title: string, left: cw.IMetric[], width = 8) => new cw.GraphWidget({ title, left, width, height: 6 });
    const fns = [...props.functions.values()];
    const dashboard = new cw.Dashboard(this, 'Dashboard', { dashboardName: `ephemeral-sandbox-${props.envName}`, defaultInterval: Duration.hours(3) });
    dashboard.addWidgets(new cw.AlarmStatusWidget({ title: 'Alarms', alarms: this.alarms.map((a) => a.alarm), width: 24, height: 4 }));
    dashboard.addWidgets(
      graph('API requests and errors', [
        props.restApi.metricCount({ statistic: 'Sum', label: 'requests' }),
        props.restApi.metricClientError({ statistic: 'Sum', label: '4xx' }),
        props.restApi.metricServerError({ statistic: 'Sum', label: '5xx' }),
      ]),
      graph('API latency (ms)', [
        props.restApi.metricLatency({ statistic: 'p50', label: 'p50' }),
        props.restApi.metricLatency({ statistic: 'p99', label: 'p99' }),
      ]),
      graph('Errors answered, by code', [this.search('ApiErrors', 'Sum')]),
    );
    dashboard.addWidgets(
      graph('Creates, by outcome and start', [this.search('SandboxCreates', 'Sum')]),
      graph('Create latency p99 (ms)', [this.search('CreateLatency', 'p99')]),
      graph('Exec and command start latency p99 (ms)', [this.search('ExecLatency', 'p99'), this.search('CommandStartLatency', 'p99')]),
    );
    dashboard.addWidgets(
      graph('Commands finished, by status', [this.search('CommandsFinished', 'Sum')]),
      graph('Command duration p99 (ms)', [this.search('CommandDuration', 'p99')]),
      graph('Host dispatch, by verb and outcome', [this.search('HostDispatch', 'Sum'), this.custom('SsmThrottled', {}, 'Sum', 'SSM throttled')]),
    );
    dashboard.addWidgets(
      graph('Reaper', [
        this.custom('ReaperCandidates', {}, 'Sum', 'due'),
        this.search('ReaperEnded', 'Sum'),
        this.custom('ReaperDeferred', {}, 'Sum', 'deferred'),
        this.custom('ReaperBusy', {}, 'Sum', 'busy'),
        this.custom('ReaperFailures', {}, 'Sum', 'failed'),
      ]),
      graph('Reaper runs and dead letters', [
        props.reaper.metricErrors({ statistic: 'Sum', label: 'failed runs' }),
        props.reaperDeadLetterQueue.metricApproximateNumberOfMessagesVisible({ statistic: 'Maximum', label: 'dead letters' }),
        this.custom('HostsLost', {}, 'Sum', 'hosts lost'),
      ]),
      graph('Capacity: hosts and slots', [
        this.custom('ActiveHosts', {}, 'Maximum', 'active hosts'),
        this.custom('SlotsTotal', {}, 'Maximum', 'slots'),
        this.custom('SlotsUsed', {}, 'Maximum', 'slots used'),
        this.custom('SlotsFree', {}, 'Minimum', 'slots free'),
      ]),
    );
    dashboard.addWidgets(
      graph('Hosts: CPU allocated and free', [this.search('HostCpuAllocated', 'Maximum'), this.search('HostCpuFree', 'Minimum')]),
      graph('Hosts: memory allocated and free (MB)', [this.search('HostMemoryAllocatedMb', 'Maximum'), this.search('HostMemoryFreeMb', 'Minimum')]),
      graph('Hosts: sandboxes, pending creates, commands', [
        this.search('HostSandboxes', 'Maximum'),
        this.search('HostPendingCreates', 'Maximum'),
        this.search('HostCommandsRunning', 'Maximum'),
      ]),
    );
    dashboard.addWidgets(
      graph('Hot sync bytes and duration p99', [this.search('HotSyncBytes', 'Sum'), this.search('HotSyncDuration', 'p99')]),
      graph('Egress refusals, by kind', [this.search('EgressRefusals', 'Sum')]),
      graph('Events not delivered', [this.custom('EventsNotDelivered', {}, 'Sum', 'not delivered')]),
    );
    dashboard.addWidgets(
      graph(
        'Lambda errors',
        fns.map((f) => f.metricErrors({ statistic: 'Sum' })),
        8,
      ),
      graph(
        'Lambda throttles',
        fns.map((f) => f.metricThrottles({ statistic: 'Sum' })),
        8,
      ),
      graph(
        'Lambda duration p99 (ms)',
        fns.map((f) => f.metricDuration({ statistic: 'p99' })),
        8,
      ),
    );
    dashboard.addWidgets(
      graph(
        'DynamoDB throttle events',
        props.tables.flatMap(({ definition, table }) => [
          table.metric('ReadThrottleEvents', { statistic: 'Sum', label: `${definition.id} reads` }),
          table.metric('WriteThrottleEvents', { statistic: 'Sum', label: `${definition.id} writes` }),
        ]),
        24,
      ),
    );
    return dashboard;
  }
}
