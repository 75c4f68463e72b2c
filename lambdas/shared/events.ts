/**
 * Lifecycle events on the environment's EventBridge bus (EVENT_BUS_NAME), so
 * users can wire completion callbacks (docs/DEPLOY.md has an API destination):
 *
 *   sandbox.created   the record exists (status creating)
 *   sandbox.ready     its container is up (first start, not a resume)
 *   sandbox.paused    paused: CPU and memory freed, every file kept
 *   sandbox.resumed   running again after a pause
 *   sandbox.ended     stopped | expired | failed, with stop_reason
 *   command.finished  exited | timed_out | killed | lost, with exit code and durations
 *   host.lost         a host stopped heartbeating (its sandboxes end with host_lost)
 *
 * Each is published right after the conditional write that made it true
 * succeeded (sandbox-store.ts, command-store.ts, the reaper), so one change is
 * one event, whoever made it: a handler, the host that finished the work, or
 * the reaper. Details are built field by field from ids, statuses, reasons,
 * exit codes, times and durations: nothing a caller sent (command text, env,
 * labels, results, error text) can reach the bus.
 *
 * Delivery: entries EventBridge refuses or a call that fails are retried
 * (3 attempts, backoff); what still fails is reported, never swallowed: logged
 * at error level whole (ids only, so the log may hold it) for replay, and
 * counted in the EventsNotDelivered metric, which has an alarm. It never fails
 * the request that made the change: the change is already recorded, and the
 * caller's answer does not depend on the bus.
 */
import { PutEventsCommand, type PutEventsRequestEntry } from '@aws-sdk/client-eventbridge';
import { eventBridge } from './clients/eventbridge';
import { eventSource, type PlatformEventType } from './event-types';
import type { CommandRecord } from './command-state';
import { logger } from './logger';
import { emitMetrics } from './metrics';
import type { SandboxEvent } from './sandbox-state';
import type { SandboxRecord } from './sandbox-record';

export type { PlatformEventType } from './event-types';

interface SandboxEventDetail {
  sandbox_id: string;
  tenant_id: string;
  user_id: string;
  host_id: string;
  status: string;
  /** When the change was recorded (ISO). */
  at: string;
  created_at: string;
  /** sandbox.ended only. */
  stop_reason?: string;
  /** sandbox.ended only: from created_at to the end. */
  lifetime_ms?: number;
}

interface CommandFinishedDetail {
  sandbox_id: string;
  command_id: string;
  tenant_id: string;
  host_id: string;
  /** `exec` (POST /exec) or `commands` (POST /commands). */
  origin: string;
  status: string;
  exit_code: number | null;
  end_reason?: string;
  at: string;
  created_at: string;
  started_at?: string;
  ended_at?: string;
  /** The command's own run time, as its host measured it. */
  duration_ms?: number;
  /** From the request that made it to its end. */
  total_ms?: number;
  stdout_bytes?: number;
  stderr_bytes?: number;
}

interface HostLostDetail {
  host_id: string;
  at: string;
  last_heartbeat_at: string;
}

export type PlatformEvent =
  | { type: Exclude<PlatformEventType, 'command.finished' | 'host.lost'>; detail: SandboxEventDetail }
  | { type: 'command.finished'; detail: CommandFinishedDetail }
  | { type: 'host.lost'; detail: HostLostDetail };

/** The event a state-machine transition publishes, if any (heartbeat, pause and resume asked, shutdown begun: none). */
const transitionEvents: Partial<Record<SandboxEvent, PlatformEvent['type']>> = {
  created: 'sandbox.ready',
  paused: 'sandbox.paused',
  resumed: 'sandbox.resumed',
  stopped: 'sandbox.ended',
  expired: 'sandbox.ended',
  fail: 'sandbox.ended',
};

export function eventForTransition(event: SandboxEvent): Exclude<PlatformEventType, 'command.finished' | 'host.lost'> | undefined {
  return transitionEvents[event] as Exclude<PlatformEventType, 'command.finished' | 'host.lost'> | undefined;
}

/** The detail of a sandbox event, from the record as the write left it. */
export function sandboxEvent(type: Exclude<PlatformEventType, 'command.finished' | 'host.lost'>, r: SandboxRecord, at = new Date()): PlatformEvent {
  const ended = type === 'sandbox.ended';
  const createdMs = Date.parse(r.created_at);
  return {
    type,
    detail: {
      sandbox_id: r.sandbox_id,
      tenant_id: r.tenant_id,
      user_id: r.user_id,
      host_id: r.host_id,
      status: r.status,
      at: at.toISOString(),
      created_at: r.created_at,
      ...(ended && r.stop_reason ? { stop_reason: r.stop_reason } : {}),
      ...(ended && Number.isFinite(createdMs) ? { lifetime_ms: Math.max(0, at.getTime() - createdMs) } : {}),
    },
  };
}

/** The detail of command.finished, from the record as its end left it. */
export function commandFinishedEvent(r: CommandRecord, at = new Date()): PlatformEvent {
  const createdMs = Date.parse(r.created_at);
  const endedMs = r.ended_at ? Date.parse(r.ended_at) : at.getTime();
  return {
    type: 'command.finished',
    detail: {
      sandbox_id: r.sandbox_id,
      command_id: r.command_id,
      tenant_id: r.tenant_id,
      host_id: r.host_id,
      origin: r.origin,
      status: r.status,
      exit_code: r.exit_code ?? null,
      ...(r.end_reason ? { end_reason: r.end_reason } : {}),
      at: at.toISOString(),
      created_at: r.created_at,
      ...(r.started_at ? { started_at: r.started_at } : {}),
      ...(r.ended_at ? { ended_at: r.ended_at } : {}),
      ...(r.duration_ms !== undefined ? { duration_ms: r.duration_ms } : {}),
      ...(Number.isFinite(createdMs) && Number.isFinite(endedMs) ? { total_ms: Math.max(0, endedMs - createdMs) } : {}),
      ...(r.stdout_bytes !== undefined ? { stdout_bytes: r.stdout_bytes } : {}),
      ...(r.stderr_bytes !== undefined ? { stderr_bytes: r.stderr_bytes } : {}),
    },
  };
}

export function hostLostEvent(hostId: string, lastHeartbeatAt: number, at = new Date()): PlatformEvent {
  return { type: 'host.lost', detail: { host_id: hostId, at: at.toISOString(), last_heartbeat_at: new Date(lastHeartbeatAt).toISOString() } };
}

const attempts = 3;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Puts `events` on the bus. Never throws: what cannot be delivered after
 * retries is logged whole and counted (EventsNotDelivered), see above.
 */
async function publishEvents(events: readonly PlatformEvent[]): Promise<void> {
  if (events.length === 0) return;
  const bus = process.env.EVENT_BUS_NAME;
  if (!bus) {
    // No bus configured (a unit test of the domain alone): nothing to deliver to, said once per event at debug.
    for (const e of events) logger.debug('events: no EVENT_BUS_NAME; event not published', { event: e });
    return;
  }
  let pending = events.map((e) => ({ event: e, entry: toEntry(e, bus) }));
  let lastError: unknown;
  for (let attempt = 0; attempt < attempts && pending.length > 0; attempt++) {
    if (attempt > 0) await sleep(100 * 2 ** (attempt - 1));
    try {
      const out = await eventBridge().send(new PutEventsCommand({ Entries: pending.map((p) => p.entry) }));
      // Entries answer in order; only those EventBridge refused are tried again.
      if ((out.FailedEntryCount ?? 0) === 0) pending = [];
      else {
        const refused = out.Entries?.find((e) => e.ErrorCode);
        lastError = { code: refused?.ErrorCode, message: refused?.ErrorMessage };
        pending = pending.filter((_, i) => out.Entries?.[i]?.ErrorCode !== undefined);
      }
    } catch (err) {
      lastError = err;
    }
  }
  if (pending.length === 0) return;
  logger.error('events: not delivered to the bus after retries; the events follow whole, for replay', {
    bus,
    events: pending.map((p) => p.event),
    err: lastError,
  });
  emitMetrics({}, { EventsNotDelivered: pending.length });
}

/** One event: publishEvents([event]). */
export function publishEvent(event: PlatformEvent): Promise<void> {
  return publishEvents([event]);
}

function toEntry(e: PlatformEvent, bus: string): PutEventsRequestEntry {
  return { EventBusName: bus, Source: eventSource, DetailType: e.type, Detail: JSON.stringify(e.detail), Time: new Date(e.detail.at) };
}
