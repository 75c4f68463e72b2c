/**
 * The sandbox state machine: the one place that says which status may follow
 * which. Every status change in DynamoDB is a conditional write whose condition
 * is built from `allowedFrom(event)`, so two concurrent requests cannot both win.
 *
 *   creating -> ready -> running -> shutting_down -> stopped | expired | failed
 *                 \        \-> paused -> ready (start)
 *                  \-> failed (host lost, create failed, container vanished)
 */
export const sandboxStatuses = [
  'creating',
  'ready',
  'running',
  'paused',
  'shutting_down',
  'stopped',
  'expired',
  'failed',
] as const;
export type SandboxStatus = (typeof sandboxStatuses)[number];

export type SandboxEvent =
  | 'created' // the host answered: container up
  | 'heartbeat' // first heartbeat from inside moves ready -> running
  | 'begin_shutdown' // destroy, complete, error, reaper
  | 'stopped' // host removed the container after a requested end
  | 'expired' // host removed the container after the reaper ended it
  | 'fail' // create failed, host lost, container vanished
  | 'pause' // stop: container stopped, filesystem kept
  | 'resume'; // start: container started again

const transitions: Record<SandboxEvent, { from: readonly SandboxStatus[]; to: SandboxStatus | null }> = {
  created: { from: ['creating'], to: 'ready' },
  heartbeat: { from: ['ready'], to: 'running' },
  begin_shutdown: { from: ['creating', 'ready', 'running', 'paused'], to: 'shutting_down' },
  stopped: { from: ['shutting_down'], to: 'stopped' },
  expired: { from: ['shutting_down'], to: 'expired' },
  fail: { from: ['creating', 'ready', 'running', 'paused', 'shutting_down'], to: 'failed' },
  pause: { from: ['ready', 'running'], to: 'paused' },
  resume: { from: ['paused'], to: 'ready' },
};

/** Statuses in which a sandbox accepts exec, file and heartbeat calls. */
export const activeStatuses: readonly SandboxStatus[] = ['ready', 'running'];

/** Statuses after which nothing changes any more. */
export const terminalStatuses: readonly SandboxStatus[] = ['stopped', 'expired', 'failed'];

/** Statuses that hold a container on a host. */
export const liveStatuses: readonly SandboxStatus[] = ['creating', 'ready', 'running', 'paused', 'shutting_down'];

export function allowedFrom(event: SandboxEvent): readonly SandboxStatus[] {
  return transitions[event].from;
}

export function nextStatus(current: SandboxStatus, event: SandboxEvent): SandboxStatus | null {
  const t = transitions[event];
  return t.from.includes(current) ? t.to : null;
}

export function isTerminal(status: SandboxStatus): boolean {
  return terminalStatuses.includes(status);
}

export function isActive(status: SandboxStatus): boolean {
  return activeStatuses.includes(status);
}

/** Why a sandbox ended, recorded as `stop_reason`. */
export type StopReason =
  | 'user_requested'
  | 'completed'
  | 'agent_error'
  | 'idle_timeout'
  | 'ttl_expired'
  | 'host_lost'
  | 'container_vanished'
  | 'create_failed'
  | 'destroy_failed';
