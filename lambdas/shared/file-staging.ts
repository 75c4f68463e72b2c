/**
 * The API's side of a file operation's staging folder in the storage bucket
 * (fileStagingPrefix in contract/host-protocol.ts): small objects only. An
 * inline read or write (at most FILES_INLINE_MAX_BYTES) passes through here;
 * larger transfers never do (presigned URLs).
 */
import { DeleteObjectCommand, GetObjectCommand, HeadObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { fileStagingFolder, fileStagingObjects } from '../../contract/host-protocol';
import { randomId } from '../../contract/ids';
import { s3 } from './clients/s3';
import { config } from './config';
import { logger } from './logger';

export type FileOperationKind = 'op' | 'upl' | 'dl';

/** A new operation id: `op-`, `upl-` or `dl-` and 20 lower-case letters and digits. */
export function newFileOperationId(kind: FileOperationKind): string {
  return `${kind}-${randomId(20)}`;
}

/** The staging folder of one operation of a sandbox. */
export function stagingFolder(tenantId: string, sandboxId: string, operationId: string): string {
  return fileStagingFolder(tenantId, sandboxId, operationId);
}

const isMissing = (err: unknown) => ['NoSuchKey', 'NotFound'].includes((err as { name?: string }).name ?? '');

export async function putStagedObject(key: string, body: Buffer | string, contentType: string): Promise<void> {
  await s3().send(new PutObjectCommand({ Bucket: config().bucket, Key: key, Body: body, ContentLength: Buffer.byteLength(body), ContentType: contentType }));
}

/** The object's bytes, or undefined when there is none. Only for objects the API knows to be small. */
export async function getStagedObject(key: string): Promise<Buffer | undefined> {
  try {
    const out = await s3().send(new GetObjectCommand({ Bucket: config().bucket, Key: key }));
    return Buffer.from(await out.Body!.transformToByteArray());
  } catch (err) {
    if (isMissing(err)) return undefined;
    throw err;
  }
}

export async function getStagedJson<T>(key: string): Promise<T | undefined> {
  const bytes = await getStagedObject(key);
  return bytes === undefined ? undefined : (JSON.parse(bytes.toString('utf8')) as T);
}

/** The object's size, or undefined when there is none. */
export async function stagedObjectSize(key: string): Promise<number | undefined> {
  try {
    const out = await s3().send(new HeadObjectCommand({ Bucket: config().bucket, Key: key }));
    return Number(out.ContentLength ?? 0);
  } catch (err) {
    if (isMissing(err)) return undefined;
    throw err;
  }
}

/**
 * Deletes a staged object once used. A failure is logged, not thrown: the
 * answer is already decided, and the bucket's lifecycle rule removes what is left.
 */
export async function deleteStagedObject(key: string): Promise<void> {
  try {
    await s3().send(new DeleteObjectCommand({ Bucket: config().bucket, Key: key }));
  } catch (err) {
    logger.warn('files: a staged object was not deleted; the lifecycle rule will', { key, err });
  }
}

export { fileStagingObjects };
