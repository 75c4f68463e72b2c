/**
 * The host daemon's output to CloudWatch Logs: every line it writes (its JSON
 * log lines with `host_id`, and the EMF lines of the host's own figures, hot
 * syncs and egress refusals) goes to the environment's host log group
 * (HOST_LOG_GROUP), one stream per host, where CloudWatch extracts the
 * metrics as it does for the functions. The lines still reach stdout and
 * stderr (the journal) too. Locally there is no log group: the local stack
 * reads the daemon's output itself.
 *
 * Nothing is lost quietly: a batch CloudWatch refuses is kept and sent again;
 * past `maxBuffered` lines the oldest are dropped and the count is written to
 * the journal and, once shipping works again, to the stream.
 */
import { CloudWatchLogsClient, CreateLogStreamCommand, PutLogEventsCommand, type InputLogEvent } from '@aws-sdk/client-cloudwatch-logs';

export interface LogShipperOptions {
  logGroup: string;
  /** The host's stream (its instance id). */
  stream: string;
  client?: CloudWatchLogsClient;
  /** @default 2000 */
  flushMs?: number;
  /** Lines kept while CloudWatch cannot be reached. @default 50000 */
  maxBuffered?: number;
}

/** PutLogEvents: at most 10,000 events and 1,048,576 bytes (26 bytes of overhead each) a call. */
const maxBatchEvents = 10_000;
const maxBatchBytes = 1_048_576;
const eventOverheadBytes = 26;
/** CloudWatch refuses events over 256 KB; a longer line is cut (and says so). */
const maxEventBytes = 256 * 1024 - eventOverheadBytes;

type Write = typeof process.stdout.write;

export class LogShipper {
  private buffer: InputLogEvent[] = [];
  private readonly partial = { stdout: '', stderr: '' };
  private dropped = 0;
  private streamReady = false;
  private flushing: Promise<void> | undefined;
  private readonly client: CloudWatchLogsClient;
  private readonly o: Required<Omit<LogShipperOptions, 'client'>>;
  private readonly originals = { stdout: process.stdout.write.bind(process.stdout) as Write, stderr: process.stderr.write.bind(process.stderr) as Write };
  private timer: NodeJS.Timeout | undefined;

  constructor(options: LogShipperOptions) {
    this.o = { flushMs: 2_000, maxBuffered: 50_000, ...options };
    this.client = options.client ?? new CloudWatchLogsClient({ maxAttempts: 3, requestHandler: { connectionTimeout: 3_000, requestTimeout: 10_000 } });
  }

  /** Starts copying this process's stdout and stderr lines; answers the stop (which flushes once more). */
  start(): () => Promise<void> {
    for (const name of ['stdout', 'stderr'] as const) {
      const original = this.originals[name];
      process[name].write = ((chunk: string | Uint8Array, ...rest: unknown[]) => {
        this.capture(name, chunk);
        return (original as (...args: unknown[]) => boolean)(chunk, ...rest);
      }) as Write;
    }
    this.timer = setInterval(() => void this.flush(), this.o.flushMs);
    this.timer.unref();
    return async () => {
      clearInterval(this.timer);
      process.stdout.write = this.originals.stdout;
      process.stderr.write = this.originals.stderr;
      await this.flush();
    };
  }

  /** Lines of `chunk` (completed by earlier chunks) into the buffer. */
  capture(stream: 'stdout' | 'stderr', chunk: string | Uint8Array): void {
    const text = this.partial[stream] + (typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8'));
    const lines = text.split('\n');
    this.partial[stream] = lines.pop() ?? '';
    const now = Date.now();
    for (const line of lines) {
      if (line === '') continue;
      const message =
        Buffer.byteLength(line) > maxEventBytes
          ? `${Buffer.from(line)
              .subarray(0, maxEventBytes - 32)
              .toString('utf8')} …[line cut]`
          : line;
      this.buffer.push({ timestamp: now, message });
    }
    if (this.buffer.length > this.o.maxBuffered) {
      const excess = this.buffer.length - this.o.maxBuffered;
      this.buffer.splice(0, excess);
      this.dropped += excess;
    }
  }

  /** Sends what is buffered; concurrent calls share one flush. Never throws. */
  flush(): Promise<void> {
    this.flushing ??= this.send().finally(() => (this.flushing = undefined));
    return this.flushing;
  }

  private async send(): Promise<void> {
    try {
      if (!this.streamReady) {
        try {
          await this.client.send(new CreateLogStreamCommand({ logGroupName: this.o.logGroup, logStreamName: this.o.stream }));
        } catch (err) {
          if ((err as { name?: string }).name !== 'ResourceAlreadyExistsException') throw err;
        }
        this.streamReady = true;
      }
      if (this.dropped > 0) {
        const note = JSON.stringify({
          level: 'ERROR',
          message: 'log shipper: lines dropped while CloudWatch Logs could not be reached',
          dropped: this.dropped,
          timestamp: new Date().toISOString(),
        });
        this.buffer.unshift({ timestamp: this.buffer[0]?.timestamp ?? Date.now(), message: note });
        this.dropped = 0;
      }
      while (this.buffer.length > 0) {
        let bytes = 0;
        let count = 0;
        while (count < this.buffer.length && count < maxBatchEvents) {
          const size = Buffer.byteLength(this.buffer[count]!.message!) + eventOverheadBytes;
          if (bytes + size > maxBatchBytes) break;
          bytes += size;
          count++;
        }
        const batch = this.buffer.slice(0, count);
        try {
          await this.client.send(new PutLogEventsCommand({ logGroupName: this.o.logGroup, logStreamName: this.o.stream, logEvents: batch }));
        } catch (err) {
          // A batch CloudWatch will never take (too old, malformed) would block every line after it: count it and go on.
          if ((err as { name?: string }).name !== 'InvalidParameterException') throw err;
          this.dropped += count;
          this.originals.stderr(
            `${JSON.stringify({ level: 'ERROR', message: 'log shipper: CloudWatch Logs rejected a batch; dropped', lines: count, err: (err as Error).message })}\n`,
          );
        }
        // Only what CloudWatch took (or rejected for good) leaves the buffer; a failure keeps it for the next flush.
        this.buffer.splice(0, count);
      }
    } catch (err) {
      // The stream was deleted under us: make it again next time.
      if ((err as { name?: string }).name === 'ResourceNotFoundException') this.streamReady = false;
      this.originals.stderr(
        `${JSON.stringify({ level: 'ERROR', message: 'log shipper: CloudWatch Logs refused a batch; kept and sent again', buffered: this.buffer.length, err: (err as Error).message })}\n`,
      );
    }
  }
}

/** Ships the daemon's output when the host has a log group (HOST_LOG_GROUP); answers the stop, or undefined. */
export function shipDaemonOutput(s: { hostId: string; logGroup?: string }): (() => Promise<void>) | undefined {
  if (!s.logGroup) return undefined;
  return new LogShipper({ logGroup: s.logGroup, stream: s.hostId }).start();
}
