/**
 * Issue 16 in the templates: the event bus and who may put on it, tracing and
 * the Powertools settings on every function, each alarm with its metric and
 * threshold (from cdk.json) and its SNS action, the email subscription when
 * one is set, and the dashboard's widgets.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Match } from 'aws-cdk-lib/assertions';
import { backgroundHandlerNames, handlerNames } from '../../lambdas/shared/routes';
import { tables } from '../../lambdas/shared/tables';
import { handlerAccess } from '../../lib/constructs/handler-access';
import { resolveEnvironment } from '../../lib/environment';
import { cdkJsonContext, onlyResource, render, resourcesOf, synth, type EnvName } from './fixture';

const settings = (env: EnvName) => resolveEnvironment(env, cdkJsonContext().environments);
const allHandlers = [...handlerNames, ...backgroundHandlerNames];

/** Alarms of the service stack by the id given in lib/constructs/observability.ts (`Observability<Id>...`). */
function alarms(env: EnvName): Map<string, Record<string, any>> {
  const out = new Map<string, Record<string, any>>();
  for (const [logicalId, r] of resourcesOf(synth(env).serviceTemplate, 'AWS::CloudWatch::Alarm')) out.set(logicalId, r.Properties!);
  return out;
}

function alarm(env: EnvName, idPrefix: string): Record<string, any> {
  const found = [...alarms(env)].filter(([logicalId]) => logicalId.startsWith(`Observability${idPrefix.replace(/[^A-Za-z0-9]/g, '')}`));
  assert.equal(found.length, 1, `expected one alarm ${idPrefix}, found ${found.map(([k]) => k).join(', ') || 'none'}`);
  return found[0]![1];
}

describe('observability (CDK)', () => {
  for (const env of ['dev', 'prod'] as const) {
    it(`${env}: one event bus per environment, archived, named after it`, () => {
      const t = synth(env).serviceTemplate;
      t.hasResourceProperties('AWS::Events::EventBus', { Name: `ephemeral-sandbox-${env}` });
      t.hasResourceProperties('AWS::Events::Archive', { EventPattern: { source: ['ephemeral-sandbox'] }, RetentionDays: settings(env).logRetentionDays });
    });
  }

  it('grants events:PutEvents on the bus to exactly the functions whose bundles publish, and to the hosts', () => {
    const { serviceTemplate } = synth('dev');
    const policies = resourcesOf(serviceTemplate, 'AWS::IAM::Policy');
    const putters = new Set<string>();
    for (const [, p] of policies) {
      const statements = p.Properties!.PolicyDocument.Statement as { Action: string | string[]; Resource: unknown }[];
      const puts = statements.filter((s) => [s.Action].flat().includes('events:PutEvents'));
      if (puts.length === 0) continue;
      for (const s of puts) assert.match(render(s.Resource), /EventsBus/, 'PutEvents only on the platform bus');
      for (const role of p.Properties!.Roles as { Ref: string }[]) putters.add(role.Ref);
    }
    const fnRoles = Object.fromEntries(
      allHandlers.map((h) => {
        const fn = resourcesOf(serviceTemplate, 'AWS::Lambda::Function').find(([, r]) => String(r.Properties!.Description).endsWith(`: ${h}`));
        assert.ok(fn, h);
        return [h, (fn![1].Properties!.Role as { 'Fn::GetAtt': string[] })['Fn::GetAtt'][0]!];
      }),
    );
    for (const h of allHandlers) {
      assert.equal(putters.has(fnRoles[h]!), handlerAccess[h].publishesEvents === true, `${h}: events:PutEvents granted iff its bundle publishes`);
    }
    assert.ok(
      [...putters].some((r) => r.startsWith('HostsRole')),
      'the host role may put events',
    );
  });

  it('turns tracing on in every function and on the API stage', () => {
    const t = synth('dev').serviceTemplate;
    const fns = resourcesOf(t, 'AWS::Lambda::Function').filter(([, r]) => String(r.Properties!.Description ?? '').startsWith('Ephemeral Sandbox dev: '));
    assert.equal(fns.length, allHandlers.length);
    for (const [id, r] of fns) assert.deepEqual(r.Properties!.TracingConfig, { Mode: 'Active' }, id);
    t.hasResourceProperties('AWS::ApiGateway::Stage', { TracingEnabled: true });
  });

  it('gives every function the Powertools settings: service, the environment namespace, the bus, no events or responses in logs and traces', () => {
    const t = synth('prod').serviceTemplate;
    const fns = resourcesOf(t, 'AWS::Lambda::Function').filter(([, r]) => String(r.Properties!.Description ?? '').startsWith('Ephemeral Sandbox prod: '));
    for (const [id, r] of fns) {
      const vars = r.Properties!.Environment.Variables as Record<string, unknown>;
      assert.equal(vars.POWERTOOLS_SERVICE_NAME, 'ephemeral-sandbox', id);
      assert.equal(vars.POWERTOOLS_METRICS_NAMESPACE, 'EphemeralSandbox/prod', id);
      assert.equal(vars.POWERTOOLS_LOGGER_LOG_EVENT, 'false', id);
      assert.equal(vars.POWERTOOLS_TRACER_CAPTURE_RESPONSE, 'false', id);
      assert.match(render(vars.EVENT_BUS_NAME), /EventsBus/, id);
    }
  });

  for (const env of ['dev', 'prod'] as const) {
    it(`${env}: each alarm watches its metric at the threshold from cdk.json and notifies the alarm topic`, () => {
      const a = settings(env).observability.alarms;
      const metricOf = (p: Record<string, any>) => ({
        name: p.MetricName,
        namespace: p.Namespace,
        dims: [...p.Dimensions].sort((x: any, y: any) => x.Name.localeCompare(y.Name)),
      });
      const expect = (id: string, threshold: number) => {
        const p = alarm(env, id);
        assert.equal(p.Threshold, threshold, `${id} threshold`);
        assert.equal(p.ComparisonOperator, 'GreaterThanOrEqualToThreshold', id);
        assert.equal(p.Period ?? p.Metrics?.find((m: any) => m.MetricStat)?.MetricStat.Period, 300, `${id} period`);
        assert.match(render(p.AlarmActions), /ObservabilityAlarmTopic/, `${id} alarm action`);
        return p;
      };
      const rate = expect('Api5xxRate', a.api5xxRatePercent);
      assert.ok(rate.Metrics.some((m: any) => m.MetricStat?.Metric.MetricName === '5XXError'));
      assert.ok(rate.Metrics.some((m: any) => m.Expression === '100 * errors / MAX([requests, 1])'));
      const latency = expect('ApiLatencyP99', a.apiP99LatencyMs);
      assert.equal(latency.Metrics[0].MetricStat.Metric.MetricName, 'Latency');
      assert.equal(latency.Metrics[0].MetricStat.Stat, 'p99');
      const noCapacity = expect('NoCapacity', a.noCapacityAnswers);
      assert.deepEqual(metricOf(noCapacity), {
        name: 'ApiErrors',
        namespace: `EphemeralSandbox/${env}`,
        dims: [
          { Name: 'Code', Value: 'no_capacity' },
          { Name: 'service', Value: 'ephemeral-sandbox' },
        ],
      });
      assert.equal(expect('HostsLost', a.hostsLost).MetricName, 'HostsLost');
      const reaper = expect('ReaperErrors', a.reaperErrors);
      assert.equal(reaper.MetricName, 'Errors');
      assert.equal(reaper.Namespace, 'AWS/Lambda');
      const dlq = expect('ReaperDeadLetters', 1);
      assert.equal(dlq.MetricName, 'ApproximateNumberOfMessagesVisible');
      assert.equal(expect('FleetDeadLetters', 1).MetricName, 'ApproximateNumberOfMessagesVisible');
      assert.equal(expect('SsmThrottles', a.ssmThrottles).MetricName, 'SsmThrottled');
      assert.equal(expect('EventsNotDelivered', a.eventsNotDelivered).MetricName, 'EventsNotDelivered');
      for (const h of allHandlers) {
        const p = expect(`Lambda${h}`, a.lambdaErrorsAndThrottles);
        const names = p.Metrics.filter((m: any) => m.MetricStat)
          .map((m: any) => m.MetricStat.Metric.MetricName)
          .sort();
        assert.deepEqual(names, ['Errors', 'Throttles'], h);
      }
      for (const def of tables) {
        const p = expect(`DynamoDbThrottles${def.id}`, a.dynamoDbThrottles);
        const names = p.Metrics.filter((m: any) => m.MetricStat)
          .map((m: any) => m.MetricStat.Metric.MetricName)
          .sort();
        assert.deepEqual(names, ['ReadThrottleEvents', 'WriteThrottleEvents'], def.id);
      }
      // Plus the scale-in policy's own alarm (fleet.test.ts), which acts on the group and notifies nobody.
      assert.equal(alarms(env).size, 9 + allHandlers.length + tables.length + 1, 'no alarm unaccounted for');
    });
  }

  it('encrypts the alarm topic with a key CloudWatch may use, and mails it when cdk.json names an address', () => {
    const plain = synth('dev').serviceTemplate;
    plain.resourceCountIs('AWS::SNS::Subscription', 0);
    plain.hasResourceProperties('AWS::SNS::Topic', { KmsMasterKeyId: Match.anyValue() });
    plain.hasResourceProperties('AWS::KMS::Key', {
      KeyPolicy: { Statement: Match.arrayWith([Match.objectLike({ Principal: { Service: 'cloudwatch.amazonaws.com' } })]) },
    });
    const environments = structuredClone(cdkJsonContext().environments) as Record<string, any>;
    environments.dev.observability.alarmEmail = 'oncall@example.com';
    const mailed = synth('dev', { context: { environments } }).serviceTemplate;
    mailed.hasResourceProperties('AWS::SNS::Subscription', { Protocol: 'email', Endpoint: 'oncall@example.com' });
  });

  it('refuses an alarm email that is not an address, naming the field', () => {
    const environments = structuredClone(cdkJsonContext().environments) as Record<string, any>;
    environments.dev.observability.alarmEmail = 'not-an-address';
    assert.throws(() => resolveEnvironment('dev', environments), /observability\.alarmEmail: must be an email address/);
  });

  it('draws one dashboard per environment with every widget the README names', () => {
    const dashboard = onlyResource(synth('prod').serviceTemplate, 'AWS::CloudWatch::Dashboard');
    assert.equal(dashboard.Properties!.DashboardName, 'ephemeral-sandbox-prod');
    const body = render(dashboard.Properties!.DashboardBody);
    const titles = [...body.matchAll(/"title":"([^"]+)"/g)].map((m) => m[1]);
    assert.deepEqual(titles, [
      'Alarms',
      'API requests and errors',
      'API latency (ms)',
      'Errors answered, by code',
      'Creates, by outcome and start',
      'Create latency p99 (ms)',
      'Exec and command start latency p99 (ms)',
      'Commands finished, by status',
      'Command duration p99 (ms)',
      'Host dispatch, by verb and outcome',
      'Reaper',
      'Reaper runs and dead letters',
      'Capacity: hosts and slots',
      'Hosts: CPU allocated and free',
      'Hosts: memory allocated and free (MB)',
      'Hosts: sandboxes, pending creates, commands',
      'Hot sync bytes and duration p99',
      'Egress refusals, by kind',
      'Events not delivered',
      'Lambda errors',
      'Lambda throttles',
      'Lambda duration p99 (ms)',
      'DynamoDB throttle events',
    ]);
    // Custom metrics by dimension come from SEARCH over the environment's namespace.
    assert.match(body, /SEARCH\('\{EphemeralSandbox\/prod,service,Code\} MetricName=\\"ApiErrors\\"', 'Sum', 300\)/);
    assert.match(body, /SEARCH\('\{EphemeralSandbox\/prod,service,HostId\} MetricName=\\"HostCpuFree\\"', 'Minimum', 300\)/);
  });
});
