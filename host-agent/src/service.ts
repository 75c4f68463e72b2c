/**
 * How the host daemon runs as a service. The systemd unit on AWS
 * (lib/constructs/host-user-data.ts) and the local stack's supervisor
 * (lib/local/host-supervisor.ts) both read these, so the local stack restarts
 * a dead daemon exactly as a host does.
 */
export const hostDaemonService = {
  /** Restart=always with RestartSec: a daemon that died is started again after this. */
  restartSeconds: 2,
  /** TimeoutStopSec: SIGTERM first, then SIGKILL for whatever is left in the service's cgroup. */
  stopTimeoutSeconds: 15,
} as const;

/**
 * The termination lifecycle hook's heartbeat timeout: a draining host
 * heartbeats the action every third of it, so a host that dies in the middle
 * of a drain holds its termination this long at most. How long a drain may go
 * on is the environment's hosts.drainTimeoutSeconds (DRAIN_TIMEOUT_SECONDS).
 */
export const drainHookHeartbeatTimeoutSeconds = 120;
