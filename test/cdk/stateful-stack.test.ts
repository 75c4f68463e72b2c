import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Match } from 'aws-cdk-lib/assertions';
import { commandsTable, sandboxesTable, tables, type TableDefinition } from '../../lambdas/shared/tables';
import { stagedRequestPrefix } from '../../contract/host-protocol';
import { render, resourcesOf, synth, type EnvName } from './fixture';

/** The table built from `definition`: the one with its partition and sort keys. */
function tableFor(env: EnvName, definition: TableDefinition) {
  const wanted = [
    { AttributeName: definition.partitionKey.name, KeyType: 'HASH' },
    ...(definition.sortKey ? [{ AttributeName: definition.sortKey.name, KeyType: 'RANGE' }] : []),
  ];
  const found = resourcesOf(synth(env).statefulTemplate, 'AWS::DynamoDB::Table').filter(
    ([, t]) => JSON.stringify(t.Properties!.KeySchema) === JSON.stringify(wanted),
  );
  assert.equal(found.length, 1, `one table keyed on ${JSON.stringify(wanted)}`);
  return found[0]![1];
}

function storageBucket(env: EnvName) {
  const buckets = resourcesOf(synth(env).statefulTemplate, 'AWS::S3::Bucket').filter(([, b]) => b.Properties?.LoggingConfiguration);
  assert.equal(buckets.length, 1, 'one bucket logs to the access log bucket');
  return buckets[0]!;
}

for (const env of ['dev', 'prod'] as const) {
  describe(`stateful stack (${env})`, () => {
    it('is named per environment and holds only tables and buckets (plus the dev auto-delete helper)', () => {
      const s = synth(env);
      assert.equal(s.stateful.stackName, `EphemeralSandbox-${env}-Stateful`);
      const types = new Set(Object.values(s.statefulTemplate.toJSON().Resources as Record<string, { Type: string }>).map((r) => r.Type));
      const allowed = ['AWS::DynamoDB::Table', 'AWS::S3::Bucket', 'AWS::S3::BucketPolicy'];
      if (env === 'dev') allowed.push('Custom::S3AutoDeleteObjects', 'AWS::IAM::Role', 'AWS::Lambda::Function');
      assert.deepEqual(
        [...types].filter((t) => !allowed.includes(t)),
        [],
      );
    });

    it('creates one on-demand, point-in-time-recoverable table per shared definition', () => {
      const t = synth(env).statefulTemplate;
      t.resourceCountIs('AWS::DynamoDB::Table', tables.length);
      for (const definition of tables) {
        const table = tableFor(env, definition);
        assert.equal(table.Properties!.BillingMode, 'PAY_PER_REQUEST');
        assert.deepEqual(table.Properties!.PointInTimeRecoverySpecification, { PointInTimeRecoveryEnabled: true });
        assert.equal(table.Properties!.ProvisionedThroughput, undefined);
      }
    });

    it('creates exactly the indexes the code queries, with their keys and projections', () => {
      for (const definition of tables) {
        const table = tableFor(env, definition);
        const gsis = (table.Properties!.GlobalSecondaryIndexes ?? []) as any[];
        assert.deepEqual(gsis.map((g) => g.IndexName).sort(), definition.indexes.map((i) => i.name).sort(), `${definition.id} indexes`);
        for (const index of definition.indexes) {
          const gsi = gsis.find((g) => g.IndexName === index.name);
          const keys = [{ AttributeName: index.partitionKey.name, KeyType: 'HASH' }];
          if (index.sortKey) keys.push({ AttributeName: index.sortKey.name, KeyType: 'RANGE' });
          assert.deepEqual(gsi.KeySchema, keys, `${definition.id}.${index.name} keys`);
          if (typeof index.projection === 'string') assert.deepEqual(gsi.Projection, { ProjectionType: index.projection });
          else assert.deepEqual(gsi.Projection, { ProjectionType: 'INCLUDE', NonKeyAttributes: [...index.projection] });
          assert.equal(gsi.ProvisionedThroughput, undefined);
        }
        const attributeTypes = Object.fromEntries((table.Properties!.AttributeDefinitions as any[]).map((a) => [a.AttributeName, a.AttributeType]));
        for (const key of [definition.partitionKey, definition.sortKey, ...definition.indexes.flatMap((i) => [i.partitionKey, i.sortKey])]) {
          if (key) assert.equal(attributeTypes[key.name], key.type, `${definition.id}: ${key.name} type`);
        }
      }
    });

    it('gives the reaper a sparse deadline index to query (no Scan)', () => {
      const sandboxes = tableFor(env, sandboxesTable);
      const byDeadline = (sandboxes.Properties!.GlobalSecondaryIndexes as any[]).find((g) => g.IndexName === 'by-deadline');
      assert.deepEqual(byDeadline.KeySchema, [
        { AttributeName: 'reap_shard', KeyType: 'HASH' },
        { AttributeName: 'deadline_at', KeyType: 'RANGE' },
      ]);
    });

    it('turns on TTL housekeeping where a definition names the attribute', () => {
      for (const definition of tables) {
        const table = tableFor(env, definition);
        assert.deepEqual(
          table.Properties!.TimeToLiveSpecification,
          definition.timeToLiveAttribute ? { AttributeName: definition.timeToLiveAttribute, Enabled: true } : undefined,
        );
      }
    });

    it(env === 'prod' ? 'retains and deletion-protects data, with termination protection' : 'deletes data with the stack', () => {
      const s = synth(env);
      const expected = env === 'prod' ? 'Retain' : 'Delete';
      for (const [id, r] of [...resourcesOf(s.statefulTemplate, 'AWS::DynamoDB::Table'), ...resourcesOf(s.statefulTemplate, 'AWS::S3::Bucket')]) {
        assert.equal(r.DeletionPolicy, expected, `${id} DeletionPolicy`);
        assert.equal(r.UpdateReplacePolicy, expected, `${id} UpdateReplacePolicy`);
      }
      for (const [, table] of resourcesOf(s.statefulTemplate, 'AWS::DynamoDB::Table')) {
        assert.equal(table.Properties!.DeletionProtectionEnabled, env === 'prod');
      }
      assert.equal(s.stateful.terminationProtection, env === 'prod');
      s.statefulTemplate.resourceCountIs('Custom::S3AutoDeleteObjects', env === 'prod' ? 0 : 2);
    });

    it('encrypts the storage bucket, blocks public access and enforces bucket ownership', () => {
      const [, bucket] = storageBucket(env);
      assert.deepEqual(bucket.Properties!.BucketEncryption, {
        ServerSideEncryptionConfiguration: [{ ServerSideEncryptionByDefault: { SSEAlgorithm: 'AES256' } }],
      });
      assert.deepEqual(bucket.Properties!.PublicAccessBlockConfiguration, {
        BlockPublicAcls: true,
        BlockPublicPolicy: true,
        IgnorePublicAcls: true,
        RestrictPublicBuckets: true,
      });
      assert.deepEqual(bucket.Properties!.OwnershipControls, { Rules: [{ ObjectOwnership: 'BucketOwnerEnforced' }] });
      assert.equal(bucket.Properties!.VersioningConfiguration?.Status, env === 'prod' ? 'Enabled' : undefined);
    });

    it('denies every request to the storage bucket that is not TLS 1.2+', () => {
      const [bucketId] = storageBucket(env);
      const policies = resourcesOf(synth(env).statefulTemplate, 'AWS::S3::BucketPolicy').filter(([, p]) => render(p.Properties!.Bucket) === `\${${bucketId}}`);
      assert.equal(policies.length, 1);
      const statements = policies[0]![1].Properties!.PolicyDocument.Statement as any[];
      const denies = statements.filter((s) => s.Effect === 'Deny' && s.Action === 's3:*' && s.Principal?.AWS === '*');
      assert.ok(
        denies.some((s) => s.Condition?.Bool?.['aws:SecureTransport'] === 'false'),
        'denies plain HTTP',
      );
      assert.ok(
        denies.some((s) => s.Condition?.NumericLessThan?.['s3:TlsVersion'] === 1.2),
        'denies TLS below 1.2',
      );
      for (const s of denies) {
        assert.deepEqual(s.Resource.map(render).sort(), [`\${${bucketId}.Arn}`, `\${${bucketId}.Arn}/*`].sort());
      }
    });

    it("keeps commands' output for the retention after the longest a sandbox lives, then expires it", () => {
      const [, bucket] = storageBucket(env);
      const rule = (bucket.Properties!.LifecycleConfiguration.Rules as any[]).find((r) => r.Id === 'expire-command-output');
      const l = synth(env).stateful.node.tryGetContext('environments')[env].limits;
      assert.deepEqual(rule, {
        Id: 'expire-command-output',
        Prefix: 'commands/',
        ExpirationInDays: l.commandRetentionDays + Math.ceil(l.maxTtlSeconds / 86_400) + 1,
        Status: 'Enabled',
      });
      const commands = tableFor(env, commandsTable);
      assert.deepEqual(commands.Properties!.TimeToLiveSpecification, { AttributeName: 'expires_at_s', Enabled: true });
    });

    it('expires staged host requests, aborts stale uploads and tiers idle files', () => {
      const [, bucket] = storageBucket(env);
      const rules = bucket.Properties!.LifecycleConfiguration.Rules as any[];
      const byId = Object.fromEntries(rules.map((r) => [r.Id, r]));
      assert.deepEqual(byId['abort-incomplete-uploads'], {
        Id: 'abort-incomplete-uploads',
        AbortIncompleteMultipartUpload: { DaysAfterInitiation: 1 },
        Status: 'Enabled',
      });
      assert.deepEqual(byId['expire-staged-host-requests'], {
        Id: 'expire-staged-host-requests',
        Prefix: stagedRequestPrefix,
        ExpirationInDays: 1,
        Status: 'Enabled',
      });
      assert.deepEqual(byId['intelligent-tiering-for-idle-files'], {
        Id: 'intelligent-tiering-for-idle-files',
        ObjectSizeGreaterThan: '131072',
        Transitions: [{ StorageClass: 'INTELLIGENT_TIERING', TransitionInDays: 30 }],
        Status: 'Enabled',
      });
      assert.equal(byId['expire-noncurrent-versions'] !== undefined, env === 'prod', 'noncurrent versions expire when versioned');
    });

    it('logs storage access to its own encrypted, TLS-only log bucket', () => {
      const t = synth(env).statefulTemplate;
      const [, bucket] = storageBucket(env);
      const target = render(bucket.Properties!.LoggingConfiguration.DestinationBucketName);
      const logBucketId = target.slice(2, -1);
      const logBucket = t.toJSON().Resources[logBucketId];
      assert.equal(logBucket.Type, 'AWS::S3::Bucket');
      assert.equal(logBucket.Properties.BucketEncryption.ServerSideEncryptionConfiguration[0].ServerSideEncryptionByDefault.SSEAlgorithm, 'AES256');
      t.hasResourceProperties('AWS::S3::BucketPolicy', {
        Bucket: { Ref: logBucketId },
        PolicyDocument: {
          Statement: Match.arrayWith([
            Match.objectLike({ Effect: 'Deny', Condition: { Bool: { 'aws:SecureTransport': 'false' } } }),
            Match.objectLike({ Effect: 'Allow', Principal: { Service: 'logging.s3.amazonaws.com' }, Action: 's3:PutObject' }),
          ]),
        },
      });
    });

    it('outputs every table name and the bucket name', () => {
      const outputs = synth(env).statefulTemplate.toJSON().Outputs as Record<string, { Value: unknown }>;
      for (const definition of tables) assert.ok(outputs[`${definition.id}TableName`], `${definition.id}TableName output`);
      assert.equal(render(outputs.StorageBucketName!.Value), `\${${storageBucket(env)[0]}}`);
    });
  });
}
