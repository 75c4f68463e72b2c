/**
 * The storage bucket: sandbox hot/cold tiers, commands' output, staged host requests and staged file transfers. Private,
 * encrypted, TLS-only, with its own server access log bucket.
 */
import { Duration, RemovalPolicy } from 'aws-cdk-lib';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { NagSuppressions } from 'cdk-nag';
import { Construct } from 'constructs';
import { fileStagingPrefix, stagedRequestPrefix } from '../../contract/host-protocol';
import { commandOutputKeyPrefix } from './handler-access';

export interface StorageBucketProps {
  /** RETAIN keeps the data when the stack goes; DESTROY empties and deletes the bucket (dev). */
  readonly removalPolicy: RemovalPolicy;
  /** Keep old versions of overwritten/deleted objects. */
  readonly versioned: boolean;
  /** With versioning, how long a replaced version is kept. */
  readonly noncurrentVersionExpirationDays: number;
  /** Objects not rewritten for this many days move to Intelligent-Tiering. */
  readonly intelligentTieringAfterDays: number;
  /** How long server access logs are kept. */
  readonly accessLogRetentionDays: number;
  /**
   * Days after which command output objects expire: the retention after a
   * sandbox ends plus the longest a sandbox can live (the rule counts from an
   * object's creation, not from its sandbox's end).
   */
  readonly commandOutputExpirationDays: number;
}

/**
 * Objects below this size are never tiered by Intelligent-Tiering (and are not
 * charged its monitoring fee), so moving them would only cost transition requests.
 */
const intelligentTieringMinObjectBytes = 128 * 1024;

export class StorageBucket extends Construct {
  public readonly bucket: s3.Bucket;
  public readonly accessLogBucket: s3.Bucket;

  constructor(scope: Construct, id: string, props: StorageBucketProps) {
    super(scope, id);
    const destroy = props.removalPolicy === RemovalPolicy.DESTROY;

    this.accessLogBucket = new s3.Bucket(this, 'AccessLogs', {
      // Server access logging can only deliver to SSE-S3 buckets.
      encryption: s3.BucketEncryption.S3_MANAGED,
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
      enforceSSL: true,
      lifecycleRules: [
        { id: 'expire-access-logs', expiration: Duration.days(props.accessLogRetentionDays) },
        { id: 'abort-incomplete-uploads', abortIncompleteMultipartUploadAfter: Duration.days(1) },
      ],
      removalPolicy: props.removalPolicy,
      autoDeleteObjects: destroy,
    });
    NagSuppressions.addResourceSuppressions(this.accessLogBucket, [
      {
        id: 'AwsSolutions-S1',
        reason: 'This is the access log bucket of the storage bucket; logging it into itself (or a third bucket) would only log the log deliveries.',
      },
    ]);

    const lifecycleRules: s3.LifecycleRule[] = [
      { id: 'abort-incomplete-uploads', abortIncompleteMultipartUploadAfter: Duration.days(1) },
      // Oversized host requests are fetched (and deleted) by the host within seconds; a day covers any failure.
      { id: 'expire-staged-host-requests', prefix: stagedRequestPrefix, expiration: Duration.days(1) },
      // File bytes and transfer records are deleted once used; what a failure or an unread download leaves goes after a day
      // (presigned URLs expire in minutes, and a transfer is stopped after an hour).
      { id: 'expire-file-staging', prefix: fileStagingPrefix, expiration: Duration.days(1) },
      // Commands' output outlives the sandbox for the retention period, then goes (the records go by DynamoDB TTL).
      { id: 'expire-command-output', prefix: commandOutputKeyPrefix, expiration: Duration.days(props.commandOutputExpirationDays) },
      {
        // Tenant files can sit untouched for months; Intelligent-Tiering cuts their price without retrieval fees or delay.
        id: 'intelligent-tiering-for-idle-files',
        objectSizeGreaterThan: intelligentTieringMinObjectBytes,
        transitions: [{ storageClass: s3.StorageClass.INTELLIGENT_TIERING, transitionAfter: Duration.days(props.intelligentTieringAfterDays) }],
      },
    ];
    if (props.versioned) {
      lifecycleRules.push(
        { id: 'expire-noncurrent-versions', noncurrentVersionExpiration: Duration.days(props.noncurrentVersionExpirationDays) },
        { id: 'remove-expired-delete-markers', expiredObjectDeleteMarker: true },
      );
    }

    this.bucket = new s3.Bucket(this, 'Bucket', {
      // SSE-S3: encrypted at rest with no per-request KMS charge; hot sync makes many small requests.
      encryption: s3.BucketEncryption.S3_MANAGED,
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
      enforceSSL: true,
      minimumTLSVersion: 1.2,
      versioned: props.versioned,
      lifecycleRules,
      serverAccessLogsBucket: this.accessLogBucket,
      serverAccessLogsPrefix: 'storage/',
      removalPolicy: props.removalPolicy,
      autoDeleteObjects: destroy,
    });
    // CloudFormation types ObjectSizeGreaterThan as a string; CDK renders a number (a cfn-lint warning at synth).
    const tieringRule = lifecycleRules.findIndex((r) => r.objectSizeGreaterThan !== undefined);
    (this.bucket.node.defaultChild as s3.CfnBucket).addPropertyOverride(
      `LifecycleConfiguration.Rules.${tieringRule}.ObjectSizeGreaterThan`,
      String(intelligentTieringMinObjectBytes),
    );
  }
}
