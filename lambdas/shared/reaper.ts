/**
 * The reaper: ends what should have ended, and nothing else.
 *
 * It Queries the sparse deadline index (never Scans), so its cost grows with
 * the number of sandboxes past their deadline, not with the table. Each
 * candidate is re-read and claimed with a conditional write, so overlapping
 * reaper runs and user destroys never both act on one sandbox.
 *
 * Why not Powertools Idempotency for Scheduler's at-least-once delivery: a
 * run is never the same work twice (it reads what is due now), and each
 * sandbox is claimed by that conditional write, which already makes a second
 * delivery, an overlapping run or a retry harmless.
 */
import { resumeRequestFor } from './relocation';
import { queryAll } from './clients/dynamodb';
import { config } from './config';
import { hostLostEvent, publishEvent } from './events';
import { hosts } from './host-calls';
import { HostDispatchError } from './host-dispatch';
import { getHost, hostsInPool, markHostLost, type HostRecord } from './host-store';
import { reportUnhealthy } from './fleet';
import { logger } from './logger';
import {
  decide,
  failedShutdownRetry,
  failedShutdownRetrySeconds,
  hostIsLost,
  isDue,
  lostHostCutoff,
  shutdownRetrySeconds,
  signalExecGraceSeconds,
  type EndEvent,
  type ReapAction,
  type ReaperSettings,
} from './reaper-rules';
import type { SandboxRecord } from './sandbox-record';
import { getSandbox, liveSandboxesOnHost, transition, TransitionRejectedError, updateSandbox } from './sandbox-store';
import { claimDue, finishShutdown, markEnded, storageFor } from './sandboxes';
import { indexName, reapShards, sandboxesTable } from './tables';

export interface ReapReport {
  candidates: number;
  expired: number;
  stopped: number;
  failed: number;
  busy: number;
  deferred: number;
  errors: number;
  hostsLost: number;
  /** Read capacity the deadline-index queries consumed. */
  consumedReadUnits: number;
}

type Candidate = Pick<SandboxRecord, 'sandbox_id' | 'status' | 'deadline_at'>;

/** The rules' settings for this run (HOST_LOST_AFTER_SECONDS from configuration, the rest fixed). */
function reaperSettings(): ReaperSettings {
  return { signalExecGraceSeconds, shutdownRetrySeconds, failedShutdownRetrySeconds, hostLostAfterSeconds: config().hostLostAfterSeconds };
}

/** Candidates: live sandboxes whose deadline passed, from every shard. */
export async function dueSandboxes(now: number): Promise<{ items: Candidate[]; consumedReadUnits: number }> {
  const shards = await Promise.all(
    Array.from({ length: reapShards }, (_, shard) =>
      queryAll<Candidate>({
        TableName: config().tables.sandboxes,
        IndexName: indexName(sandboxesTable, 'by-deadline'),
        KeyConditionExpression: 'reap_shard = :s AND deadline_at <= :now',
        ExpressionAttributeValues: { ':s': String(shard), ':now': now },
        ReturnConsumedCapacity: 'TOTAL',
      }),
    ),
  );
  return {
    items: shards.flatMap((s) => s.items),
    consumedReadUnits: shards.reduce((sum, s) => sum + s.consumedReadUnits, 0),
  };
}

/** Host records read once per run (only for the hosts of due sandboxes). */
type HostLookup = (hostId: string) => Promise<HostRecord | undefined>;

function hostLookup(): HostLookup {
  const seen = new Map<string, Promise<HostRecord | undefined>>();
  return (hostId) => {
    let found = seen.get(hostId);
    if (!found) {
      found = getHost(hostId);
      seen.set(hostId, found);
    }
    return found;
  };
}

/** Fails a live sandbox of a lost host (its final sync was tried when the host was marked lost). */
async function failOnLostHost(r: Pick<SandboxRecord, 'sandbox_id' | 'host_id'>, report: ReapReport): Promise<void> {
  if (await markEnded(r, { event: 'fail', reason: 'host_lost', detail: `host ${r.host_id} stopped heartbeating` })) report.failed++;
}

/** Reads the candidate again, asks the rules (reaper-rules.ts) what to do, and does it. */
async function reapOne(c: Candidate, now: number, report: ReapReport, host: HostLookup, settings: ReaperSettings): Promise<void> {
  const r = await getSandbox(c.sandbox_id);
  if (!r) return; // deleted since the query
  // Only a due sandbox that holds a host needs its host's record (read once per run).
  const itsHost = isDue(r, now) && r.live_host_id !== undefined ? await host(r.host_id) : undefined;
  await apply(r, decide(r, itsHost, now, settings), now, report, settings);
}

async function apply(r: SandboxRecord, action: ReapAction, now: number, report: ReapReport, settings: ReaperSettings): Promise<void> {
  switch (action.kind) {
    case 'nothing':
      return;
    case 'fail': {
      if (action.reason === 'host_lost') {
        await failOnLostHost(r, report);
        return;
      }
      const ended = await markEnded(r, {
        event: 'fail',
        reason: 'no_capacity',
        detail: `no host had room for it within ${config().capacityWaitSeconds} s`,
        only: ['creating'],
        whileWaiting: true,
      });
      if (ended) report.failed++;
      return;
    }
    case 'fail_create': {
      const claimed = await claimDue(r, now);
      if (!claimed) return;
      try {
        await hosts().dispatch(r.host_id, 'destroy', { sandboxId: r.sandbox_id, graceful: false }, { timeoutSeconds: 120, waitSeconds: reaperWaitSeconds });
      } catch (err) {
        logger.warn('reaper: could not remove a half-made container; the host reconciles it', { sandboxId: r.sandbox_id, err });
      }
      if (await markEnded(r, { event: 'fail', reason: 'create_failed', detail: 'create did not finish in time', only: ['creating'] })) {
        report.failed++;
      }
      return;
    }
    case 'wait':
      // The exec that sent complete/error gets its answer before its container stops; checked again next run.
      report.busy++;
      return;
    case 'finish_shutdown': {
      const claimed = await claimDue(r, now);
      if (!claimed) return;
      await finishOrRetrySoon(claimed, action.outcome, settings);
      report[action.outcome]++;
      return;
    }
    case 'redrive': {
      const claimed = await claimDue(r, now);
      if (!claimed) return;
      try {
        // A resume of a sandbox moved off a drained host makes it again from its staged state (relocation.ts).
        const request = action.verb === 'resume' ? resumeRequestFor(r) : { sandboxId: r.sandbox_id, storage: storageFor(r.tenant_id, r.user_id) };
        await hosts().dispatch(r.host_id, action.verb, request, { timeoutSeconds: 120, waitSeconds: reaperWaitSeconds });
        report.deferred++;
      } catch (err) {
        if (err instanceof HostDispatchError && err.code === 'still_running') {
          report.busy++;
          return;
        }
        throw err;
      }
      return;
    }
    case 'end': {
      let shutting: SandboxRecord;
      try {
        shutting = await transition(r.sandbox_id, 'begin_shutdown', {
          set: { stop_reason: action.reason, deadline_at: action.leaseUntil },
          // Idle: only if nothing happened since it was read (the TTL ends it whatever happened).
          ...(action.reason === 'idle_timeout' ? { condition: 'last_activity_at = :seen', values: { ':seen': r.last_activity_at } } : {}),
        });
      } catch (err) {
        if (err instanceof TransitionRejectedError) return; // activity, a destroy or another reaper won
        throw err;
      }
      await finishOrRetrySoon(shutting, 'expired', settings);
      report.expired++;
      return;
    }
    case 'defer':
      await moveDeadline(r, action.until);
      if (action.busy) report.busy++;
      else report.deferred++;
      return;
  }
}

/** How long the reaper waits on one host call (its function has 120 s; the host finishes and records what takes longer). */
const reaperWaitSeconds = 45;

/**
 * Ends a claimed sandbox on its host; when the host call fails, the lease is
 * cut short so the next run (not the one after the lease) tries again, and the
 * failure is reported.
 */
async function finishOrRetrySoon(claimed: SandboxRecord, outcome: EndEvent, settings: ReaperSettings): Promise<void> {
  try {
    await finishShutdown(claimed, { graceful: true, outcome, waitSeconds: reaperWaitSeconds });
  } catch (err) {
    // The host is still syncing the home: it records the end itself (and the claim brings it back here if not).
    if (err instanceof HostDispatchError && err.code === 'still_running') return;
    await moveDeadline(claimed, failedShutdownRetry(Date.now(), settings));
    throw err;
  }
}

async function moveDeadline(r: SandboxRecord, deadline: number): Promise<void> {
  try {
    await updateSandbox(r.sandbox_id, 'reap_defer', { set: { deadline_at: deadline }, condition: 'deadline_at = :seen', values: { ':seen': r.deadline_at } }, [
      r.status,
    ]);
  } catch (err) {
    if (!(err instanceof TransitionRejectedError)) throw err;
  }
}

/**
 * Hosts that stopped heartbeating (active or draining): out of placement,
 * reported unhealthy to their Auto Scaling group (which replaces them), their
 * sandboxes failed (after a last sync try). A daemon that restarts is back
 * within seconds (systemd restarts it; hostDaemonService.restartSeconds), far
 * inside hostLostAfterSeconds: only a host that is gone stays silent that long.
 */
async function reapLostHosts(now: number, report: ReapReport, settings: ReaperSettings): Promise<void> {
  const cutoff = lostHostCutoff(now, settings);
  const watched = [...(await hostsInPool('active')), ...(await hostsInPool('draining'))];
  for (const host of watched) {
    if (!hostIsLost(host, now, settings)) continue;
    // Conditional on the same cutoff: a heartbeat that lands meanwhile keeps the host.
    if (!(await markHostLost(host.host_id, cutoff))) continue;
    report.hostsLost++;
    logger.warn('reaper: host lost', { hostId: host.host_id, lastHeartbeatAt: new Date(host.last_heartbeat_at).toISOString() });
    await publishEvent(hostLostEvent(host.host_id, host.last_heartbeat_at));
    try {
      const told = await reportUnhealthy(host.host_id);
      logger.info('reaper: lost host reported unhealthy to its Auto Scaling group', { hostId: host.host_id, outcome: told });
    } catch (err) {
      // Auto Scaling's own EC2 health checks still replace a machine that is really down; the report is the faster path.
      report.errors++;
      logger.error('reaper: could not report a lost host unhealthy', { hostId: host.host_id, err });
    }
    // Side by side: a dead host makes each sync wait out its timeout.
    const outcomes = await Promise.allSettled(
      (await liveSandboxesOnHost(host.host_id)).map(async (item) => {
        // The host may still answer (the daemon died, not the machine): save the hot tier first.
        try {
          await hosts().dispatch(
            host.host_id,
            'sync',
            { sandboxId: item.sandbox_id, storage: storageFor(item.tenant_id, item.user_id) },
            { timeoutSeconds: 30, waitSeconds: 30 },
          );
        } catch (err) {
          logger.warn('reaper: lost host did not answer the final sync', { sandboxId: item.sandbox_id, err: (err as Error).message });
        }
        await failOnLostHost({ sandbox_id: item.sandbox_id, host_id: host.host_id }, report);
      }),
    );
    for (const o of outcomes) {
      if (o.status === 'rejected') {
        report.errors++;
        logger.error('reaper: could not fail a sandbox of a lost host; its deadline brings it back', { hostId: host.host_id, err: o.reason });
      }
    }
  }
}

/** One reaper run. Failures on one sandbox are reported and do not stop the others. */
export async function reap(now = Date.now()): Promise<ReapReport> {
  const report: ReapReport = { candidates: 0, expired: 0, stopped: 0, failed: 0, busy: 0, deferred: 0, errors: 0, hostsLost: 0, consumedReadUnits: 0 };
  const settings = reaperSettings();
  await reapLostHosts(now, report, settings);
  const due = await dueSandboxes(now);
  report.candidates = due.items.length;
  report.consumedReadUnits = due.consumedReadUnits;
  const host = hostLookup();
  const results = await Promise.allSettled(due.items.map((c) => reapOne(c, now, report, host, settings)));
  for (const [i, res] of results.entries()) {
    if (res.status === 'rejected') {
      report.errors++;
      logger.error('reaper: could not end a sandbox; it stays due and is retried next run', {
        sandboxId: due.items[i]!.sandbox_id,
        err: res.reason,
      });
    }
  }
  return report;
}
