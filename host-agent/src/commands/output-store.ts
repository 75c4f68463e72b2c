/**
 * A command's output on its way to S3: each stream is appended in chunks
 * (commands/<tenant>/<sandbox>/<command>/<stream>/<end>.<start>), uploaded in
 * order, so what the API can read is always a prefix of what the command
 * wrote. A line written is stored within a fraction of a second while output
 * trickles, in large chunks while it pours; memory stays bounded because the
 * command's stream is paused while too much waits for S3.
 */
import { PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { outputChunkKey } from '../../../contract/host-protocol';

export type StreamName = 'stdout' | 'stderr';

/** Flush delays: quick at first (a follower sees a line within the interactive budget), calmer later. */
const earlyFlushMs = 150;
const lateFlushMs = 600;
const earlyPhaseMs = 5_000;
/** A chunk is uploaded at once when this much waits. */
const chunkBytes = 4 * 1024 * 1024;
/** Above this much waiting, the command's stream is paused until uploads catch up. */
const backpressureBytes = 16 * 1024 * 1024;

class StreamBuffer {
  pending: Buffer[] = [];
  pendingBytes = 0;
  /** Bytes stored in S3 (readable). */
  stored = 0;
  /** Bytes on their way to S3 now. */
  inflight = 0;
  /** Bytes the command wrote in all (stored, pending, or past the cap). */
  total = 0;
  truncated = false;

  constructor(readonly maxBytes: number) {}

  push(chunk: Buffer): void {
    this.total += chunk.length;
    const room = this.maxBytes - this.stored - this.inflight - this.pendingBytes;
    if (room <= 0) {
      this.truncated = true;
      return;
    }
    const take = chunk.length <= room ? chunk : chunk.subarray(0, room);
    if (take.length < chunk.length) this.truncated = true;
    // Copy: payloads are views into the demuxer's buffers.
    this.pending.push(Buffer.from(take));
    this.pendingBytes += take.length;
  }

  take(): Buffer | undefined {
    if (this.pendingBytes === 0) return undefined;
    const data = this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending);
    this.pending = [];
    this.pendingBytes = 0;
    this.inflight += data.length;
    return data;
  }

  markStored(data: Buffer): void {
    this.inflight -= data.length;
    this.stored += data.length;
  }

  /** Puts back what an upload failed to store, ahead of anything newer. */
  untake(data: Buffer): void {
    this.inflight -= data.length;
    this.pending.unshift(data);
    this.pendingBytes += data.length;
  }
}

export interface OutputProgress {
  stdout: { stored: number; total: number; truncated: boolean };
  stderr: { stored: number; total: number; truncated: boolean };
}

export interface OutputStoreOptions {
  s3: S3Client;
  bucket: string;
  /** commandOutputPrefix(...) */
  prefix: string;
  maxBytesPerStream: number;
  /** Called after each round of uploads that stored something (the record's counters follow). */
  onStored: (progress: OutputProgress) => Promise<void>;
  /** Pause and resume the source when too much waits. */
  onBackpressure?: (paused: boolean) => void;
  /** Report a failed upload (it is retried). */
  onError?: (error: unknown) => void;
}

export class OutputStore {
  private readonly streams: Record<StreamName, StreamBuffer>;
  private readonly startedAt = Date.now();
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> | undefined;
  private paused = false;
  private failures = 0;
  /** The last record of how far the output is stored failed: the next round records it even with no new bytes. */
  private progressBehind = false;
  /** Draining at the command's end: its end record carries the counters, so no progress write of its own. */
  private draining = false;

  constructor(private readonly o: OutputStoreOptions) {
    this.streams = { stdout: new StreamBuffer(o.maxBytesPerStream), stderr: new StreamBuffer(o.maxBytesPerStream) };
  }

  push(stream: StreamName, chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.streams[stream].push(chunk);
    const waiting = this.streams.stdout.pendingBytes + this.streams.stderr.pendingBytes;
    if (waiting >= chunkBytes) this.flushSoon(0);
    else this.flushSoon(Date.now() - this.startedAt < earlyPhaseMs ? earlyFlushMs : lateFlushMs);
    if (!this.paused && waiting >= backpressureBytes) {
      this.paused = true;
      this.o.onBackpressure?.(true);
    }
  }

  progress(): OutputProgress {
    const view = (b: StreamBuffer) => ({ stored: b.stored, total: b.total, truncated: b.truncated });
    return { stdout: view(this.streams.stdout), stderr: view(this.streams.stderr) };
  }

  private flushSoon(delayMs: number): void {
    if (this.timer && delayMs > 0) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.flush().catch(() => undefined);
    }, delayMs);
  }

  /** Uploads everything waiting now (one chunk per stream), in order with earlier uploads. */
  flush(): Promise<void> {
    const round = (this.flushing ?? Promise.resolve()).then(() => this.uploadRound());
    // The next round goes on after a failed one (which has scheduled its retry); only this call's caller
    // sees the failure, so a round nobody awaits (a timer's) never becomes an unhandled rejection.
    const tail: Promise<void> = round
      .then(
        () => undefined,
        () => undefined,
      )
      .finally(() => {
        if (this.flushing === tail) this.flushing = undefined;
      });
    this.flushing = tail;
    return round;
  }

  private async uploadRound(): Promise<void> {
    const taken = (['stdout', 'stderr'] as const).map((name) => [name, this.streams[name].take()] as const);
    if (taken.every(([, data]) => data === undefined) && !this.progressBehind) return;
    const results = await Promise.allSettled(
      taken.map(async ([name, data]) => {
        if (!data) return;
        const b = this.streams[name];
        const start = b.stored;
        const key = outputChunkKey(this.o.prefix, name, start, start + data.length);
        try {
          await this.o.s3.send(new PutObjectCommand({ Bucket: this.o.bucket, Key: key, Body: data, ContentType: 'application/octet-stream' }));
        } catch (error) {
          b.untake(data);
          throw error;
        }
        b.markStored(data);
      }),
    );
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) {
      this.o.onError?.((failed as PromiseRejectedResult).reason);
      // Keep the bytes and try again, backing off; the source pauses if too much waits.
      this.failures++;
      this.flushSoon(Math.min(30_000, 250 * 2 ** Math.min(this.failures, 7)));
      throw (failed as PromiseRejectedResult).reason;
    }
    this.failures = 0;
    if (!this.draining) {
      try {
        await this.o.onStored(this.progress());
        this.progressBehind = false;
      } catch (error) {
        // The bytes are stored; only the record of how far lags. Say so, and record it again soon.
        this.o.onError?.(error);
        this.progressBehind = true;
        this.flushSoon(1_000);
      }
    }
    const waiting = this.streams.stdout.pendingBytes + this.streams.stderr.pendingBytes;
    if (this.paused && waiting < backpressureBytes / 2) {
      this.paused = false;
      this.o.onBackpressure?.(false);
    }
    if (waiting > 0) this.flushSoon(waiting >= chunkBytes ? 0 : earlyFlushMs);
  }

  /**
   * Stores everything that is left, retrying for up to `deadlineMs`; answers
   * what could not be stored (0 when all was). For the command's end: the
   * progress callback is not called any more (the end record says it all, one
   * DynamoDB write instead of two).
   */
  async drain(deadlineMs: number): Promise<{ unstored: number; error?: unknown }> {
    this.draining = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const until = Date.now() + deadlineMs;
    let lastError: unknown;
    for (let attempt = 0; ; attempt++) {
      try {
        await this.flush();
        const left = this.streams.stdout.pendingBytes + this.streams.stderr.pendingBytes;
        if (left === 0) return { unstored: 0 };
      } catch (error) {
        lastError = error;
      }
      if (this.timer) clearTimeout(this.timer);
      this.timer = undefined;
      if (Date.now() >= until) {
        return { unstored: this.streams.stdout.pendingBytes + this.streams.stderr.pendingBytes, error: lastError };
      }
      await new Promise((r) => setTimeout(r, Math.min(2_000, 100 * 2 ** attempt)));
    }
  }
}
