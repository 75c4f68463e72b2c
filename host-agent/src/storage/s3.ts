/**
 * The S3 client the host-agent's storage code uses, configured from the environment.
 *
 * Env: AWS_ENDPOINT_URL_S3 (read by the SDK itself; the local stack points it
 * at s3rver), S3_FORCE_PATH_STYLE=true, AWS_REGION / AWS_DEFAULT_REGION, and the
 * SDK's default credential chain (env, shared config, instance profile).
 */
import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { S3Client, type S3ClientConfig } from '@aws-sdk/client-s3';
import { timeSdkClient } from '../../../lambdas/shared/timing';

/** Sockets per client: parallel transfers (default 32) plus headroom for listings and retries. */
const defaultMaxSockets = 64;

export interface S3ClientOptions {
  /** Overrides AWS_ENDPOINT_URL_S3 (tests start s3rver on a random port). */
  endpoint?: string;
  /** @default S3_FORCE_PATH_STYLE === 'true' */
  forcePathStyle?: boolean;
  /** @default AWS_REGION, then AWS_DEFAULT_REGION, then us-east-1 */
  region?: string;
  /** @default the SDK's default credential chain */
  credentials?: S3ClientConfig['credentials'];
  /** @default 64 */
  maxSockets?: number;
}

/**
 * Creates an S3 client for hot sync and request staging.
 *
 * @example
 *   const s3 = createS3Client(); // honours AWS_ENDPOINT_URL_S3, S3_FORCE_PATH_STYLE
 */
export function createS3Client(options: S3ClientOptions = {}, env: NodeJS.ProcessEnv = process.env): S3Client {
  const maxSockets = options.maxSockets ?? defaultMaxSockets;
  const client = new S3Client({
    region: options.region ?? env.AWS_REGION ?? env.AWS_DEFAULT_REGION ?? 'us-east-1',
    ...(options.endpoint ? { endpoint: options.endpoint } : {}),
    forcePathStyle: options.forcePathStyle ?? env.S3_FORCE_PATH_STYLE === 'true',
    ...(options.credentials ? { credentials: options.credentials } : {}),
    // Default flexible checksums send aws-chunked trailers that s3rver (and some
    // S3-compatible stores) reject; S3 itself accepts both.
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    // Resolve each command's middleware stack once, not per request: a sync sends
    // a thousand small requests (middleware must be added before the first send).
    cacheMiddleware: true,
    requestHandler: {
      httpAgent: new HttpAgent({ keepAlive: true, maxSockets }),
      httpsAgent: new HttpsAgent({ keepAlive: true, maxSockets }),
      connectionTimeout: 5_000,
      requestTimeout: 120_000,
      // Without it the SDK only warns: a hung endpoint would hang a sync for good.
      throwOnRequestTimeout: true,
    },
  });
  timeSdkClient(client, 's3');
  return client;
}
