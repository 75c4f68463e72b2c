/**
 * What a reaper run reports to CloudWatch: its report (due, ended by reason,
 * deferred, busy, failed, hosts lost) and the fleet's capacity as the run
 * leaves it (active hosts, slots in all, used and free). The reaper function
 * calls it after each run; the local stack's reaper timer too.
 */
import { activeHosts } from './host-store';
import { logger } from './logger';
import { emitMetrics } from './metrics';
import type { ReapReport } from './reaper';

export async function reportReaperRun(report: ReapReport): Promise<void> {
  emitMetrics(
    {},
    {
      ReaperCandidates: report.candidates,
      ReaperDeferred: report.deferred,
      ReaperBusy: report.busy,
      ReaperFailures: report.errors,
      HostsLost: report.hostsLost,
    },
  );
  for (const reason of ['expired', 'stopped', 'failed'] as const) emitMetrics({ Reason: reason }, { ReaperEnded: report[reason] });
  try {
    const hosts = await activeHosts();
    const total = hosts.reduce((sum, h) => sum + h.capacity.sandboxes, 0);
    const used = hosts.reduce((sum, h) => sum + Math.min(h.allocated.sandboxes, h.capacity.sandboxes), 0);
    emitMetrics({}, { ActiveHosts: hosts.length, SlotsTotal: total, SlotsUsed: used, SlotsFree: total - used });
  } catch (err) {
    // The run itself is done and reported; a missing capacity point shows as a gap on the dashboard.
    logger.error('reaper: could not read the fleet for its capacity figures', { err });
  }
}
