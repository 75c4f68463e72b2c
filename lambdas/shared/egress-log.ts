/**
 * The egress log in DynamoDB (tables.ts egressLogTable): the host daemon's
 * resolver and proxy write their decisions here in batches; the API reads
 * the newest ones. It never travels through SSM, whose output is capped.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { BatchWriteCommand, QueryCommand } from '@aws-sdk/lib-dynamodb';
import type { EgressDecision, EgressLogSink } from '../../contract/egress-decision';
import { dynamo } from './clients/dynamodb';
import { config } from './config';
import { logger } from './logger';
import { emitMetrics } from './metrics';

type EgressVerdict = 'allowed' | 'refused' | 'not_logged';

/** One decision as the API shows it. */
export interface EgressLogEntry {
  time: string;
  /** dns (a name asked), address (a connection's destination), sni / http_host (the name a connection carried), rate_limit. */
  kind: EgressDecision['kind'] | 'rate_limit';
  /** The name, or the address:port. */
  target: string;
  verdict: EgressVerdict;
  reason: string;
}

interface StoredEntry extends EgressLogEntry {
  sandbox_id: string;
  seq: string;
  expires_at_s: number;
}

export interface EgressLogWriterOptions {
  /** Decisions one sandbox may log per second on average, and in a burst; the rest are counted in one rate_limit entry. */
  perSecond?: number;
  burst?: number;
  /** An allowed decision identical to one logged within this window is not logged again. */
  allowedDedupeMs?: number;
  flushIntervalMs?: number;
  /** Entries waiting to be written, at most; past it the oldest are dropped and counted. */
  maxBuffered?: number;
}

/**
 * Buffers decisions and writes them in batches of 25; failed writes are
 * retried with backoff, and what is finally lost is counted in the daemon's log.
 */
export class EgressLogWriter implements EgressLogSink {
  private buffer: StoredEntry[] = [];
  private counter = 0;
  private readonly buckets = new Map<string, { tokens: number; at: number; suppressed: number }>();
  private readonly recentAllowed = new Map<string, number>();
  private readonly timer: NodeJS.Timeout;
  private flushing: Promise<void> | undefined;
  private dropped = 0;
  private readonly refusals = new Map<string, number>();
  private readonly o: Required<EgressLogWriterOptions>;

  constructor(options: EgressLogWriterOptions = {}) {
    this.o = { perSecond: 20, burst: 100, allowedDedupeMs: 60_000, flushIntervalMs: 250, maxBuffered: 10_000, ...options };
    this.timer = setInterval(() => void this.flush(), this.o.flushIntervalMs);
    this.timer.unref();
  }

  record(d: EgressDecision): void {
    // Every refusal counts (rate-limited logging or not); the counts go out as metrics with each flush.
    if (d.verdict === 'refused') this.refusals.set(d.kind, (this.refusals.get(d.kind) ?? 0) + 1);
    if (d.verdict === 'allowed') {
      const key = `${d.sandboxId}|${d.kind}|${d.target}`;
      if (d.at - (this.recentAllowed.get(key) ?? -Infinity) < this.o.allowedDedupeMs) return;
      this.recentAllowed.set(key, d.at);
      if (this.recentAllowed.size > 50_000) this.recentAllowed.clear();
    }
    const bucket = this.buckets.get(d.sandboxId) ?? { tokens: this.o.burst, at: d.at, suppressed: 0 };
    bucket.tokens = Math.min(this.o.burst, bucket.tokens + ((d.at - bucket.at) / 1000) * this.o.perSecond);
    bucket.at = d.at;
    this.buckets.set(d.sandboxId, bucket);
    if (bucket.tokens < 1) {
      bucket.suppressed += 1;
      return;
    }
    bucket.tokens -= 1;
    if (bucket.suppressed > 0) {
      this.push(d.sandboxId, {
        time: new Date(d.at).toISOString(),
        kind: 'rate_limit',
        target: `${bucket.suppressed} decisions`,
        verdict: 'not_logged',
        reason: `more than ${this.o.perSecond} decisions a second (burst ${this.o.burst}); refusals among them were enforced all the same`,
      });
      bucket.suppressed = 0;
    }
    this.push(d.sandboxId, { time: new Date(d.at).toISOString(), kind: d.kind, target: d.target, verdict: d.verdict, reason: d.reason });
  }

  private push(sandboxId: string, entry: EgressLogEntry): void {
    const at = Date.parse(entry.time);
    this.counter = (this.counter + 1) % 1_000_000;
    this.buffer.push({
      ...entry,
      sandbox_id: sandboxId,
      // Time first so a Query sorts by it; the counter keeps entries of one millisecond apart and in order.
      seq: `${String(at).padStart(13, '0')}-${String(process.pid % 100_000).padStart(5, '0')}-${String(this.counter).padStart(6, '0')}`,
      expires_at_s: Math.floor(at / 1000) + config().egressLogRetentionDays * 86_400,
    });
    if (this.buffer.length > this.o.maxBuffered) {
      this.dropped += this.buffer.length - this.o.maxBuffered;
      this.buffer.splice(0, this.buffer.length - this.o.maxBuffered);
    }
  }

  /** Writes what is buffered; concurrent calls share one flush. Resolves when the buffer (as of the call) is written or given up on. */
  flush(): Promise<void> {
    this.flushing ??= this.writeAll().finally(() => (this.flushing = undefined));
    return this.flushing;
  }

  private async writeAll(): Promise<void> {
    for (const [kind, count] of this.refusals) emitMetrics({ Kind: kind }, { EgressRefusals: count });
    this.refusals.clear();
    if (this.dropped > 0) {
      logger.error('egress log: the write buffer overflowed; entries were lost', { dropped: this.dropped });
      this.dropped = 0;
    }
    while (this.buffer.length > 0) {
      const batch = this.buffer.splice(0, 25);
      let pending = batch.map((Item) => ({ PutRequest: { Item } }));
      for (let attempt = 0; pending.length > 0; attempt += 1) {
        try {
          const out = await dynamo().send(new BatchWriteCommand({ RequestItems: { [config().tables.egressLog]: pending } }));
          pending = (out.UnprocessedItems?.[config().tables.egressLog] ?? []) as typeof pending;
        } catch (err) {
          if (attempt >= 5) {
            logger.error('egress log: a batch could not be written after retries; its entries are lost', { entries: pending.length, err });
            break;
          }
        }
        if (pending.length > 0) {
          if (attempt >= 5) {
            logger.error('egress log: DynamoDB kept some entries unprocessed after retries; they are lost', { entries: pending.length });
            break;
          }
          await sleep(Math.min(2_000, 100 * 2 ** attempt));
        }
      }
    }
  }

  /** Writes what is left and stops the timer. */
  async close(): Promise<void> {
    clearInterval(this.timer);
    await this.flush();
  }
}

/**
 * The newest decisions of one sandbox, newest first.
 *
 * @example const entries = await readEgressLog('sbx-...', 100);
 */
export async function readEgressLog(sandboxId: string, limit: number): Promise<EgressLogEntry[]> {
  const out = await dynamo().send(
    new QueryCommand({
      TableName: config().tables.egressLog,
      KeyConditionExpression: 'sandbox_id = :id',
      ExpressionAttributeValues: { ':id': sandboxId },
      ScanIndexForward: false,
      Limit: limit,
    }),
  );
  return ((out.Items ?? []) as StoredEntry[]).map(({ time, kind, target, verdict, reason }) => ({ time, kind, target, verdict, reason }));
}
