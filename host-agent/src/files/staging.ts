/**
 * The host's side of a file operation's staging folder in the storage bucket
 * (see fileStagingPrefix in contract/host-protocol.ts): bytes streamed in from an object,
 * bytes streamed out to one in parts, and the small JSON documents beside them.
 * Memory stays bounded by a few parts whatever the size of the transfer.
 */
import { createHash, type Hash } from 'node:crypto';
import type { Readable } from 'node:stream';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  PutObjectCommand,
  UploadPartCommand,
  type S3Client,
} from '@aws-sdk/client-s3';
import { whileDependencyDown } from '../../../lambdas/shared/dependencies';
import { HostAgentError } from '../errors';
import { fileStagingPrefix } from '../../../contract/host-protocol';

export interface Staging {
  s3: S3Client;
  bucket: string;
}

/** Only keys of the file staging area: a request must not turn the host into a reader or writer of the whole bucket. */
function assertStagingKey(key: string): void {
  if (!key.startsWith(fileStagingPrefix) || key.includes('..')) {
    throw new HostAgentError('bad_request', `file staging keys start with ${fileStagingPrefix}; got ${key}`);
  }
}

const isMissing = (error: unknown) => ['NoSuchKey', 'NotFound'].includes((error as { name?: string }).name ?? '');

/** The object's bytes as a stream, and its size; undefined when there is no such object. */
export async function openStaged(st: Staging, key: string): Promise<{ body: Readable; size: number } | undefined> {
  assertStagingKey(key);
  try {
    const out = await st.s3.send(new GetObjectCommand({ Bucket: st.bucket, Key: key }));
    return { body: out.Body as Readable, size: Number(out.ContentLength ?? 0) };
  } catch (error) {
    if (isMissing(error)) return undefined;
    throw error;
  }
}

export async function readStagedJson<T>(st: Staging, key: string): Promise<T | undefined> {
  const opened = await openStaged(st, key);
  if (!opened) return undefined;
  const chunks: Buffer[] = [];
  for await (const chunk of opened.body) chunks.push(chunk as Buffer);
  return JSON.parse(Buffer.concat(chunks).toString('utf8')) as T;
}

/**
 * Writes a small object, retrying while S3 is away: what it records (a
 * transfer's outcome) is what the API answers from.
 */
export async function putStaged(st: Staging, key: string, body: Buffer | string, contentType: string, forMs = 60_000): Promise<void> {
  assertStagingKey(key);
  await whileDependencyDown(() => st.s3.send(new PutObjectCommand({ Bucket: st.bucket, Key: key, Body: body, ContentType: contentType })), { forMs });
}

export async function deleteStaged(st: Staging, key: string): Promise<void> {
  assertStagingKey(key);
  await whileDependencyDown(() => st.s3.send(new DeleteObjectCommand({ Bucket: st.bucket, Key: key })), { forMs: 30_000 });
}

/** S3 takes at most this many parts per object. */
const maxParts = 10_000;

/**
 * Streams bytes into one object: a single PUT when they fit one part, a
 * multipart upload otherwise, with at most `concurrency` parts in flight
 * (each `partBytes`), so a transfer of any size holds a few parts in memory.
 * Counts the bytes and their sha256 on the way.
 */
export class StagedObjectWriter {
  private readonly hash: Hash = createHash('sha256');
  private chunks: Buffer[] = [];
  private buffered = 0;
  private total = 0;
  private uploadId: string | undefined;
  private readonly parts: { PartNumber: number; ETag: string }[] = [];
  private readonly inFlight: Promise<void>[] = [];
  private nextPart = 1;
  private failed: unknown;

  constructor(
    private readonly st: Staging,
    private readonly key: string,
    private readonly contentType: string,
    private readonly partBytes = 8 * 1024 * 1024,
    private readonly concurrency = 2,
  ) {
    assertStagingKey(key);
  }

  get bytes(): number {
    return this.total;
  }

  async write(chunk: Buffer): Promise<void> {
    if (this.failed) throw this.failed;
    this.hash.update(chunk);
    this.total += chunk.length;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    if (this.buffered >= this.partBytes) await this.sendPart();
  }

  private async sendPart(): Promise<void> {
    const body = Buffer.concat(this.chunks);
    this.chunks = [];
    this.buffered = 0;
    if (this.nextPart > maxParts) {
      throw new HostAgentError('storage_error', `the download passed ${maxParts} parts of ${this.partBytes} bytes, the most one object can hold`);
    }
    this.uploadId ??= (
      await this.st.s3.send(new CreateMultipartUploadCommand({ Bucket: this.st.bucket, Key: this.key, ContentType: this.contentType }))
    ).UploadId;
    const partNumber = this.nextPart++;
    const sending = this.st.s3
      .send(
        new UploadPartCommand({
          Bucket: this.st.bucket,
          Key: this.key,
          UploadId: this.uploadId,
          PartNumber: partNumber,
          Body: body,
          ContentLength: body.length,
        }),
      )
      .then(
        (out) => {
          this.parts.push({ PartNumber: partNumber, ETag: out.ETag ?? '' });
        },
        (error: unknown) => {
          this.failed ??= error;
        },
      );
    this.inFlight.push(sending);
    // Backpressure: the stream waits while `concurrency` parts are on their way.
    while (this.inFlight.length >= this.concurrency) await this.inFlight.shift();
    if (this.failed) throw this.failed;
  }

  /** Sends what is left and closes the object; answers its size and sha256. */
  async finish(): Promise<{ size: number; sha256: string }> {
    if (this.uploadId === undefined) {
      const body = Buffer.concat(this.chunks);
      this.chunks = [];
      await this.st.s3.send(
        new PutObjectCommand({ Bucket: this.st.bucket, Key: this.key, Body: body, ContentLength: body.length, ContentType: this.contentType }),
      );
    } else {
      if (this.buffered > 0) await this.sendPart();
      await Promise.all(this.inFlight.splice(0));
      if (this.failed) throw this.failed;
      const parts = [...this.parts].sort((a, b) => a.PartNumber - b.PartNumber);
      await this.st.s3.send(
        new CompleteMultipartUploadCommand({ Bucket: this.st.bucket, Key: this.key, UploadId: this.uploadId, MultipartUpload: { Parts: parts } }),
      );
    }
    return { size: this.total, sha256: this.hash.digest('hex') };
  }

  /** Drops what was sent (a failed transfer leaves no half object behind). */
  async abort(): Promise<void> {
    this.chunks = [];
    await Promise.allSettled(this.inFlight.splice(0));
    if (this.uploadId === undefined) return;
    await this.st.s3.send(new AbortMultipartUploadCommand({ Bucket: this.st.bucket, Key: this.key, UploadId: this.uploadId }));
  }
}
