/**
 * The local stack's event bus: EventBridge's PutEvents (AWS JSON 1.1,
 * `X-Amz-Target: AWSEvents.PutEvents`) on loopback, behind the same SigV4
 * check as the other local services, delivering into this process. The
 * handlers (in their workers), the host daemon and the host-agent put events
 * with the real EventBridge client (AWS_ENDPOINT_URL_EVENTBRIDGE); tests read
 * them in order from `events`, and `npm start` prints each at debug level.
 */
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { answerAwsJson, AwsJsonError } from './aws-json';
import { admitSigned, type LocalCredentials, type SigningPolicy } from './sigv4';

/** One event as the bus received it. */
export interface BusEvent {
  id: string;
  bus: string;
  source: string;
  detailType: string;
  detail: Record<string, unknown>;
  /** The event's own time (ISO), as its publisher set it. */
  time: string;
  /** Order of arrival on this bus, from 1. */
  seq: number;
}

export interface LocalEventBus {
  url: string;
  name: string;
  /** Every event received, in order of arrival. */
  readonly events: readonly BusEvent[];
  /** Calls `listener` with each event as it arrives; answers the unsubscribe. */
  onEvent(listener: (e: BusEvent) => void): () => void;
  /** The first event (already received or still to come) matching `match`, or a rejection after `timeoutMs`. */
  waitFor(match: (e: BusEvent) => boolean, timeoutMs?: number): Promise<BusEvent>;
  /** Refuses the next `n` entries (ErrorCode InternalFailure), as EventBridge does under trouble. */
  refuseNextEntries(n: number): void;
  /** Fails the next `n` PutEvents calls whole (HTTP 500 InternalException). */
  failNextCalls(n: number): void;
  close(): Promise<void>;
}

export interface LocalEventBusOptions {
  credentials: LocalCredentials;
  /** The bus's name; entries for any other bus are refused. @default 'ephemeral-sandbox-local' */
  name?: string;
}

/** PutEvents takes at most 10 entries and 256 KB a call. */
const maxEntries = 10;
const maxRequestBytes = 256 * 1024;

export async function startLocalEventBus(o: LocalEventBusOptions): Promise<LocalEventBus> {
  const name = o.name ?? 'ephemeral-sandbox-local';
  const received: BusEvent[] = [];
  const listeners = new Set<(e: BusEvent) => void>();
  let refuseEntries = 0;
  let failCalls = 0;
  const signing: SigningPolicy = { credentials: o.credentials, service: 'events', protocol: 'json', maxBodyBytes: maxRequestBytes };

  function putEvents(body: { Entries?: unknown }): { FailedEntryCount: number; Entries: Record<string, string | undefined>[] } {
    const entries = body.Entries;
    if (!Array.isArray(entries) || entries.length === 0 || entries.length > maxEntries) {
      throw new AwsJsonError('ValidationException', `Entries must hold 1 to ${maxEntries} entries`);
    }
    let failed = 0;
    const out = entries.map((raw) => {
      const e = raw as { Source?: unknown; DetailType?: unknown; Detail?: unknown; EventBusName?: unknown; Time?: unknown };
      if (refuseEntries > 0) {
        refuseEntries -= 1;
        failed += 1;
        return { ErrorCode: 'InternalFailure', ErrorMessage: 'the local bus refused this entry (injected)' };
      }
      const bus = typeof e.EventBusName === 'string' && e.EventBusName !== '' ? e.EventBusName : 'default';
      if (bus !== name) {
        failed += 1;
        return { ErrorCode: 'ResourceNotFoundException', ErrorMessage: `Event bus ${bus} does not exist.` };
      }
      let detail: unknown;
      try {
        detail = JSON.parse(String(e.Detail));
      } catch {
        detail = undefined;
      }
      if (typeof e.Source !== 'string' || typeof e.DetailType !== 'string' || typeof detail !== 'object' || detail === null || Array.isArray(detail)) {
        failed += 1;
        return { ErrorCode: 'MalformedDetail', ErrorMessage: 'Detail is malformed.' };
      }
      const time = typeof e.Time === 'number' ? new Date(e.Time * 1000).toISOString() : new Date().toISOString();
      const event: BusEvent = {
        id: randomUUID(),
        bus,
        source: e.Source,
        detailType: e.DetailType,
        detail: detail as Record<string, unknown>,
        time,
        seq: received.length + 1,
      };
      received.push(event);
      for (const l of listeners) l(event);
      return { EventId: event.id };
    });
    return { FailedEntryCount: failed, Entries: out };
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (!(await admitSigned(req, res, signing))) return;
    try {
      const chunks: Buffer[] = [];
      for await (const chunk of req as AsyncIterable<Buffer>) chunks.push(chunk);
      const target = req.headers['x-amz-target'];
      if (req.method !== 'POST' || target !== 'AWSEvents.PutEvents') {
        throw new AwsJsonError(
          'UnknownOperationException',
          `the local bus answers POST with X-Amz-Target: AWSEvents.PutEvents only, got ${req.method} ${String(target)}`,
        );
      }
      if (failCalls > 0) {
        failCalls -= 1;
        throw new AwsJsonError('InternalException', 'the local bus failed this call (injected)', 500);
      }
      let body: unknown;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
      } catch {
        throw new AwsJsonError('SerializationException', 'request body is not valid JSON');
      }
      answerAwsJson(res, 200, putEvents(body as { Entries?: unknown }));
    } catch (err) {
      const e = err instanceof AwsJsonError ? err : new AwsJsonError('InternalException', (err as Error).message, 500);
      answerAwsJson(res, e.status, { __type: e.code, message: e.message }, e.code);
    }
  }

  const server = createServer((req, res) => void handle(req, res));
  // Like the other local endpoints: keep idle sockets longer than the SDK's agent does.
  server.keepAliveTimeout = 65_000;
  server.headersTimeout = 66_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;

  return {
    url: `http://127.0.0.1:${port}`,
    name,
    events: received,
    onEvent(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    waitFor(match, timeoutMs = 30_000) {
      const seen = received.find(match);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          listeners.delete(listener);
          reject(new Error(`no matching event on the local bus within ${timeoutMs} ms (received: ${received.map((e) => e.detailType).join(', ') || 'none'})`));
        }, timeoutMs);
        const listener = (e: BusEvent) => {
          if (!match(e)) return;
          clearTimeout(timer);
          listeners.delete(listener);
          resolve(e);
        };
        listeners.add(listener);
      });
    },
    refuseNextEntries(n) {
      refuseEntries = n;
    },
    failNextCalls(n) {
      failCalls = n;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
