/**
 * Scheduled by EventBridge Scheduler: ends sandboxes past their idle deadline
 * or TTL, finishes due shutdowns, and fails the sandboxes of lost hosts.
 */
import { logger } from './shared/logger';
import { lambdaEntry } from './shared/observability';
import { reap, type ReapReport } from './shared/reaper';
import { reportReaperRun } from './shared/reaper-metrics';

async function run(): Promise<ReapReport> {
  const report = await reap();
  logger.info('reaper run', { ...report });
  await reportReaperRun(report);
  // A run with errors fails, so Scheduler's retry policy and DLQ see it.
  if (report.errors > 0) throw new Error(`reaper: ${report.errors} sandbox(es) could not be ended; they are retried next run`);
  return report;
}

export const handler = lambdaEntry(run);
