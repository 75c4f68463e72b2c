/**
 * What makes the fleet move on AWS: EventBridge rules bring the hosts' group's
 * termination lifecycle actions and EC2 Spot interruption warnings to the
 * fleet-events function (the host drains), EventBridge Scheduler runs the
 * fleet-capacity function every minute (the capacity metric, and capacity
 * asked for creates still waiting and for the environment's headroom), and a
 * step policy on that metric gives back a host the fleet no longer needs. Failed deliveries are retried,
 * then parked in one encrypted, TLS-only dead-letter queue.
 */
import { Duration, Stack } from 'aws-cdk-lib';
import * as autoscaling from 'aws-cdk-lib/aws-autoscaling';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as events from 'aws-cdk-lib/aws-events';
import * as eventTargets from 'aws-cdk-lib/aws-events-targets';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as scheduler from 'aws-cdk-lib/aws-scheduler';
import * as schedulerTargets from 'aws-cdk-lib/aws-scheduler-targets';
import type * as sqs from 'aws-cdk-lib/aws-sqs';
import { NagSuppressions } from 'cdk-nag';
import { Construct } from 'constructs';
import { deadLetterQueue } from './reaper-schedule';
import { fleetMetricDimension, fleetMetricNamespace, fleetMetrics } from '../../lambdas/shared/fleet-metric';
import { scaleInThresholdPercent } from '../../lambdas/shared/fleet-scaling';

/** What the group's termination lifecycle action and the Spot warning are called on EventBridge (lambdas/shared/drain.ts reads the same). */
export const terminateLifecycleActionDetailType = 'EC2 Instance-terminate Lifecycle Action';
export const spotInterruptionDetailType = 'EC2 Spot Instance Interruption Warning';

/** The capacity metric is a per-minute measurement: the schedule runs at that rate. */
export const fleetCapacityRateMinutes = 1;

export interface FleetWiringProps {
  /** The environment's name, in resource names and the metric's dimensions. */
  readonly envName: string;
  /** The hosts' Auto Scaling group the scale-in policy is attached to. */
  readonly group: autoscaling.AutoScalingGroup;
  /** The group's fixed name (the rule matches it; the metric is published under it). */
  readonly groupName: string;
  /** The function that drains a host on a termination lifecycle action or a Spot interruption warning. */
  readonly fleetEvents: lambda.IFunction;
  /** The function the capacity schedule runs each minute (metric, headroom, scale-in protection). */
  readonly fleetCapacity: lambda.IFunction;
  /** Whether the group runs Spot hosts (the interruption-warning rule is only made then). */
  readonly spot: boolean;
  /** Capacity kept free ahead of demand, percent (hosts.headroomPercent): sets the scale-in threshold. */
  readonly headroomPercent: number;
  /** Minutes a host must have been spare before it goes (hosts.scaleInAfterMinutes). */
  readonly scaleInAfterMinutes: number;
  /** Delivery retries of the rules and the schedule before a dead letter. */
  readonly retryAttempts: number;
  /** How old an undelivered event or schedule run may grow before it goes to the dead-letter queue. */
  readonly maxEventAgeSeconds: number;
}

export class FleetWiring extends Construct {
  public readonly deadLetterQueue: sqs.Queue;
  public readonly lifecycleRule: events.Rule;
  /** Only with Spot hosts. */
  public readonly spotRule?: events.Rule;
  public readonly capacitySchedule: scheduler.Schedule;
  public readonly scaleIn: autoscaling.StepScalingPolicy;

  constructor(scope: Construct, id: string, props: FleetWiringProps) {
    super(scope, id);
    this.deadLetterQueue = deadLetterQueue(this, "the fleet rules' and schedule's");

    const delivery = {
      retryAttempts: props.retryAttempts,
      maxEventAge: Duration.seconds(props.maxEventAgeSeconds),
      deadLetterQueue: this.deadLetterQueue,
    };
    const toFleetEvents = new eventTargets.LambdaFunction(props.fleetEvents, delivery);
    this.lifecycleRule = new events.Rule(this, 'TerminateLifecycleAction', {
      description: `Ephemeral Sandbox ${props.envName}: a host of the group is terminating; it drains before it goes`,
      eventPattern: {
        source: ['aws.autoscaling'],
        detailType: [terminateLifecycleActionDetailType],
        detail: { AutoScalingGroupName: [props.groupName] },
      },
      targets: [toFleetEvents],
    });
    if (props.spot) {
      // The warning names an instance, not a group: fleet-events ignores instances that are not this fleet's hosts.
      this.spotRule = new events.Rule(this, 'SpotInterruptionWarning', {
        description: `Ephemeral Sandbox ${props.envName}: EC2 takes a Spot host back in two minutes; it drains now`,
        eventPattern: { source: ['aws.ec2'], detailType: [spotInterruptionDetailType] },
        targets: [toFleetEvents],
      });
    }

    const invokeRole = new iam.Role(this, 'InvokeRole', {
      assumedBy: new iam.ServicePrincipal('scheduler.amazonaws.com', {
        conditions: { StringEquals: { 'aws:SourceAccount': Stack.of(this).account } },
      }),
      description: `Ephemeral Sandbox ${props.envName}: EventBridge Scheduler invokes fleet-capacity`,
    });
    this.capacitySchedule = new scheduler.Schedule(this, 'CapacitySchedule', {
      description: `Ephemeral Sandbox ${props.envName}: measures the fleet, asks for hosts for creates still waiting`,
      schedule: scheduler.ScheduleExpression.rate(Duration.minutes(fleetCapacityRateMinutes)),
      timeWindow: scheduler.TimeWindow.off(),
      target: new schedulerTargets.LambdaInvoke(props.fleetCapacity, {
        input: scheduler.ScheduleTargetInput.fromObject({ source: 'ephemeral-sandbox.fleet-capacity-schedule' }),
        ...delivery,
        role: invokeRole,
      }),
    });
    NagSuppressions.addResourceSuppressions(
      invokeRole,
      [
        {
          id: 'AwsSolutions-IAM5',
          reason:
            "CDK's Lambda target grants invoke on the fleet-capacity function and its versions/aliases (<arn>:*); the schedule only ever invokes the function itself.",
          appliesTo: [{ regex: '/^Resource::<.*FleetCapacity.*\\.Arn>:\\*$/g' }],
        },
      ],
      true,
    );

    // Who moves the group: fleet-capacity (each minute) and create-sandbox raise the desired capacity themselves, to
    // exactly the hosts the waiting creates and the headroom need (fleet-scaling.ts hostsNeeded), at once, from zero,
    // never past the maximum; this step policy only ever gives back one host. Why no target tracking policy: it would
    // set the desired capacity too, from its own proportional rule and its own schedule, and the two writers would
    // overwrite each other; it also cannot launch the first host of a fleet at zero. Why a step on a dedicated
    // reading (the utilization with the largest empty host given back) rather than a threshold on the utilization:
    // whether a host may go without breaking the headroom depends on how many hosts there are, which a fixed
    // threshold on the utilization cannot express; the reading does, so the threshold is simply 100 - headroom.
    // The reading is noScaleInReading while creates wait or no host is empty, and hosts with sandboxes are protected
    // from scale-in by their daemon: the host that goes is an empty one. The group keeps minHosts regardless.
    const withoutOneHost = new cloudwatch.Metric({
      namespace: fleetMetricNamespace,
      metricName: fleetMetrics.utilizationWithoutOneHost.name,
      dimensionsMap: { [fleetMetricDimension]: props.groupName },
      // The highest reading of each period: one busy moment keeps the host.
      statistic: cloudwatch.Stats.MAXIMUM,
      period: Duration.minutes(fleetCapacityRateMinutes),
    });
    const threshold = scaleInThresholdPercent(props.headroomPercent);
    this.scaleIn = props.group.scaleOnMetric('ScaleIn', {
      metric: withoutOneHost,
      scalingSteps: [
        { upper: threshold, change: -1 },
        // No upper alarm: adding hosts is the capacity function's job.
        { lower: threshold, change: 0 },
      ],
      adjustmentType: autoscaling.AdjustmentType.CHANGE_IN_CAPACITY,
      evaluationPeriods: Math.ceil(props.scaleInAfterMinutes / fleetCapacityRateMinutes),
      datapointsToAlarm: Math.ceil(props.scaleInAfterMinutes / fleetCapacityRateMinutes),
    });
  }
}
