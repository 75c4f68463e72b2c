/**
 * The platform's CloudWatch metrics: one list, read by the code that emits
 * them (lambdas/shared/metrics.ts, EMF lines) and by the CDK that graphs and
 * alarms on them (lib/constructs/observability.ts), so a rename cannot leave a
 * dashboard or an alarm looking at nothing. No imports: the CDK loads it.
 *
 * Every metric carries the `service` dimension (Powertools' default) plus the
 * dimensions listed here; the namespace is one per environment.
 */

/** `service` on every metric and log line. */
export const metricService = 'ephemeral-sandbox';

/** One namespace per environment. */
export function metricNamespace(envName: string): string {
  return `EphemeralSandbox/${envName}`;
}

export const metricDefinitions = {
  // API
  /** A create answered: `Outcome` ready | creating | failed, `Start` cold | warm (warm: a container from a warm pool). */
  SandboxCreates: { unit: 'Count', dimensions: ['Outcome', 'Start'] },
  /** How long a create took to answer. */
  CreateLatency: { unit: 'Milliseconds', dimensions: ['Outcome', 'Start'] },
  /** How long POST /exec took to answer; `Outcome` the command's status (or `running` for a 202). */
  ExecLatency: { unit: 'Milliseconds', dimensions: ['Outcome'] },
  /** How long POST /commands took to answer. */
  CommandStartLatency: { unit: 'Milliseconds', dimensions: ['Outcome'] },
  /** An error the API answered (4xx or 5xx), by its `Code` (no_capacity, host_error, internal_error...). */
  ApiErrors: { unit: 'Count', dimensions: ['Code'] },
  /** A host call over SSM: `Verb` and `Outcome` (ok, or the dispatch error's code). */
  HostDispatch: { unit: 'Count', dimensions: ['Verb', 'Outcome'] },
  /** SSM answered ThrottlingException (the dispatcher backs off and retries). */
  SsmThrottled: { unit: 'Count', dimensions: [] },
  // Commands (recorded where a command's end is written: mostly on its host)
  /** A command ended: `Status` exited | timed_out | killed | lost. */
  CommandsFinished: { unit: 'Count', dimensions: ['Status'] },
  CommandDuration: { unit: 'Milliseconds', dimensions: ['Status'] },
  // Reaper (one line per run)
  ReaperCandidates: { unit: 'Count', dimensions: [] },
  /** Sandboxes a run ended, by `Reason`: expired | stopped | failed. */
  ReaperEnded: { unit: 'Count', dimensions: ['Reason'] },
  ReaperDeferred: { unit: 'Count', dimensions: [] },
  ReaperBusy: { unit: 'Count', dimensions: [] },
  /** Sandboxes a run could not end (they stay due; the run fails so its retry policy sees it). */
  ReaperFailures: { unit: 'Count', dimensions: [] },
  /** Hosts marked lost (their heartbeat stopped); their sandboxes fail with host_lost. */
  HostsLost: { unit: 'Count', dimensions: [] },
  // Capacity, as the reaper sees the fleet each run
  ActiveHosts: { unit: 'Count', dimensions: [] },
  SlotsTotal: { unit: 'Count', dimensions: [] },
  SlotsUsed: { unit: 'Count', dimensions: [] },
  SlotsFree: { unit: 'Count', dimensions: [] },
  // Each host's own figures (the host daemon, every heartbeat)
  HostSandboxes: { unit: 'Count', dimensions: ['HostId'] },
  HostPendingCreates: { unit: 'Count', dimensions: ['HostId'] },
  HostCommandsRunning: { unit: 'Count', dimensions: ['HostId'] },
  HostCpuAllocated: { unit: 'Count', dimensions: ['HostId'] },
  HostCpuFree: { unit: 'Count', dimensions: ['HostId'] },
  HostMemoryAllocatedMb: { unit: 'Megabytes', dimensions: ['HostId'] },
  HostMemoryFreeMb: { unit: 'Megabytes', dimensions: ['HostId'] },
  /** Hot tier syncs (create's download, periodic and final uploads): `Direction` down | up. */
  HotSyncBytes: { unit: 'Bytes', dimensions: ['Direction'] },
  HotSyncDuration: { unit: 'Milliseconds', dimensions: ['Direction'] },
  /** Egress the host refused (a name, an address, an SNI or Host), by `Kind`. */
  EgressRefusals: { unit: 'Count', dimensions: ['Kind'] },
  // The platform's own plumbing
  /** Lifecycle events that could not be put on the bus after retries (each is logged whole). */
  EventsNotDelivered: { unit: 'Count', dimensions: [] },
} as const satisfies Record<string, { unit: 'Count' | 'Milliseconds' | 'Bytes' | 'Megabytes'; dimensions: readonly string[] }>;

export type MetricName = keyof typeof metricDefinitions;
export type MetricDimensions<N extends MetricName> = Record<(typeof metricDefinitions)[N]['dimensions'][number], string>;
