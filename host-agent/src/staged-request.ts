/**
 * Requests too large for an SSM parameter arrive as `s3:<key>`: fetched from
 * the storage bucket, then deleted (they may carry the sandbox's token).
 */
import type { HostConfig } from './config';
import { HostAgentError } from './errors';
import { stagedRequestPrefix } from '../../contract/host-protocol';

export async function fetchStagedRequest(config: HostConfig, key: string): Promise<unknown> {
  // Only staged requests: the argument must not turn the agent into a reader of the whole bucket.
  if (!key.startsWith(stagedRequestPrefix)) {
    throw new HostAgentError('bad_request', `staged request keys start with ${stagedRequestPrefix}; got ${key}`);
  }
  const bucket = config.storageBucket;
  if (!bucket) throw new HostAgentError('bad_request', `request staged at s3:${key} but STORAGE_BUCKET is not set on this host`);

  const [{ GetObjectCommand, DeleteObjectCommand }, { createS3Client }] = await Promise.all([import('@aws-sdk/client-s3'), import('./storage/s3')]);
  const s3 = createS3Client();
  let text: string;
  try {
    const object = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    text = (await object.Body?.transformToString('utf8')) ?? '';
  } catch (error) {
    const name = (error as { name?: string }).name;
    if (name === 'NoSuchKey' || name === 'NotFound') {
      throw new HostAgentError('bad_request', `staged request s3://${bucket}/${key} does not exist (already consumed, or never uploaded)`);
    }
    throw new HostAgentError('storage_error', `cannot fetch staged request s3://${bucket}/${key}: ${(error as Error).message}`);
  }
  try {
    await s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: key }));
  } catch (error) {
    throw new HostAgentError('storage_error', `fetched s3://${bucket}/${key} but could not delete it: ${(error as Error).message}`);
  } finally {
    s3.destroy();
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new HostAgentError('bad_request', `staged request s3://${bucket}/${key} is not JSON`);
  }
}
