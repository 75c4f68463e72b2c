/**
 * EventBridge Scheduler runs the reaper at a fixed rate. Failed deliveries are
 * retried, then parked in an encrypted, TLS-only dead-letter queue.
 */
import { Duration, Stack } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as scheduler from 'aws-cdk-lib/aws-scheduler';
import * as targets from 'aws-cdk-lib/aws-scheduler-targets';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { NagSuppressions } from 'cdk-nag';
import { Construct } from 'constructs';

export interface ReaperScheduleProps {
  /** The function the schedule invokes. */
  readonly reaper: lambda.IFunction;
  /** Minutes between runs. */
  readonly rateMinutes: number;
  /** Delivery retries before a run goes to the dead-letter queue. */
  readonly retryAttempts: number;
  /** How old an undelivered run may grow before it goes to the dead-letter queue. */
  readonly maxEventAgeSeconds: number;
  /** The environment's name, in the schedule's name. */
  readonly envName: string;
}

/**
 * An encrypted, TLS-only queue (`DeadLetterQueue` in `scope`) that keeps what
 * a rule or schedule could not deliver for 14 days; `whose` names its owner
 * in cdk-nag's record of why it has no dead-letter queue of its own.
 */
export function deadLetterQueue(scope: Construct, whose: string): sqs.Queue {
  const queue = new sqs.Queue(scope, 'DeadLetterQueue', {
    encryption: sqs.QueueEncryption.SQS_MANAGED,
    enforceSSL: true,
    retentionPeriod: Duration.days(14),
  });
  NagSuppressions.addResourceSuppressions(queue, [
    { id: 'AwsSolutions-SQS3', reason: `This queue is ${whose} dead-letter queue; a queue behind it would never be read.` },
  ]);
  return queue;
}

export class ReaperSchedule extends Construct {
  public readonly schedule: scheduler.Schedule;
  public readonly deadLetterQueue: sqs.Queue;

  constructor(scope: Construct, id: string, props: ReaperScheduleProps) {
    super(scope, id);
    this.deadLetterQueue = deadLetterQueue(this, "the reaper schedule's");

    // Our own role (instead of the one the target would make at stack level) so it lives, and is reviewed, here.
    const invokeRole = new iam.Role(this, 'InvokeRole', {
      assumedBy: new iam.ServicePrincipal('scheduler.amazonaws.com', {
        conditions: { StringEquals: { 'aws:SourceAccount': Stack.of(this).account } },
      }),
      description: `Ephemeral Sandbox ${props.envName}: EventBridge Scheduler invokes the reaper`,
    });
    this.schedule = new scheduler.Schedule(this, 'Schedule', {
      description: `Ephemeral Sandbox ${props.envName}: ends expired and idle sandboxes, marks lost hosts`,
      schedule: scheduler.ScheduleExpression.rate(Duration.minutes(props.rateMinutes)),
      timeWindow: scheduler.TimeWindow.off(),
      target: new targets.LambdaInvoke(props.reaper, {
        input: scheduler.ScheduleTargetInput.fromObject({ source: 'ephemeral-sandbox.reaper-schedule' }),
        retryAttempts: props.retryAttempts,
        maxEventAge: Duration.seconds(props.maxEventAgeSeconds),
        deadLetterQueue: this.deadLetterQueue,
        role: invokeRole,
      }),
    });
    // After the schedule: the target adds the role's policy while binding.
    NagSuppressions.addResourceSuppressions(
      invokeRole,
      [
        {
          id: 'AwsSolutions-IAM5',
          reason:
            "CDK's Lambda target grants invoke on the reaper function and its versions/aliases (<arn>:*); the schedule only ever invokes the function itself.",
          appliesTo: [{ regex: '/^Resource::<.*Reaper.*\\.Arn>:\\*$/g' }],
        },
      ],
      true,
    );
  }
}
