/**
 * Presigned S3 URLs for large file transfers: each names one object of the
 * storage bucket and one method, and expires (FILES_URL_TTL_SECONDS, 15
 * minutes by default). The client sends or fetches the bytes straight to S3;
 * no Lambda holds them.
 */
import { GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { s3 } from './clients/s3';
import { config } from './config';

export interface PresignedUrl {
  url: string;
  expires_at: string;
}

/** A URL that PUTs one object (its body is the whole object, up to 5 GiB). */
export async function presignedUpload(key: string): Promise<PresignedUrl> {
  const ttl = config().filesUrlTtlSeconds;
  const url = await getSignedUrl(s3(), new PutObjectCommand({ Bucket: config().bucket, Key: key }), { expiresIn: ttl });
  return { url, expires_at: new Date(Date.now() + ttl * 1000).toISOString() };
}

/** A URL that GETs one object. */
export async function presignedDownload(key: string): Promise<PresignedUrl> {
  const ttl = config().filesUrlTtlSeconds;
  const url = await getSignedUrl(s3(), new GetObjectCommand({ Bucket: config().bucket, Key: key }), { expiresIn: ttl });
  return { url, expires_at: new Date(Date.now() + ttl * 1000).toISOString() };
}
