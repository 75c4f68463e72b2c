import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { backgroundHandlerNames, handlerNames, routes } from '../../lambdas/shared/routes';
import { tables } from '../../lambdas/shared/tables';
import { hostAgentCommand, pascal } from '../../lib/constructs/control-plane-functions';
import { handlerAccess, hostDispatchActions, storedHomeKeyPattern } from '../../lib/constructs/handler-access';
import { drainHookName, launchHookName } from '../../lib/constructs/host-fleet';
import { gatewayResponses, integrationTimeoutSeconds } from '../../lambdas/shared/gateway';
import { fileStagingPrefix, ssmCommandWorkersFor } from '../../contract/host-protocol';
import { resolveEnvironment } from '../../lib/environment';
import { repoRoot } from '../../lib/paths';
import { cdkJsonContext, onlyResource, render, resourcesOf, synth, type EnvName } from './fixture';

const allHandlers = [...handlerNames, ...backgroundHandlerNames];
const settings = (env: EnvName) => resolveEnvironment(env, cdkJsonContext().environments);

/** Logical id of the function built for `handler`. */
function functionId(env: EnvName, handler: string): string {
  const ids = resourcesOf(synth(env).serviceTemplate, 'AWS::Lambda::Function')
    .map(([id]) => id)
    .filter((id) => new RegExp(`^Handlers${pascal(handler)}[0-9A-F]{8}$`).test(id));
  assert.equal(ids.length, 1, `one function for ${handler}: ${ids.join(', ')}`);
  return ids[0]!;
}

/** Every policy statement attached to the role of `functionLogicalId`. */
function statementsOfRoleOf(env: EnvName, functionLogicalId: string): any[] {
  const t = synth(env).serviceTemplate;
  const fn = t.toJSON().Resources[functionLogicalId];
  const roleId = fn.Properties.Role['Fn::GetAtt'][0] as string;
  const role = t.toJSON().Resources[roleId];
  assert.equal(role.Properties.ManagedPolicyArns, undefined, `${functionLogicalId}: no managed policies`);
  return resourcesOf(t, 'AWS::IAM::Policy')
    .filter(([, p]) => (p.Properties!.Roles as any[]).some((r) => r.Ref === roleId))
    .flatMap(([, p]) => p.Properties!.PolicyDocument.Statement as any[]);
}

const asList = <T>(x: T | T[]): T[] => (Array.isArray(x) ? x : [x]);

/** Table definition id whose ARN a rendered resource names (via the stateful stack's output). */
function tableIdOf(resource: string): string {
  const m = new RegExp(`Tables(${tables.map((t) => t.id).join('|')})[0-9A-F]{8}Arn`).exec(resource);
  assert.ok(m, `resource names a project table: ${resource}`);
  return m[1]!;
}

/** Environment variables lambdas/shared/config.ts reads. */
function configEnvVars(): string[] {
  const source = readFileSync(join(repoRoot, 'lambdas/shared/config.ts'), 'utf8');
  const literal = [...source.matchAll(/\b(?:int|str)\('([A-Z0-9_]+)'/g)].map((m) => m[1]!);
  return [...literal, ...tables.map((t) => t.envVar)];
}

for (const env of ['dev', 'prod'] as const) {
  const e = settings(env);

  describe(`service stack (${env}): handlers`, () => {
    it('has one Node 22 arm64 ESM function per handler name', () => {
      const t = synth(env).serviceTemplate;
      for (const handler of allHandlers) {
        const fn = t.toJSON().Resources[functionId(env, handler)];
        assert.equal(fn.Properties.Runtime, 'nodejs22.x', handler);
        assert.deepEqual(fn.Properties.Architectures, ['arm64'], handler);
        // ESM output: NodejsFunction names the bundle index.mjs and the handler index.handler.
        assert.equal(fn.Properties.Handler, 'index.handler', handler);
        assert.equal(fn.Properties.MemorySize, e.handlers.memoryMb);
        assert.equal(fn.Properties.Timeout, handler === 'reaper' ? e.handlers.reaperTimeoutSeconds : e.handlers.apiTimeoutSeconds);
        assert.ok(fn.Properties.LoggingConfig?.LogGroup, `${handler} logs to its own log group`);
      }
      const handlerFunctions = resourcesOf(t, 'AWS::Lambda::Function').filter(([id]) => id.startsWith('Handlers'));
      assert.equal(handlerFunctions.length, allHandlers.length, 'no function beyond one per handler');
    });

    it('gives every function the configuration lambdas/shared/config.ts reads', () => {
      const t = synth(env).serviceTemplate;
      const expected = configEnvVars();
      assert.ok(expected.length >= 15);
      for (const handler of allHandlers) {
        const vars = t.toJSON().Resources[functionId(env, handler)].Properties.Environment.Variables as Record<string, unknown>;
        for (const name of expected) assert.ok(vars[name] !== undefined, `${handler}: ${name}`);
        assert.equal(vars.HOST_AGENT_COMMAND, hostAgentCommand);
        assert.equal(vars.NODE_OPTIONS, undefined, 'no Node flags: the bundles map their own stack traces, reading the map only when one is formatted');
        assert.equal(vars.MAX_TTL_SECONDS, String(e.limits.maxTtlSeconds));
        assert.match(render(vars.SANDBOX_IMAGE), /\.dkr\.ecr\..+cdk-hnb659fds-container-assets-.+:[0-9a-f]{64}$/);
        for (const definition of tables) assert.match(render(vars[definition.envVar]), new RegExp(`Tables${definition.id}[0-9A-F]{8}`));
        assert.match(render(vars.STORAGE_BUCKET), /StorageBucket/);
      }
    });

    it('builds SANDBOX_API_URL from the API id and stage name, not from the deployment (no dependency cycle)', () => {
      const t = synth(env).serviceTemplate;
      const url = render(t.toJSON().Resources[functionId(env, 'create-sandbox')].Properties.Environment.Variables.SANDBOX_API_URL);
      const apiId = resourcesOf(t, 'AWS::ApiGateway::RestApi')[0]![0];
      assert.equal(url, `https://\${${apiId}}.execute-api.\${AWS::Region}.\${AWS::URLSuffix}/${e.api.stageName}`);
    });

    it('grants each function exactly its DynamoDB actions on its own tables and indexes', () => {
      for (const handler of allHandlers) {
        const statements = statementsOfRoleOf(env, functionId(env, handler));
        const granted = new Map<string, { actions: Set<string>; resources: Set<string> }>();
        for (const s of statements) {
          const actions = asList(s.Action as string | string[]);
          if (!actions.some((a) => a.startsWith('dynamodb:'))) continue;
          assert.ok(
            actions.every((a) => a.startsWith('dynamodb:') && !a.includes('*')),
            `${handler}: ${actions}`,
          );
          for (const resource of asList(s.Resource).map(render)) {
            const id = tableIdOf(resource);
            const entry = granted.get(id) ?? { actions: new Set(), resources: new Set() };
            for (const a of actions) entry.actions.add(a);
            entry.resources.add(resource.replace(/^.*?Arn[0-9A-F]*\}/, '<table>'));
            granted.set(id, entry);
          }
        }
        const expected = handlerAccess[handler].tables;
        assert.deepEqual([...granted.keys()].sort(), expected.map((g) => g.table.id).sort(), `${handler}: tables`);
        for (const grant of expected) {
          const got = granted.get(grant.table.id)!;
          assert.deepEqual([...got.actions].sort(), [...grant.actions].sort(), `${handler}: actions on ${grant.table.id}`);
          const indexes = [...got.resources].filter((r) => r !== '<table>').sort();
          assert.deepEqual(indexes, (grant.indexes ?? []).map((i) => `<table>/index/${i}`).sort(), `${handler}: indexes of ${grant.table.id}`);
        }
      }
    });

    it("lets only functions that read commands' output read it, and only under commands/", () => {
      for (const handler of allHandlers) {
        const statements = statementsOfRoleOf(env, functionId(env, handler));
        const allReads = statements.filter((s) => asList(s.Action as string).some((a) => a === 's3:GetObject' || a === 's3:ListBucket'));
        // Reads of the files API's staging area and of stored homes have their own grants (stagesFiles, readsHomes), checked below.
        const area = (s: (typeof allReads)[number]) => render(s.Resource) + JSON.stringify(s.Condition ?? {});
        const staging = allReads.filter((s) => area(s).includes(fileStagingPrefix));
        const homes = allReads.filter((s) => area(s).includes(storedHomeKeyPattern));
        const reads = allReads.filter((s) => !staging.includes(s) && !homes.includes(s));
        assert.equal(staging.length > 0, handlerAccess[handler].stagesFiles === true, `${handler}: file staging reads only with stagesFiles`);
        assert.equal(homes.length > 0, handlerAccess[handler].readsHomes === true, `${handler}: stored home reads only with readsHomes`);
        for (const s of homes.filter((h) => asList(h.Action).includes('s3:ListBucket'))) {
          assert.deepEqual(s.Condition, { StringLike: { 's3:prefix': [storedHomeKeyPattern] } }, `${handler} lists stored homes only`);
        }
        if (!handlerAccess[handler].readsCommandOutput) {
          assert.deepEqual(reads, [], `${handler} reads no command output`);
          continue;
        }
        const get = reads.find((s) => asList(s.Action).includes('s3:GetObject'))!;
        assert.match(render(get.Resource), /StorageBucket.*Arn.*\}\/commands\/\*$/);
        const list = reads.find((s) => asList(s.Action).includes('s3:ListBucket'))!;
        assert.deepEqual(list.Condition, { StringLike: { 's3:prefix': ['commands/*'] } });
      }
    });

    it("lets only host-dispatching functions send commands, to AWS-RunShellScript on this environment's hosts", () => {
      for (const handler of allHandlers) {
        const statements = statementsOfRoleOf(env, functionId(env, handler));
        const other = statements.filter(
          (s) =>
            !asList(s.Action as string).some(
              // Tracing (every function) and event publishing are checked in observability.test.ts, Auto Scaling in fleet.test.ts.
              (a) =>
                a.startsWith('dynamodb:') ||
                a.startsWith('logs:') ||
                a.startsWith('xray:') ||
                a.startsWith('autoscaling:') ||
                a === 'events:PutEvents' ||
                a === 's3:GetObject' ||
                a === 's3:ListBucket',
            ),
        );
        if (!handlerAccess[handler].dispatchesToHosts) {
          assert.deepEqual(other, [], `${handler} has no SSM or S3 access`);
          continue;
        }
        const actions = new Set(other.flatMap((s) => asList(s.Action as string)));
        assert.deepEqual([...actions].sort(), [...hostDispatchActions].sort(), handler);

        const send = other.filter((s) => asList(s.Action).includes('ssm:SendCommand'));
        assert.equal(send.length, 2, `${handler}: one statement for the document, one for the instances`);
        const doc = send.find((s) => render(s.Resource).includes(':document/'))!;
        assert.equal(render(doc.Resource), 'arn:${AWS::Partition}:ssm:${AWS::Region}::document/AWS-RunShellScript');
        assert.equal(doc.Condition, undefined);
        const instances = send.find((s) => render(s.Resource).includes(':instance/'))!;
        assert.equal(render(instances.Resource), 'arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:instance/*');
        assert.deepEqual(instances.Condition, {
          StringEquals: { 'ssm:resourceTag/ephemeral-sandbox:role': 'host', 'ssm:resourceTag/ephemeral-sandbox:env': env },
        });

        const follow = other.find((s) => asList(s.Action).includes('ssm:GetCommandInvocation'))!;
        assert.deepEqual(asList(follow.Action).sort(), ['ssm:CancelCommand', 'ssm:GetCommandInvocation']);
        assert.equal(follow.Resource, '*');

        const staged = other.find((s) => asList(s.Action).includes('s3:PutObject'))!;
        assert.deepEqual(asList(staged.Action).sort(), ['s3:DeleteObject', 's3:PutObject']);
        assert.match(render(staged.Resource), /StorageBucket.*Arn.*\}\/host-requests\/\*$/);
      }
    });

    it('lets each function write only its own log group', () => {
      const t = synth(env).serviceTemplate;
      for (const handler of allHandlers) {
        const id = functionId(env, handler);
        const logGroup = t.toJSON().Resources[id].Properties.LoggingConfig.LogGroup.Ref as string;
        const logs = statementsOfRoleOf(env, id).filter((s) => asList(s.Action).some((a: string) => a.startsWith('logs:')));
        assert.equal(logs.length, 1);
        assert.deepEqual(asList(logs[0].Action).sort(), ['logs:CreateLogStream', 'logs:PutLogEvents']);
        assert.equal(render(logs[0].Resource), `\${${logGroup}.Arn}`);
        t.hasResourceProperties('AWS::Logs::LogGroup', { RetentionInDays: e.logRetentionDays });
      }
    });

    it('grants dynamodb:Scan to nobody and no action wildcards anywhere', () => {
      const t = synth(env).serviceTemplate;
      for (const [id, policy] of resourcesOf(t, 'AWS::IAM::Policy')) {
        for (const s of policy.Properties!.PolicyDocument.Statement as any[]) {
          for (const action of asList(s.Action as string)) {
            assert.notEqual(action, 'dynamodb:Scan', id);
            assert.ok(!action.endsWith(':*') && action !== '*', `${id}: ${action}`);
          }
        }
      }
    });
  });

  describe(`service stack (${env}): API`, () => {
    it('has one method per route of the shared route table', () => {
      const t = synth(env).serviceTemplate;
      t.resourceCountIs('AWS::ApiGateway::Method', routes.length);
      const res = t.toJSON().Resources as Record<string, any>;
      const pathOf = (id: string): string => {
        const r = res[id];
        if (!r) return '';
        return `${r.Properties.ParentId.Ref ? pathOf(r.Properties.ParentId.Ref) : ''}/${r.Properties.PathPart}`;
      };
      const methods = resourcesOf(t, 'AWS::ApiGateway::Method').map(([, m]) => ({
        method: m.Properties!.HttpMethod as string,
        path: m.Properties!.ResourceId.Ref ? pathOf(m.Properties!.ResourceId.Ref) : '/',
        m,
      }));
      for (const route of routes) {
        const found = methods.filter((x) => x.method === route.method && x.path === route.path);
        assert.equal(found.length, 1, `${route.method} ${route.path}`);
        const props = found[0]!.m.Properties!;
        assert.equal(props.Integration.Type, 'AWS_PROXY');
        assert.match(
          render(props.Integration.Uri),
          new RegExp(`Handlers${pascal(route.handler)}[0-9A-F]{8}\\.Arn`),
          `${route.method} ${route.path} -> ${route.handler}`,
        );
        if (route.auth === 'none') {
          assert.equal(props.AuthorizationType, 'NONE');
          assert.equal(props.ApiKeyRequired, undefined);
        } else {
          assert.equal(props.AuthorizationType, 'CUSTOM');
          assert.ok(props.AuthorizerId, `${route.path} uses the authorizer`);
          // Tenant calls go through the usage plan; sandbox-token signals (one sandbox each) do not.
          assert.equal(props.ApiKeyRequired, route.auth === 'api-key', `${route.method} ${route.path} usage-plan key`);
        }
        for (const p of route.path.match(/\{(\w+)\}/g) ?? []) {
          assert.equal(props.RequestParameters[`method.request.path.${p.slice(1, -1)}`], true);
        }
        assert.ok(props.RequestValidatorId);
      }
    });

    it('authorizes with a cached Lambda REQUEST authorizer on X-API-Key and takes usage keys from it', () => {
      const t = synth(env).serviceTemplate;
      const authorizer = onlyResource(t, 'AWS::ApiGateway::Authorizer').Properties!;
      assert.equal(authorizer.Type, 'REQUEST');
      assert.equal(authorizer.IdentitySource, 'method.request.header.X-API-Key');
      assert.equal(authorizer.AuthorizerResultTtlInSeconds, e.api.authorizerCacheSeconds);
      assert.match(render(authorizer.AuthorizerUri), /HandlersAuthorizer[0-9A-F]{8}\.Arn/);
      assert.equal(onlyResource(t, 'AWS::ApiGateway::RestApi').Properties!.ApiKeySourceType, 'AUTHORIZER');
    });

    it("has a usage plan with the environment's throttle and quota, holding an API Gateway key", () => {
      const t = synth(env).serviceTemplate;
      const plan = onlyResource(t, 'AWS::ApiGateway::UsagePlan').Properties!;
      assert.deepEqual(plan.Throttle, { RateLimit: e.api.throttleRateLimit, BurstLimit: e.api.throttleBurstLimit });
      assert.deepEqual(plan.Quota, { Limit: e.api.quotaPerDay, Period: 'DAY' });
      assert.equal(plan.ApiStages.length, 1);
      const key = resourcesOf(t, 'AWS::ApiGateway::ApiKey');
      assert.equal(key.length, 1);
      assert.equal(key[0]![1].Properties!.Value, undefined, 'API Gateway generates the key value');
      const planKey = onlyResource(t, 'AWS::ApiGateway::UsagePlanKey').Properties!;
      assert.deepEqual(planKey.KeyId, { Ref: key[0]![0] });
      assert.equal(planKey.KeyType, 'API_KEY');
    });

    it("answers gateway errors in the API's JSON error shape", () => {
      const t = synth(env).serviceTemplate;
      const responses = resourcesOf(t, 'AWS::ApiGateway::GatewayResponse').map(([, r]) => r.Properties!);
      assert.equal(responses.length, gatewayResponses.length);
      for (const type of [
        'UNAUTHORIZED',
        'ACCESS_DENIED',
        'THROTTLED',
        'QUOTA_EXCEEDED',
        'DEFAULT_4XX',
        'DEFAULT_5XX',
        'MISSING_AUTHENTICATION_TOKEN',
        'INTEGRATION_TIMEOUT',
      ]) {
        const r = responses.find((x) => x.ResponseType === type);
        assert.ok(r, type);
        const body = JSON.parse((r.ResponseTemplates['application/json'] as string).replace('$context.error.messageString', '"gateway says"'));
        assert.deepEqual(Object.keys(body), ['error']);
        assert.deepEqual(Object.keys(body.error), ['code', 'message']);
        assert.equal(typeof body.error.message, 'string');
        assert.equal(r.ResponseParameters['gatewayresponse.header.Content-Type'], "'application/json'");
      }
      const status = (type: string) => responses.find((x) => x.ResponseType === type)?.StatusCode;
      assert.equal(status('UNAUTHORIZED'), '401');
      assert.equal(status('THROTTLED'), '429');
      assert.equal(status('MISSING_AUTHENTICATION_TOKEN'), '404');
    });

    it('writes access logs and execution metrics, never request bodies', () => {
      const t = synth(env).serviceTemplate;
      const stage = onlyResource(t, 'AWS::ApiGateway::Stage').Properties!;
      assert.equal(stage.StageName, e.api.stageName);
      assert.match(render(stage.AccessLogSetting.DestinationArn), /:log-group:\$\{ApiAccessLogs/);
      const format = JSON.parse(stage.AccessLogSetting.Format);
      assert.equal(format.requestId, '$context.requestId');
      assert.equal(format.tenant, '$context.authorizer.tenant_id');
      assert.deepEqual(stage.MethodSettings, [
        { DataTraceEnabled: false, HttpMethod: '*', LoggingLevel: e.api.executionLogLevel, MetricsEnabled: true, ResourcePath: '/*' },
      ]);
      t.resourceCountIs('AWS::ApiGateway::Account', 1);
    });

    it('validates request parameters (and bodies against any model)', () => {
      const validator = onlyResource(synth(env).serviceTemplate, 'AWS::ApiGateway::RequestValidator').Properties!;
      assert.equal(validator.ValidateRequestParameters, true);
      assert.equal(validator.ValidateRequestBody, true);
    });
  });

  describe(`service stack (${env}): reaper schedule`, () => {
    it('invokes the reaper at the configured rate through EventBridge Scheduler, with retries and a DLQ', () => {
      const t = synth(env).serviceTemplate;
      const schedule = resourcesOf(t, 'AWS::Scheduler::Schedule').find(([id]) => id.startsWith('Reaper'))![1].Properties!;
      assert.equal(schedule.ScheduleExpression, e.reaper.rateMinutes === 1 ? 'rate(1 minute)' : `rate(${e.reaper.rateMinutes} minutes)`);
      assert.deepEqual(schedule.FlexibleTimeWindow, { Mode: 'OFF' });
      assert.equal(schedule.State, 'ENABLED');
      assert.match(render(schedule.Target.Arn), /^\$\{HandlersReaper[0-9A-F]{8}\.Arn\}$/);
      assert.deepEqual(schedule.Target.RetryPolicy, { MaximumRetryAttempts: e.reaper.retryAttempts, MaximumEventAgeInSeconds: e.reaper.maxEventAgeSeconds });
      const [queueId, queue] = resourcesOf(t, 'AWS::SQS::Queue').find(([id]) => id.startsWith('Reaper'))!;
      assert.equal(render(schedule.Target.DeadLetterConfig.Arn), `\${${queueId}.Arn}`);
      assert.equal(queue.Properties!.SqsManagedSseEnabled, true);
      const queuePolicy = resourcesOf(t, 'AWS::SQS::QueuePolicy').find(([, p]) => (p.Properties!.Queues as any[]).some((q) => q.Ref === queueId))![1]
        .Properties!;
      assert.ok(
        (queuePolicy.PolicyDocument.Statement as any[]).some((s) => s.Effect === 'Deny' && s.Condition?.Bool?.['aws:SecureTransport'] === 'false'),
        'DLQ is TLS-only',
      );
      const role = t.toJSON().Resources[schedule.Target.RoleArn['Fn::GetAtt'][0]];
      assert.equal(role.Properties.AssumeRolePolicyDocument.Statement[0].Principal.Service, 'scheduler.amazonaws.com');
    });

    it('does not let Lambda retry a failed reaper run (the next tick does)', () => {
      const config = resourcesOf(synth(env).serviceTemplate, 'AWS::Lambda::EventInvokeConfig').find(
        ([, c]) => c.Properties!.FunctionName.Ref === functionId(env, 'reaper'),
      );
      assert.ok(config);
      assert.equal(config[1].Properties!.MaximumRetryAttempts, 0);
    });
  });

  describe(`service stack (${env}): sandbox hosts`, () => {
    const launchData = () => onlyResource(synth(env).serviceTemplate, 'AWS::EC2::LaunchTemplate').Properties!.LaunchTemplateData;
    const group = () => onlyResource(synth(env).serviceTemplate, 'AWS::AutoScaling::AutoScalingGroup').Properties!;
    const userData = () => render(launchData().UserData);

    it('requires IMDSv2 with a hop limit of 1', () => {
      assert.deepEqual(launchData().MetadataOptions, {
        HttpEndpoint: 'enabled',
        HttpPutResponseHopLimit: 1,
        HttpTokens: 'required',
        InstanceMetadataTags: 'disabled',
      });
    });

    it('boots Amazon Linux 2023 for the instance architecture, from its SSM parameter', () => {
      const param = launchData().ImageId.Ref as string;
      const parameter = synth(env).serviceTemplate.toJSON().Parameters[param];
      assert.equal(parameter.Default, '/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-arm64');
      assert.equal(launchData().InstanceType, e.hosts.instanceTypes[0]);
    });

    it('encrypts the root and sandbox state volumes and sizes them from context', () => {
      assert.deepEqual(launchData().BlockDeviceMappings, [
        { DeviceName: '/dev/xvda', Ebs: { DeleteOnTermination: true, Encrypted: true, VolumeSize: e.hosts.rootVolumeGiB, VolumeType: 'gp3' } },
        { DeviceName: '/dev/sdb', Ebs: { DeleteOnTermination: true, Encrypted: true, VolumeSize: e.hosts.stateVolumeGiB, VolumeType: 'gp3' } },
      ]);
    });

    it('formats the state volume ext4 once and mounts it by label where sandbox homes live', () => {
      const script = userData();
      assert.match(script, /blkid -L sbx-state >\/dev\/null 2>&1 \|\| mkfs\.ext4 -q -L sbx-state -m 0 "\$STATE_DEV"/);
      assert.match(script, /LABEL=sbx-state \/var\/lib\/ephemeral-sandbox ext4 defaults,noatime,nofail 0 2/);
      assert.match(script, /mountpoint -q \/var\/lib\/ephemeral-sandbox \|\| mount \/var\/lib\/ephemeral-sandbox/);
      // Before anything writes there: the mount comes ahead of the host-agent's install.
      assert.ok(script.indexOf('mount /var/lib/ephemeral-sandbox') < script.indexOf('host-agent-daemon.mjs'));
    });

    it('runs hosts with AmazonSSMManagedInstanceCore and tags SSM matches', () => {
      const t = synth(env).serviceTemplate;
      const profile = t.toJSON().Resources[launchData().IamInstanceProfile.Arn['Fn::GetAtt'][0]];
      const role = t.toJSON().Resources[profile.Properties.Roles[0].Ref];
      assert.deepEqual(role.Properties.ManagedPolicyArns.map(render), ['arn:${AWS::Partition}:iam::aws:policy/AmazonSSMManagedInstanceCore']);
      const tags = Object.fromEntries((group().Tags as any[]).map((tag) => [tag.Key, tag]));
      assert.deepEqual(tags['ephemeral-sandbox:role'], { Key: 'ephemeral-sandbox:role', Value: 'host', PropagateAtLaunch: true });
      assert.deepEqual(tags['ephemeral-sandbox:env'], { Key: 'ephemeral-sandbox:env', Value: env, PropagateAtLaunch: true });
    });

    it('scales between the configured minimum and maximum', () => {
      assert.equal(group().MinSize, String(e.hosts.minHosts));
      assert.equal(group().MaxSize, String(e.hosts.maxHosts));
      assert.equal(group().DesiredCapacity, undefined, 'deploys never reset the current size');
    });

    if (env === 'dev') {
      it('uses Spot with price-capacity-optimized over the listed instance types', () => {
        const policy = group().MixedInstancesPolicy;
        assert.equal(policy.InstancesDistribution.SpotAllocationStrategy, 'price-capacity-optimized');
        assert.equal(policy.InstancesDistribution.OnDemandBaseCapacity, e.hosts.spot.onDemandBaseCapacity);
        assert.deepEqual(
          policy.LaunchTemplate.Overrides,
          e.hosts.instanceTypes.map((t) => ({ InstanceType: t })),
        );
        assert.equal(group().CapacityRebalance, true);
        synth(env).serviceTemplate.resourceCountIs('AWS::AutoScaling::WarmPool', 0);
      });
    } else {
      it('keeps a warm pool of stopped hosts, on demand', () => {
        assert.equal(group().MixedInstancesPolicy, undefined);
        const pool = onlyResource(synth(env).serviceTemplate, 'AWS::AutoScaling::WarmPool').Properties!;
        assert.equal(pool.MinSize, e.hosts.warmPoolMinSize);
        assert.equal(pool.PoolState, 'Stopped');
        assert.equal(pool.MaxGroupPreparedCapacity, e.hosts.minHosts + e.hosts.warmPoolMinSize);
      });
    }

    it('holds new hosts until setup completes and terminating hosts while they drain', () => {
      const hooks = group().LifecycleHookSpecificationList as any[];
      const drain = hooks.find((h) => h.LifecycleTransition === 'autoscaling:EC2_INSTANCE_TERMINATING')!;
      assert.deepEqual(
        { name: drain.LifecycleHookName, timeout: drain.HeartbeatTimeout, result: drain.DefaultResult },
        { name: drainHookName, timeout: e.hosts.drainTimeoutSeconds, result: 'CONTINUE' },
      );
      const launch = hooks.find((h) => h.LifecycleTransition === 'autoscaling:EC2_INSTANCE_LAUNCHING')!;
      assert.deepEqual(
        { name: launch.LifecycleHookName, timeout: launch.HeartbeatTimeout, result: launch.DefaultResult },
        { name: launchHookName, timeout: e.hosts.bootTimeoutSeconds, result: 'ABANDON' },
      );
      assert.match(userData(), /--lifecycle-hook-name "\$LAUNCH_LIFECYCLE_HOOK" --instance-id "\$HOST_ID" --lifecycle-action-result "\$result"/);
    });

    // The lifecycle-ready script exactly as user data writes it, run by bash with stand-ins for what only an EC2 host
    // has: the AWS CLI (records its arguments), IMDS (curl: unreachable, as off EC2) and the host-agent (passes or fails).
    const runReadyScript = (agentExit: number, target?: string) => {
      const script = /cat > \/opt\/ephemeral-sandbox\/bin\/lifecycle-ready <<'EPHEMERAL_SANDBOX_EOF'\n([\s\S]*?)\nEPHEMERAL_SANDBOX_EOF/.exec(userData())?.[1];
      assert.ok(script, 'user data writes bin/lifecycle-ready');
      const dir = mkdtempSync(join(tmpdir(), 'lifecycle-ready-'));
      try {
        const stub = (name: string, body: string) => writeFileSync(join(dir, name), `#!/bin/bash\n${body}\n`, { mode: 0o755 });
        stub('aws', `printf '%s\\n' "$*" >> ${dir}/aws.log`);
        stub('curl', target ? `case "$*" in *target-lifecycle-state*) echo '${target}' ;; *) echo token ;; esac` : 'exit 7');
        stub('host-agent', `printf '%s\\n' "$*" >> ${dir}/agent.log; echo '{"ok":${agentExit === 0}}'; exit ${agentExit}`);
        writeFileSync(
          join(dir, 'host.env'),
          'AWS_REGION=eu-west-1\nAUTO_SCALING_GROUP_NAME=hosts\nLAUNCH_LIFECYCLE_HOOK=sandbox-host-launching\nHOST_ID=i-0123456789abcdef0\n',
        );
        const rewritten = script
          .replaceAll('/opt/ephemeral-sandbox/bin/host-agent', join(dir, 'host-agent'))
          .replaceAll('/etc/ephemeral-sandbox/host.env', join(dir, 'host.env'));
        const out = spawnSync('bash', ['-c', rewritten], { env: { PATH: `${dir}:${process.env.PATH}` }, encoding: 'utf8' });
        const read = (f: string) => (existsSync(join(dir, f)) ? readFileSync(join(dir, f), 'utf8').trim() : '');
        return { status: out.status, stdout: out.stdout, aws: read('aws.log'), agent: read('agent.log') };
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    };

    it('completes the launch hook with CONTINUE only when the launch-ready check passes (stand-in AWS CLI, IMDS and host-agent)', () => {
      const complete = (result: string) =>
        `autoscaling complete-lifecycle-action --region eu-west-1 --auto-scaling-group-name hosts --lifecycle-hook-name sandbox-host-launching --instance-id i-0123456789abcdef0 --lifecycle-action-result ${result}`;
      const passed = runReadyScript(0);
      assert.deepEqual([passed.status, passed.agent, passed.aws], [0, 'launch-ready', complete('CONTINUE')]);
      const failed = runReadyScript(1);
      assert.deepEqual([failed.status, failed.agent, failed.aws], [0, 'launch-ready', complete('ABANDON')]);
      assert.match(failed.stdout, /launch-ready check failed, abandoning this host/);
      // A host going into the warm pool: its daemon is not started yet, so the check leaves that step out.
      const warmed = runReadyScript(0, 'Warmed:Stopped');
      assert.deepEqual([warmed.agent, warmed.aws], ['launch-ready --warm-pool', complete('CONTINUE')]);
    });

    it('installs Docker, Node 22, mountpoint-s3, the host-agent and the sandbox image in user data', () => {
      const script = userData();
      assert.ok(script.startsWith('#!/bin/bash\nset -euo pipefail\n'));
      assert.match(script, /dnf install -y docker nodejs22 amazon-ecr-credential-helper conntrack-tools e2fsprogs util-linux/);
      assert.match(script, /dnf install -y https:\/\/s3\.amazonaws\.com\/mountpoint-s3-release\/latest\/arm64\/mount-s3\.rpm/);
      assert.match(script, /aws s3 cp .* s3:\/\/cdk-hnb659fds-assets-\$\{AWS::AccountId\}-\$\{AWS::Region\}\/\S+ \/opt\/ephemeral-sandbox\/host-agent\.mjs/);
      assert.match(script, /aws s3 cp .* \/opt\/ephemeral-sandbox\/host-agent-daemon\.mjs/);
      assert.match(script, /aws s3 cp .* \/opt\/ephemeral-sandbox\/libexec\/host-agent\n/);
      assert.match(script, /docker pull \$\{AWS::AccountId\}\.dkr\.ecr\.\$\{AWS::Region\}\.\$\{AWS::URLSuffix\}\/cdk-hnb659fds-container-assets-/);
      assert.match(script, new RegExp(`cat > ${hostAgentCommand} <<`));
      // HOST_AGENT_COMMAND runs the project's wrapper (host-agent/bin/host-agent) with Node 22 and the CLI bundle.
      assert.match(
        script,
        /NODE_BINARY=\/usr\/bin\/node-22 HOST_AGENT_BUNDLE=\/opt\/ephemeral-sandbox\/host-agent\.mjs exec \/opt\/ephemeral-sandbox\/libexec\/host-agent "\$@"/,
      );
      assert.match(script, /ExecStart=\/usr\/bin\/node-22 --enable-source-maps \/opt\/ephemeral-sandbox\/host-agent-daemon\.mjs/);
      assert.match(script, /systemctl enable ephemeral-sandbox-host\.service ephemeral-sandbox-ready\.service/);
    });

    it("raises the SSM agent's limit on commands at once to what the host needs (the local SSM endpoint emulates the same number)", () => {
      const script = userData();
      const config = /cat > \/etc\/amazon\/ssm\/amazon-ssm-agent\.json <<'EPHEMERAL_SANDBOX_EOF'\n([\s\S]*?)\nEPHEMERAL_SANDBOX_EOF/.exec(script)![1]!;
      assert.equal(JSON.parse(config).Mds.CommandWorkersLimit, ssmCommandWorkersFor(e.hosts.sandboxSlotsPerHost));
      assert.ok(JSON.parse(config).Mds.CommandWorkersLimit > 5);
      assert.ok(script.indexOf('systemctl restart amazon-ssm-agent') > script.indexOf('amazon-ssm-agent.json'));
    });

    it("gives every API method API Gateway's 29 s integration timeout (the local gateway cuts at the same)", () => {
      const methods = resourcesOf(synth(env).serviceTemplate, 'AWS::ApiGateway::Method').filter(([, m]) => m.Properties!.Integration);
      assert.ok(methods.length >= routes.length);
      for (const [, m] of methods) assert.equal(m.Properties!.Integration.TimeoutInMillis, integrationTimeoutSeconds * 1000);
    });

    it('writes the host settings the host daemon reads into /etc/ephemeral-sandbox/host.env', () => {
      const script = userData();
      const envFile = /cat > \/etc\/ephemeral-sandbox\/host\.env <<'EPHEMERAL_SANDBOX_EOF'\n([\s\S]*?)\nEPHEMERAL_SANDBOX_EOF/.exec(script)![1]!;
      const values = Object.fromEntries(envFile.split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
      assert.equal(values.HOST_SLOTS, String(e.hosts.sandboxSlotsPerHost));
      assert.equal(values.WARM_CONTAINERS_PER_HOST, String(e.hosts.warmContainersPerHost));
      assert.equal(values.COLD_MOUNT_DRIVER, 'mountpoint-s3');
      assert.equal(values.AWS_REGION, '${AWS::Region}');
      assert.match(values.SANDBOXES_TABLE!, /TablesSandboxes/);
      assert.match(values.HOSTS_TABLE!, /TablesHosts/);
      assert.match(values.STORAGE_BUCKET!, /StorageBucket/);
      assert.match(values.SANDBOX_IMAGE!, /cdk-hnb659fds-container-assets/);
      // The daemon runs control-plane code: it gets the functions' configuration too.
      for (const name of configEnvVars()) assert.ok(values[name] !== undefined, `host.env ${name}`);
      assert.equal(values.DEFAULT_DISK_MB, String(e.limits.defaultDiskMb));
      assert.equal(values.MAX_DISK_MB, String(e.limits.maxDiskMb));
      // The daemon ships its lines (logs and EMF metrics) to the hosts' own log group, kept as long as the functions' logs.
      assert.match(values.HOST_LOG_GROUP!, /^\$\{HostLogs[0-9A-F]{8}\}$/);
      synth(env).serviceTemplate.hasResourceProperties('AWS::Logs::LogGroup', {
        LogGroupName: `/ephemeral-sandbox/${e.name}/hosts`,
        RetentionInDays: e.logRetentionDays,
      });
      assert.match(script, /echo "HOST_ID=\$INSTANCE_ID" >> \/etc\/ephemeral-sandbox\/host\.env/);
      assert.match(script, /INSTANCE_ID=\$\(imds instance-id\)/);
      assert.match(script, /X-aws-ec2-metadata-token/);
    });

    it('gives hosts the storage, table, image, lifecycle, event and log access they use, and nothing else', () => {
      const t = synth(env).serviceTemplate;
      const profile = t.toJSON().Resources[launchData().IamInstanceProfile.Arn['Fn::GetAtt'][0]];
      const roleId = profile.Properties.Roles[0].Ref;
      const statements = resourcesOf(t, 'AWS::IAM::Policy')
        .filter(([, p]) => (p.Properties!.Roles as any[]).some((r) => r.Ref === roleId))
        .flatMap(([, p]) => p.Properties!.PolicyDocument.Statement as any[]);
      // Every (action, resource) pair, whatever statements policy minimization merged.
      const pairs = new Set(statements.flatMap((s) => asList(s.Action as string).flatMap((a) => asList(s.Resource).map((r) => `${a} on ${render(r)}`))));
      const simplify = (pair: string) =>
        pair
          .replace(/\$\{output:PublishOutputFnGetAtt(Tables[A-Za-z]+?|StorageBucket)[0-9A-F]{8}Arn[0-9A-F]{8}\}/g, '<$1>')
          .replace(/cdk-hnb659fds-assets-\$\{AWS::AccountId\}-\$\{AWS::Region\}\/[0-9a-f]{64}\S*/, '<asset object>')
          .replace(/ on arn:.*:repository\/cdk-hnb659fds-container-assets-.*$/, ' on <image repository>')
          .replace(/\$\{EventsBus[0-9A-F]{8}\.Arn\}/, '<event bus>')
          .replace(/\$\{HostLogs[0-9A-F]{8}\.Arn\}/, '<host log group>')
          .replace(/ on arn:\$\{AWS::Partition\}:ssm:\$\{AWS::Region\}:\$\{AWS::AccountId\}:parameter.*$/, ' on <sandbox image parameter>');
      const got = [...pairs].map(simplify);
      const asg = `arn:\${AWS::Partition}:autoscaling:\${AWS::Region}:\${AWS::AccountId}:autoScalingGroup:*:autoScalingGroupName/EphemeralSandbox-${env}-Service-hosts`;
      const expected = [
        's3:ListBucket on <StorageBucket>',
        ...['s3:AbortMultipartUpload', 's3:DeleteObject', 's3:GetObject', 's3:PutObject'].map((a) => `${a} on <StorageBucket>/*`),
        'dynamodb:GetItem on <TablesHosts>',
        'dynamodb:UpdateItem on <TablesHosts>',
        'dynamodb:GetItem on <TablesSandboxes>',
        'dynamodb:UpdateItem on <TablesSandboxes>',
        'dynamodb:Query on <TablesSandboxes>/index/by-host',
        // Creates that waited for capacity, claimed by a host with room.
        'dynamodb:Query on <TablesSandboxes>/index/by-waiting',
        'dynamodb:UpdateItem on <TablesTenants>',
        // Commands: the host daemon runs them (claims, follows, ends them; delivers and drops their stdin).
        ...['dynamodb:DeleteItem', 'dynamodb:GetItem', 'dynamodb:Query', 'dynamodb:UpdateItem'].map((a) => `${a} on <TablesCommands>`),
        'dynamodb:BatchWriteItem on <TablesEgressLog>',
        ...['ecr:BatchCheckLayerAvailability', 'ecr:BatchGetImage', 'ecr:GetDownloadUrlForLayer'].map((a) => `${a} on <image repository>`),
        'ecr:GetAuthorizationToken on *',
        // The fleet's current image reference, read at each image pass (a deploy's new image reaches running hosts).
        'ssm:GetParameter on <sandbox image parameter>',
        's3:GetObject on arn:${AWS::Partition}:s3:::<asset object>',
        `autoscaling:CompleteLifecycleAction on ${asg}`,
        `autoscaling:RecordLifecycleActionHeartbeat on ${asg}`,
        // Hosts with sandboxes protect themselves from scale-in.
        `autoscaling:SetInstanceProtection on ${asg}`,
        // Lifecycle events (the host records outcomes and commands' ends) and its lines to its log group.
        'events:PutEvents on <event bus>',
        'logs:CreateLogStream on <host log group>',
        'logs:PutLogEvents on <host log group>',
      ];
      assert.deepEqual([...new Set(got)].sort(), expected.sort());
    });
  });

  describe(`service stack (${env}): network`, () => {
    it(env === 'dev' ? 'puts hosts in public subnets with public IPs and no NAT' : 'puts hosts in private subnets behind NAT gateways', () => {
      const t = synth(env).serviceTemplate;
      t.resourceCountIs('AWS::EC2::NatGateway', e.network.natGateways);
      const subnets = resourcesOf(t, 'AWS::EC2::Subnet');
      const hostSubnets = (group: any[]) => group.map((s: any) => s.Ref).sort();
      const asg = onlyResource(t, 'AWS::AutoScaling::AutoScalingGroup').Properties!;
      const publicIds = subnets
        .filter(([, s]) => s.Properties!.MapPublicIpOnLaunch === true)
        .map(([id]) => id)
        .sort();
      if (env === 'dev') {
        assert.deepEqual(hostSubnets(asg.VPCZoneIdentifier), publicIds);
        assert.equal(onlyResource(t, 'AWS::EC2::LaunchTemplate').Properties!.LaunchTemplateData.NetworkInterfaces[0].AssociatePublicIpAddress, true);
      } else {
        assert.equal(hostSubnets(asg.VPCZoneIdentifier).filter((id) => publicIds.includes(id)).length, 0);
        assert.equal(onlyResource(t, 'AWS::EC2::LaunchTemplate').Properties!.LaunchTemplateData.NetworkInterfaces, undefined);
      }
    });

    it('admits no inbound traffic anywhere (no SSH, no ingress rules)', () => {
      const t = synth(env).serviceTemplate;
      t.resourceCountIs('AWS::EC2::SecurityGroupIngress', 0);
      for (const [id, sg] of resourcesOf(t, 'AWS::EC2::SecurityGroup')) {
        assert.equal(sg.Properties!.SecurityGroupIngress, undefined, id);
        assert.deepEqual(sg.Properties!.SecurityGroupEgress, [{ CidrIp: '0.0.0.0/0', Description: 'Allow all outbound traffic by default', IpProtocol: '-1' }]);
      }
      assert.doesNotMatch(JSON.stringify(t.toJSON()), /"FromPort":\s*22\b|"ToPort":\s*22\b/);
      assert.equal(launchDataKeyName(env), undefined, 'no SSH key pair');
    });

    it('logs VPC flows and keeps S3/DynamoDB traffic on gateway endpoints', () => {
      const t = synth(env).serviceTemplate;
      assert.equal(onlyResource(t, 'AWS::EC2::FlowLog').Properties!.TrafficType, e.network.flowLogTrafficType);
      const endpoints = resourcesOf(t, 'AWS::EC2::VPCEndpoint').map(([, ep]) => render(ep.Properties!.ServiceName));
      assert.deepEqual(endpoints.sort(), ['com.amazonaws.${AWS::Region}.dynamodb', 'com.amazonaws.${AWS::Region}.s3']);
    });
  });

  describe(`service stack (${env}): outputs and protection`, () => {
    it('outputs the API URL and the host group name', () => {
      const s = synth(env);
      const outputs = s.serviceTemplate.toJSON().Outputs as Record<string, { Value: unknown }>;
      assert.match(
        render(outputs.ApiUrl!.Value),
        /^https:\/\/\$\{Api\w+\}\.execute-api\.\$\{AWS::Region\}\.\$\{AWS::URLSuffix\}\/\$\{ApiDeploymentStage\w+\}\/$/,
      );
      assert.equal(render(outputs.HostAutoScalingGroupName!.Value), `\${${resourcesOf(s.serviceTemplate, 'AWS::AutoScaling::AutoScalingGroup')[0]![0]}}`);
      assert.ok(outputs.UsagePlanId && outputs.DefaultUsageKeyId && outputs.SandboxImageUri);
    });

    it('is named per environment, depends on the stateful stack, and is termination-protected in prod', () => {
      const s = synth(env);
      assert.equal(s.service.stackName, `EphemeralSandbox-${env}-Service`);
      assert.ok(s.service.dependencies.includes(s.stateful));
      assert.equal(s.service.terminationProtection, env === 'prod');
    });
  });
}

function launchDataKeyName(env: EnvName): unknown {
  return onlyResource(synth(env).serviceTemplate, 'AWS::EC2::LaunchTemplate').Properties!.LaunchTemplateData.KeyName;
}
