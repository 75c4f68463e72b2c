/**
 * The stateful stack: DynamoDB tables and the storage bucket. Kept apart from
 * the service stack so the stateless parts can be replaced, rolled back or
 * destroyed without touching data; termination-protected and RETAIN in prod.
 */
import { CfnOutput, RemovalPolicy, Stack, type StackProps } from 'aws-cdk-lib';
import type { Construct } from 'constructs';
import { tables } from '../lambdas/shared/tables';
import { ProjectTables } from './constructs/tables';
import { StorageBucket } from './constructs/storage-bucket';
import type { DeploymentEnvironment } from './environment';

export interface StatefulStackProps extends StackProps {
  /** The environment's settings (cdk.json). */
  readonly environment: DeploymentEnvironment;
}

export class StatefulStack extends Stack {
  public readonly tables: ProjectTables;
  public readonly storage: StorageBucket;

  constructor(scope: Construct, id: string, props: StatefulStackProps) {
    const retain = props.environment.removalPolicy === 'retain';
    super(scope, id, { ...props, terminationProtection: props.terminationProtection ?? retain });
    const removalPolicy = retain ? RemovalPolicy.RETAIN : RemovalPolicy.DESTROY;

    this.tables = new ProjectTables(this, 'Tables', { definitions: tables, removalPolicy, deletionProtection: retain });
    this.storage = new StorageBucket(this, 'Storage', {
      removalPolicy,
      versioned: props.environment.storage.versioned,
      noncurrentVersionExpirationDays: props.environment.storage.noncurrentVersionExpirationDays,
      intelligentTieringAfterDays: props.environment.storage.intelligentTieringAfterDays,
      accessLogRetentionDays: props.environment.storage.accessLogRetentionDays,
      commandOutputExpirationDays: props.environment.limits.commandRetentionDays + Math.ceil(props.environment.limits.maxTtlSeconds / 86_400) + 1,
    });

    for (const { definition, table } of this.tables.entries) {
      new CfnOutput(this, `${definition.id}TableName`, { value: table.tableName, description: `${definition.id} table (${definition.envVar})` });
    }
    new CfnOutput(this, 'StorageBucketName', { value: this.storage.bucket.bucketName, description: 'Storage bucket (STORAGE_BUCKET)' });
  }
}
