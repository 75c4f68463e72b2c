/**
 * The fleet's AWS wiring (issue 13): what triggers fleet-events and
 * fleet-capacity, the hooks and their names on both sides, the group name every
 * function and host reads, the Auto Scaling grants scoped to the group, the
 * group's bounds per environment, the headroom the functions keep and the
 * scale-in policy derived from it; the image parameter running hosts follow.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { backgroundHandlerNames, handlerNames } from '../../lambdas/shared/routes';
import { fleetMetricDimension, fleetMetricNamespace, fleetMetrics } from '../../lambdas/shared/fleet-metric';
import { pascal } from '../../lib/constructs/control-plane-functions';
import { spotInterruptionDetailType, terminateLifecycleActionDetailType } from '../../lib/constructs/fleet-wiring';
import { noScaleInReading } from '../../lambdas/shared/fleet-scaling';
import { handlerAccess } from '../../lib/constructs/handler-access';
import { drainHookName, launchHookName, sandboxImageParameterName } from '../../lib/constructs/host-fleet';
import { resolveEnvironment } from '../../lib/environment';
import { cdkJsonContext, onlyResource, render, resourcesOf, synth, type EnvName } from './fixture';

const allHandlers = [...handlerNames, ...backgroundHandlerNames];
const settings = (env: EnvName) => resolveEnvironment(env, cdkJsonContext().environments);
const asList = <T>(x: T | T[]): T[] => (Array.isArray(x) ? x : [x]);
const template = (env: EnvName) => synth(env).serviceTemplate;
const resources = (env: EnvName) => template(env).toJSON().Resources as Record<string, any>;

function functionId(env: EnvName, handler: string): string {
  const ids = resourcesOf(template(env), 'AWS::Lambda::Function')
    .map(([id]) => id)
    .filter((id) => new RegExp(`^Handlers${pascal(handler)}[0-9A-F]{8}$`).test(id));
  assert.equal(ids.length, 1, `one function for ${handler}`);
  return ids[0]!;
}

function statementsOfRole(env: EnvName, roleId: string): any[] {
  return resourcesOf(template(env), 'AWS::IAM::Policy')
    .filter(([, p]) => (p.Properties!.Roles as any[]).some((r) => r.Ref === roleId))
    .flatMap(([, p]) => p.Properties!.PolicyDocument.Statement as any[]);
}

/** `action on resource` for every Auto Scaling action a role holds. */
function autoScalingPairs(env: EnvName, roleId: string): string[] {
  const pairs = statementsOfRole(env, roleId).flatMap((s) =>
    asList(s.Action as string)
      .filter((a) => a.startsWith('autoscaling:'))
      .flatMap((a) => asList(s.Resource).map((r) => `${a} on ${render(r)}`)),
  );
  return [...new Set(pairs)].sort();
}

function hostEnv(env: EnvName): Record<string, string> {
  const data = onlyResource(template(env), 'AWS::EC2::LaunchTemplate').Properties!.LaunchTemplateData;
  const script = render(data.UserData);
  const envFile = /cat > \/etc\/ephemeral-sandbox\/host\.env <<'EPHEMERAL_SANDBOX_EOF'\n([\s\S]*?)\nEPHEMERAL_SANDBOX_EOF/.exec(script)![1]!;
  return Object.fromEntries(envFile.split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
}

function fleetQueueId(env: EnvName): string {
  const ids = resourcesOf(template(env), 'AWS::SQS::Queue')
    .map(([id]) => id)
    .filter((id) => /^FleetDeadLetterQueue[0-9A-F]{8}$/.test(id));
  assert.equal(ids.length, 1);
  return ids[0]!;
}

function ruleFor(env: EnvName, source: string): any | undefined {
  return resourcesOf(template(env), 'AWS::Events::Rule').find(([, r]) => asList(r.Properties!.EventPattern?.source).includes(source))?.[1].Properties;
}

for (const env of ['dev', 'prod'] as const) {
  const e = settings(env);
  const groupName = `EphemeralSandbox-${env}-Service-hosts`;
  const groupArn = `arn:\${AWS::Partition}:autoscaling:\${AWS::Region}:\${AWS::AccountId}:autoScalingGroup:*:autoScalingGroupName/${groupName}`;
  const group = () => onlyResource(template(env), 'AWS::AutoScaling::AutoScalingGroup').Properties!;

  describe(`fleet wiring (${env}): drain triggers`, () => {
    const assertDeliversToFleetEvents = (rule: any) => {
      assert.equal(rule.State, 'ENABLED');
      assert.equal(rule.EventBusName, undefined, 'the default bus, where AWS services put their events');
      assert.equal(rule.Targets.length, 1);
      const target = rule.Targets[0];
      assert.equal(render(target.Arn), `\${${functionId(env, 'fleet-events')}.Arn}`);
      assert.deepEqual(target.RetryPolicy, { MaximumRetryAttempts: e.reaper.retryAttempts, MaximumEventAgeInSeconds: e.reaper.maxEventAgeSeconds });
      assert.equal(render(target.DeadLetterConfig.Arn), `\${${fleetQueueId(env)}.Arn}`);
    };

    it("sends the group's termination lifecycle actions, and only its own, to fleet-events with retries and a DLQ", () => {
      const rule = ruleFor(env, 'aws.autoscaling');
      assert.ok(rule);
      assert.deepEqual(rule.EventPattern, {
        source: ['aws.autoscaling'],
        'detail-type': [terminateLifecycleActionDetailType],
        detail: { AutoScalingGroupName: [groupName] },
      });
      assert.equal(group().AutoScalingGroupName, groupName, 'the rule names the group by its real name');
      assertDeliversToFleetEvents(rule);
    });

    if (e.hosts.spot.enabled) {
      it('sends EC2 Spot interruption warnings to fleet-events with retries and a DLQ', () => {
        const rule = ruleFor(env, 'aws.ec2');
        assert.ok(rule);
        assert.deepEqual(rule.EventPattern, { source: ['aws.ec2'], 'detail-type': [spotInterruptionDetailType] });
        assertDeliversToFleetEvents(rule);
      });
    } else {
      it('has no Spot interruption rule (no Spot hosts)', () => {
        assert.equal(ruleFor(env, 'aws.ec2'), undefined);
      });
    }

    it('lets EventBridge invoke fleet-events, from these rules only', () => {
      const rules = resourcesOf(template(env), 'AWS::Events::Rule').map(([id]) => id);
      const permissions = resourcesOf(template(env), 'AWS::Lambda::Permission')
        .map(([, p]) => p.Properties!)
        .filter((p) => render(p.FunctionName) === `\${${functionId(env, 'fleet-events')}.Arn}`);
      assert.equal(permissions.length, rules.length);
      for (const p of permissions) {
        assert.equal(p.Principal, 'events.amazonaws.com');
        assert.ok(rules.some((id) => render(p.SourceArn) === `\${${id}.Arn}`));
      }
    });

    it('keeps the fleet DLQ encrypted and TLS-only, and takes dead letters from EventBridge', () => {
      const queueId = fleetQueueId(env);
      assert.equal(resources(env)[queueId].Properties.SqsManagedSseEnabled, true);
      const policy = resourcesOf(template(env), 'AWS::SQS::QueuePolicy').find(([, p]) => (p.Properties!.Queues as any[]).some((q) => q.Ref === queueId))![1]
        .Properties!;
      const statements = policy.PolicyDocument.Statement as any[];
      assert.ok(statements.some((s) => s.Effect === 'Deny' && s.Condition?.Bool?.['aws:SecureTransport'] === 'false'));
      assert.ok(statements.some((s) => s.Effect === 'Allow' && s.Principal?.Service === 'events.amazonaws.com' && s.Action === 'sqs:SendMessage'));
    });
  });

  describe(`fleet wiring (${env}): capacity schedule`, () => {
    it('runs fleet-capacity every minute through EventBridge Scheduler, with retries and the fleet DLQ', () => {
      const schedule = resourcesOf(template(env), 'AWS::Scheduler::Schedule')
        .map(([, s]) => s.Properties!)
        .find((s) => render(s.Target.Arn) === `\${${functionId(env, 'fleet-capacity')}.Arn}`);
      assert.ok(schedule);
      assert.equal(schedule.ScheduleExpression, 'rate(1 minute)');
      assert.deepEqual(schedule.FlexibleTimeWindow, { Mode: 'OFF' });
      assert.equal(schedule.State, 'ENABLED');
      assert.deepEqual(schedule.Target.RetryPolicy, { MaximumRetryAttempts: e.reaper.retryAttempts, MaximumEventAgeInSeconds: e.reaper.maxEventAgeSeconds });
      assert.equal(render(schedule.Target.DeadLetterConfig.Arn), `\${${fleetQueueId(env)}.Arn}`);
      const role = resources(env)[schedule.Target.RoleArn['Fn::GetAtt'][0]];
      assert.equal(role.Properties.AssumeRolePolicyDocument.Statement[0].Principal.Service, 'scheduler.amazonaws.com');
    });

    it('does not let Lambda retry a failed fleet-capacity run (the next tick does)', () => {
      const config = resourcesOf(template(env), 'AWS::Lambda::EventInvokeConfig').find(
        ([, c]) => c.Properties!.FunctionName.Ref === functionId(env, 'fleet-capacity'),
      );
      assert.ok(config);
      assert.equal(config[1].Properties!.MaximumRetryAttempts, 0);
    });
  });

  describe(`fleet wiring (${env}): lifecycle hooks`, () => {
    it("declares both hooks in the group's own specification (the first hosts pass them too), none as separate resources", () => {
      template(env).resourceCountIs('AWS::AutoScaling::LifecycleHook', 0);
      const hooks = group().LifecycleHookSpecificationList as any[];
      assert.deepEqual(
        hooks.find((h) => h.LifecycleTransition === 'autoscaling:EC2_INSTANCE_TERMINATING'),
        {
          LifecycleHookName: drainHookName,
          LifecycleTransition: 'autoscaling:EC2_INSTANCE_TERMINATING',
          HeartbeatTimeout: e.hosts.drainTimeoutSeconds,
          DefaultResult: 'CONTINUE',
        },
      );
      assert.deepEqual(
        hooks.find((h) => h.LifecycleTransition === 'autoscaling:EC2_INSTANCE_LAUNCHING'),
        {
          LifecycleHookName: launchHookName,
          LifecycleTransition: 'autoscaling:EC2_INSTANCE_LAUNCHING',
          HeartbeatTimeout: e.hosts.bootTimeoutSeconds,
          DefaultResult: 'ABANDON',
        },
      );
    });

    it('tells hosts the hooks and the group by name in host.env', () => {
      const values = hostEnv(env);
      assert.equal(values.DRAIN_LIFECYCLE_HOOK, drainHookName);
      assert.equal(values.LAUNCH_LIFECYCLE_HOOK, launchHookName);
      assert.equal(values.AUTO_SCALING_GROUP_NAME, groupName);
      assert.equal(values.DRAIN_TIMEOUT_SECONDS, String(e.hosts.drainTimeoutSeconds));
    });
  });

  describe(`fleet wiring (${env}): the sandbox image running hosts follow`, () => {
    const parameter = () => {
      const found = resourcesOf(template(env), 'AWS::SSM::Parameter');
      assert.equal(found.length, 1, 'one SSM parameter');
      return { id: found[0]![0], props: found[0]![1].Properties! };
    };

    it('writes the image URI the functions get as SANDBOX_IMAGE to /ephemeral-sandbox/<env>/sandbox-image', () => {
      const { props } = parameter();
      assert.equal(props.Name, sandboxImageParameterName(env));
      assert.equal(props.Name, `/ephemeral-sandbox/${env}/sandbox-image`);
      assert.equal(props.Type, 'String');
      for (const handler of allHandlers) {
        assert.equal(render(props.Value), render(resources(env)[functionId(env, handler)].Properties.Environment.Variables.SANDBOX_IMAGE), handler);
      }
      assert.match(render(props.Value), /\.dkr\.ecr\..+:[0-9a-f]{64}$/);
    });

    it('tells hosts the parameter in host.env (alongside the SANDBOX_IMAGE they launch with)', () => {
      const values = hostEnv(env);
      assert.equal(values.SANDBOX_IMAGE_PARAMETER, `\${${parameter().id}}`);
      assert.equal(values.SANDBOX_IMAGE, render(parameter().props.Value));
    });

    it('grants the host role ssm:GetParameter on that parameter only, and no other SSM parameter action', () => {
      const data = onlyResource(template(env), 'AWS::EC2::LaunchTemplate').Properties!.LaunchTemplateData;
      const roleId = resources(env)[data.IamInstanceProfile.Arn['Fn::GetAtt'][0]].Properties.Roles[0].Ref as string;
      const pairs = statementsOfRole(env, roleId).flatMap((st) =>
        asList(st.Action as string)
          .filter((a) => a.startsWith('ssm:'))
          .flatMap((a) => asList(st.Resource).map((r) => `${a} on ${render(r)}`)),
      );
      assert.deepEqual(pairs, [`ssm:GetParameter on arn:\${AWS::Partition}:ssm:\${AWS::Region}:\${AWS::AccountId}:parameter\${${parameter().id}}`]);
    });
  });

  describe(`fleet wiring (${env}): functions`, () => {
    it("gives every function the group's name and the drain timeout of the hook", () => {
      for (const handler of allHandlers) {
        const vars = resources(env)[functionId(env, handler)].Properties.Environment.Variables;
        assert.equal(vars.AUTO_SCALING_GROUP_NAME, groupName, handler);
        assert.equal(vars.DRAIN_TIMEOUT_SECONDS, String(e.hosts.drainTimeoutSeconds), handler);
      }
    });

    it("grants each function its Auto Scaling actions on the hosts' group only (DescribeAutoScalingGroups on *), and none to the others", () => {
      for (const handler of allHandlers) {
        const roleId = resources(env)[functionId(env, handler)].Properties.Role['Fn::GetAtt'][0] as string;
        const actions = handlerAccess[handler].autoScaling ?? [];
        const expected = actions.map((a) => (a === 'autoscaling:DescribeAutoScalingGroups' ? `${a} on *` : `${a} on ${groupArn}`)).sort();
        assert.deepEqual(autoScalingPairs(env, roleId), expected, handler);
      }
      assert.ok(handlerAccess['fleet-capacity'].autoScaling?.includes('autoscaling:SetDesiredCapacity'));
    });

    it("grants the host role its own group's protection and lifecycle actions only", () => {
      const data = onlyResource(template(env), 'AWS::EC2::LaunchTemplate').Properties!.LaunchTemplateData;
      const profile = resources(env)[data.IamInstanceProfile.Arn['Fn::GetAtt'][0]];
      const pairs = autoScalingPairs(env, profile.Properties.Roles[0].Ref);
      assert.deepEqual(
        pairs,
        ['autoscaling:CompleteLifecycleAction', 'autoscaling:RecordLifecycleActionHeartbeat', 'autoscaling:SetInstanceProtection'].map(
          (a) => `${a} on ${groupArn}`,
        ),
      );
    });
  });

  describe(`fleet wiring (${env}): the group's size`, () => {
    it('scales between minHosts and maxHosts from cdk.json, and never resets the current size on deploy', () => {
      assert.equal(group().MinSize, String(e.hosts.minHosts));
      assert.equal(group().MaxSize, String(e.hosts.maxHosts));
      assert.equal(group().DesiredCapacity, undefined);
      if (env === 'dev') assert.equal(e.hosts.minHosts, 0, 'dev rests at zero hosts');
    });

    it('leaves scale-in protection of new hosts to the host daemon', () => {
      assert.notEqual(group().NewInstancesProtectedFromScaleIn, true);
    });

    it('has no target tracking policy, and one step policy that gives back a host only when the hosts left keep the headroom, after scaleInAfterMinutes', () => {
      const policies = resourcesOf(template(env), 'AWS::AutoScaling::ScalingPolicy').map(([id, p]) => [id, p.Properties!] as const);
      assert.equal(policies.length, 1);
      const [policyId, policy] = policies[0]!;
      assert.equal(policy.PolicyType, 'StepScaling');
      assert.equal(policy.AdjustmentType, 'ChangeInCapacity');
      const adjustments = policy.StepAdjustments as any[];
      assert.ok(
        adjustments.every((s) => s.ScalingAdjustment <= 0),
        'never adds hosts (the capacity function does)',
      );
      assert.ok(adjustments.some((s) => s.ScalingAdjustment === -1));
      const alarms = resourcesOf(template(env), 'AWS::CloudWatch::Alarm')
        .map(([, a]) => a.Properties!)
        .filter((a) => (a.AlarmActions as any[] | undefined)?.some((x) => x.Ref === policyId));
      assert.equal(alarms.length, 1);
      const alarm = alarms[0]!;
      assert.equal(alarm.Namespace, fleetMetricNamespace);
      assert.equal(alarm.MetricName, fleetMetrics.utilizationWithoutOneHost.name);
      assert.equal(alarm.Statistic, 'Maximum', 'one busy reading in a minute keeps the host');
      assert.deepEqual(alarm.Dimensions, [{ Name: fleetMetricDimension, Value: groupName }]);
      assert.equal(alarm.ComparisonOperator, 'LessThanOrEqualToThreshold');
      assert.equal(alarm.Threshold, 100 - e.hosts.headroomPercent);
      assert.ok(alarm.Threshold < noScaleInReading, 'the reading while creates wait or every host is protected never alarms');
      assert.equal(alarm.Period, 60);
      assert.equal(alarm.Period * alarm.EvaluationPeriods, e.hosts.scaleInAfterMinutes * 60);
      assert.equal(alarm.DatapointsToAlarm, alarm.EvaluationPeriods);
    });

    it('tells every function the headroom to keep (FLEET_HEADROOM_PERCENT)', () => {
      for (const handler of allHandlers) {
        const vars = resources(env)[functionId(env, handler)].Properties.Environment.Variables;
        assert.equal(vars.FLEET_HEADROOM_PERCENT, String(e.hosts.headroomPercent), handler);
      }
    });

    it(env === 'dev' ? 'keeps no headroom in dev, so dev still rests at zero hosts' : 'keeps 20 % headroom in prod', () => {
      assert.equal(e.hosts.headroomPercent, env === 'dev' ? 0 : 20);
      assert.equal(e.hosts.scaleInAfterMinutes, 15);
    });
  });
}
