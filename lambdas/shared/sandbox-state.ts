/**
 * The sandbox state machine: the one place that says which status may follow
 * which. Every status change in DynamoDB is a conditional write whose condition
 * is built from `allowedFrom(event)` and whose new status is `targetOf(event)`,
 * so two concurrent requests cannot both win.
 *
 *   creating -> ready -> running -> shutting_down -> stopped | expired | failed
 *                 \        \-> pausing -> paused -> resuming -> ready  (POST pause / resume)
 *                  \-> failed (host lost, create failed, container vanished)
 *
 * `pausing` and `resuming` are the host at work on a pause or a resume: the host
 * records where it ends (paused, or ready), whether or not the request that
 * asked for it is still waiting.
 *
 * `stopped` is an end shut down cleanly (destroy, complete, error, a drained
 * host, a container that exited), never a pause: nothing leaves it. The
 * words are the README's (Words).
 */
export const sandboxStatuses = ['creating', 'ready', 'running', 'pausing', 'paused', 'resuming', 'shutting_down', 'stopped', 'expired', 'failed'] as const;
export type SandboxStatus = (typeof sandboxStatuses)[number];

/** Every event that moves a sandbox, with what it is; `transitions` below says from where to where. */
export const sandboxEvents = [
  'created', // the host answered: container up
  'heartbeat', // first heartbeat from inside moves ready -> running
  'begin_shutdown', // destroy, complete, error, reaper
  'stopped', // host removed the container after a requested end
  'expired', // host removed the container after the reaper ended it
  'fail', // create failed, host lost, container vanished
  'pause', // pause asked: the host is stopping the container (docker stop)
  'paused', // the host stopped it, filesystem kept
  'pause_failed', // the host could not pause it: it keeps running
  'resume', // resume asked: the host is starting the container again
  'resumed', // the host started it
  'resume_failed', // the host could not resume it: it stays paused
] as const;
export type SandboxEvent = (typeof sandboxEvents)[number];

/** Statuses in which a sandbox accepts exec, file and heartbeat calls. */
export const activeStatuses = ['ready', 'running'] as const satisfies readonly SandboxStatus[];

/** Statuses after which nothing changes any more. */
const terminalStatuses = ['stopped', 'expired', 'failed'] as const satisfies readonly SandboxStatus[];

/** Statuses that hold a container on a host. */
export const liveStatuses = ['creating', 'ready', 'running', 'pausing', 'paused', 'resuming', 'shutting_down'] as const satisfies readonly SandboxStatus[];

/** Statuses of a sandbox whose container exists and is settled (no verb at work on it). */
export const settledStatuses = ['ready', 'running', 'paused'] as const satisfies readonly SandboxStatus[];

const transitions: Record<SandboxEvent, { from: readonly SandboxStatus[]; to: SandboxStatus }> = {
  created: { from: ['creating'], to: 'ready' },
  heartbeat: { from: ['ready'], to: 'running' },
  begin_shutdown: { from: ['creating', 'ready', 'running', 'pausing', 'paused', 'resuming'], to: 'shutting_down' },
  stopped: { from: ['shutting_down'], to: 'stopped' },
  expired: { from: ['shutting_down'], to: 'expired' },
  fail: { from: liveStatuses, to: 'failed' },
  pause: { from: activeStatuses, to: 'pausing' },
  paused: { from: ['pausing'], to: 'paused' },
  pause_failed: { from: ['pausing'], to: 'ready' },
  resume: { from: ['paused'], to: 'resuming' },
  resumed: { from: ['resuming'], to: 'ready' },
  resume_failed: { from: ['resuming'], to: 'paused' },
};

export function allowedFrom(event: SandboxEvent): readonly SandboxStatus[] {
  return transitions[event].from;
}

/** The status `event` leads to. */
export function targetOf(event: SandboxEvent): SandboxStatus {
  return transitions[event].to;
}

export function nextStatus(current: SandboxStatus, event: SandboxEvent): SandboxStatus | null {
  const t = transitions[event];
  return t.from.includes(current) ? t.to : null;
}

export function isTerminal(status: SandboxStatus): boolean {
  return (terminalStatuses as readonly SandboxStatus[]).includes(status);
}

export function isActive(status: SandboxStatus): boolean {
  return (activeStatuses as readonly SandboxStatus[]).includes(status);
}

/** Narrows to a settled status (ready, running, paused): a container exists and no verb is at work on it. */
export function isSettled(status: SandboxStatus): status is (typeof settledStatuses)[number] {
  return (settledStatuses as readonly SandboxStatus[]).includes(status);
}

/** Why a sandbox ended, recorded as `stop_reason` (the API's answers and docs/openapi.json list these). */
export const stopReasons = [
  'user_requested',
  'completed',
  'agent_error',
  'idle_timeout',
  'ttl_expired',
  'host_lost',
  'container_vanished',
  'container_exited',
  'create_failed',
  'destroy_failed',
  /** Its host was taken out of the fleet (scale-in, instance refresh, a Spot interruption): its home was synced first. */
  'host_draining',
  /** No host had room for it within CAPACITY_WAIT_SECONDS. */
  'no_capacity',
] as const;

export type StopReason = (typeof stopReasons)[number];
