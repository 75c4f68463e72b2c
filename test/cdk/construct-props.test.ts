/**
 * Constructs alone, in a bare stack, with only the props they require (issue 18): what each
 * `@default` of a narrowed props interface means in the template. The stacks pass every
 * value from cdk.json, so the full synth in the other files never leans on these defaults.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { App, RemovalPolicy, Stack } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import * as apigw from 'aws-cdk-lib/aws-apigateway';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecrAssets from 'aws-cdk-lib/aws-ecr-assets';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import type { Route } from '../../lambdas/shared/routes';
import { tables } from '../../lambdas/shared/tables';
import { HostAgentAssets } from '../../lib/constructs/host-agent-assets';
import { HostFleet, type HostFleetProps } from '../../lib/constructs/host-fleet';
import { SandboxNetwork } from '../../lib/constructs/network';
import { hostLogGroup, PlatformAlarms, SandboxEventBus, type AlarmThresholds } from '../../lib/constructs/observability';
import { SandboxApi } from '../../lib/constructs/sandbox-api';
import { ProjectTables } from '../../lib/constructs/tables';
import { sandboxImageDir } from '../../lib/paths';
import { onlyResource, render, resourcesOf } from './fixture';

/** A bare stack; bundling skipped (asset placeholders), as in the fixture. */
function bareStack(): Stack {
  return new Stack(new App({ context: { 'aws:cdk:bundling-stacks': [] } }), 'Bare');
}

const fn = (stack: Stack, name: string) => lambda.Function.fromFunctionName(stack, `Fn${name}`, name);

describe('SandboxApi with only its required props', () => {
  const stack = bareStack();
  const api = new SandboxApi(stack, 'Api', {
    envName: 'solo',
    stageName: 'v1',
    throttleRateLimit: 5,
    throttleBurstLimit: 10,
    accessLogRetention: logs.RetentionDays.ONE_WEEK,
    removalPolicy: RemovalPolicy.DESTROY,
  });
  const routes: Route[] = [{ method: 'GET', path: '/sandboxes', handler: 'list-sandboxes', auth: 'api-key' }];
  api.addRoutes(routes, (h) => fn(stack, h), fn(stack, 'authorizer'));
  const template = Template.fromStack(stack);

  it('sets no quota on the usage plan', () => {
    const plan = onlyResource(template, 'AWS::ApiGateway::UsagePlan').Properties!;
    assert.equal(plan.Quota, undefined);
    assert.deepEqual(plan.Throttle, { BurstLimit: 10, RateLimit: 5 });
  });

  it('turns execution logging off and makes no account logging role', () => {
    const stage = onlyResource(template, 'AWS::ApiGateway::Stage').Properties!;
    assert.equal(stage.StageName, 'v1');
    assert.equal(stage.MethodSettings[0].LoggingLevel, 'OFF');
    template.resourceCountIs('AWS::ApiGateway::Account', 0);
  });

  it('does not cache the authorizer answer', () => {
    assert.equal(onlyResource(template, 'AWS::ApiGateway::Authorizer').Properties!.AuthorizerResultTtlInSeconds, 0);
  });
});

describe('PlatformAlarms with only its required props', () => {
  const thresholds: AlarmThresholds = {
    api5xxRatePercent: 1,
    apiP99LatencyMs: 1000,
    noCapacityAnswers: 1,
    hostsLost: 1,
    reaperErrors: 1,
    lambdaErrorsAndThrottles: 1,
    dynamoDbThrottles: 1,
    ssmThrottles: 1,
    eventsNotDelivered: 1,
  };
  const alarmsIn = (alarmEmail?: string) => {
    const stack = bareStack();
    const reaper = fn(stack, 'reaper');
    const restApi = new apigw.RestApi(stack, 'Api');
    restApi.root.addMethod('GET', new apigw.MockIntegration());
    new PlatformAlarms(stack, 'Alarms', {
      envName: 'solo',
      thresholds,
      ...(alarmEmail ? { alarmEmail } : {}),
      removalPolicy: RemovalPolicy.DESTROY,
      restApi,
      functions: new Map([['reaper', reaper]]),
      reaper,
      reaperDeadLetterQueue: new sqs.Queue(stack, 'ReaperDlq'),
      fleetDeadLetterQueue: new sqs.Queue(stack, 'FleetDlq'),
      tables: [{ definition: { id: 'Sandboxes' }, table: dynamodb.Table.fromTableName(stack, 'Table', 'sandboxes') }],
    });
    return Template.fromStack(stack);
  };

  it('has the topic only, no subscription', () => {
    const template = alarmsIn();
    template.resourceCountIs('AWS::SNS::Topic', 1);
    template.resourceCountIs('AWS::SNS::Subscription', 0);
  });

  it('mails the address it is given', () => {
    alarmsIn('oncall@example.com').hasResourceProperties('AWS::SNS::Subscription', { Protocol: 'email', Endpoint: 'oncall@example.com' });
  });
});

describe('HostFleet with only its required props', () => {
  const fleetIn = (extra: Partial<HostFleetProps> = {}) => {
    const stack = bareStack();
    const network = new SandboxNetwork(stack, 'Network', {
      natGateways: 0,
      maxAzs: 1,
      flowLogTrafficType: 'REJECT',
      logRetention: logs.RetentionDays.ONE_DAY,
      removalPolicy: RemovalPolicy.DESTROY,
    });
    new HostFleet(stack, 'Hosts', {
      envName: 'solo',
      instanceTypes: ['t4g.medium', 'm7g.medium'],
      architecture: ec2.InstanceArchitecture.ARM_64,
      minHosts: 0,
      maxHosts: 2,
      sandboxSlotsPerHost: 2,
      rootVolumeGiB: 30,
      stateVolumeGiB: 10,
      bootTimeoutSeconds: 600,
      drainTimeoutSeconds: 300,
      network,
      tables: new ProjectTables(stack, 'Tables', { definitions: tables, removalPolicy: RemovalPolicy.DESTROY, deletionProtection: false }),
      bucket: s3.Bucket.fromBucketName(stack, 'Bucket', 'storage'),
      sandboxImage: new ecrAssets.DockerImageAsset(stack, 'Image', { directory: sandboxImageDir }),
      hostAgent: new HostAgentAssets(stack, 'HostAgent'),
      controlPlaneEnv: {},
      events: new SandboxEventBus(stack, 'Events', { envName: 'solo', archiveRetentionDays: 1 }),
      daemonLogGroup: hostLogGroup(stack, 'HostLogs', { envName: 'solo', retentionDays: 1, removalPolicy: RemovalPolicy.DESTROY }),
      ...extra,
    });
    return Template.fromStack(stack);
  };
  const template = fleetIn();
  const group = () => onlyResource(template, 'AWS::AutoScaling::AutoScalingGroup').Properties!;

  it('runs On-Demand hosts of the first instance type: no mixed instances, no capacity rebalancing', () => {
    assert.equal(group().MixedInstancesPolicy, undefined);
    assert.equal(group().CapacityRebalance, undefined);
    assert.ok(group().LaunchTemplate);
    assert.equal(onlyResource(template, 'AWS::EC2::LaunchTemplate').Properties!.LaunchTemplateData.InstanceType, 't4g.medium');
  });

  it('keeps no warm pool and no warm containers', () => {
    template.resourceCountIs('AWS::AutoScaling::WarmPool', 0);
    const userData = render(onlyResource(template, 'AWS::EC2::LaunchTemplate').Properties!.LaunchTemplateData.UserData);
    assert.match(userData, /\nWARM_CONTAINERS_PER_HOST=0\n/);
  });

  it('with spot, every instance type is an override with the On-Demand amounts given', () => {
    const spotGroup = onlyResource(
      fleetIn({ spot: { onDemandBaseCapacity: 1, onDemandPercentageAboveBaseCapacity: 25 } }),
      'AWS::AutoScaling::AutoScalingGroup',
    ).Properties!;
    assert.equal(spotGroup.CapacityRebalance, true);
    const policy = spotGroup.MixedInstancesPolicy;
    assert.deepEqual(
      policy.LaunchTemplate.Overrides.map((o: { InstanceType: string }) => o.InstanceType),
      ['t4g.medium', 'm7g.medium'],
    );
    assert.equal(policy.InstancesDistribution.OnDemandBaseCapacity, 1);
    assert.equal(policy.InstancesDistribution.OnDemandPercentageAboveBaseCapacity, 25);
  });

  it('with warmPoolMinSize, keeps that many stopped hosts', () => {
    const warm = fleetIn({ instanceTypes: ['t4g.medium'], warmPoolMinSize: 1 });
    assert.equal(resourcesOf(warm, 'AWS::AutoScaling::WarmPool').length, 1);
    warm.hasResourceProperties('AWS::AutoScaling::WarmPool', { MinSize: 1, MaxGroupPreparedCapacity: 1, PoolState: 'Stopped' });
  });
});
