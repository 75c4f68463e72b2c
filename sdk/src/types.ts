/** Shapes of the API's answers, as it sends them (docs/openapi.json describes each). */

export type SandboxStatus =
  | 'creating'
  | 'ready'
  | 'running'
  | 'pausing'
  | 'paused'
  | 'resuming'
  | 'shutting_down'
  // The ended statuses (stop_reason says why): `stopped` is an end shut down cleanly (destroy, complete, error, ...), never a pause.
  | 'stopped'
  | 'expired'
  | 'failed';

export type EgressPolicy = 'allow_all' | 'deny_all' | { allow: string[] };

export interface SandboxConfig {
  cpu?: number;
  memory_mb?: number;
  disk_mb?: number;
  ttl_seconds?: number;
  idle_timeout_seconds?: number;
  network?: 'none' | 'bridge' | { egress: EgressPolicy };
  env?: Record<string, string>;
  labels?: Record<string, string>;
}

/** Why a sandbox ended. */
export type StopReason =
  | 'user_requested'
  | 'completed'
  | 'agent_error'
  | 'idle_timeout'
  | 'ttl_expired'
  | 'host_lost'
  | 'container_vanished'
  | 'container_exited'
  | 'create_failed'
  | 'destroy_failed'
  | 'host_draining'
  | 'no_capacity';

export interface SandboxInfo {
  sandbox_id: string;
  user_id: string;
  status: SandboxStatus;
  /** Why a create has not moved on yet: no host has room for it. */
  status_detail?: 'waiting_for_capacity';
  /** null while a create waits for a host. */
  host_id: string | null;
  created_at: string;
  updated_at: string;
  expires_at: string;
  idle_expires_at: string | null;
  hot_path: string;
  cold_path: string;
  config: Required<Omit<SandboxConfig, 'disk_mb'>> & { disk_mb?: number };
  cwd: string;
  last_activity_at: string;
  stop_reason?: StopReason;
  stop_detail?: string;
  ended_at?: string;
  result?: Record<string, unknown>;
  tmp_not_kept?: string[];
  tmp_not_restored?: string[];
}

export type CommandStatus = 'pending' | 'running' | 'exited' | 'timed_out' | 'killed' | 'lost';

export interface CommandInfo {
  command_id: string;
  sandbox_id: string;
  command: string;
  status: CommandStatus;
  exit_code: number | null;
  created_at: string;
  started_at: string | null;
  ended_at: string | null;
  duration_ms: number | null;
  cwd: string;
  user: string;
  timeout: number;
  stdout_bytes: number;
  stderr_bytes: number;
  stdout_truncated: boolean;
  stderr_truncated: boolean;
  stdin_open: boolean;
  stdin_offset: number;
  end_reason?: string;
  end_detail?: string;
}

export interface CommandOutputPage extends CommandInfo {
  stdout: string;
  stderr: string;
  stdout_offset_next: number;
  stderr_offset_next: number;
}

export interface FileEntry {
  path: string;
  name: string;
  type: 'file' | 'dir' | 'symlink' | 'other';
  size: number;
  /** Permission bits as octal digits, e.g. "0644". */
  mode: string;
  mtime: string;
  link_target?: string;
}

export interface WrittenFile {
  path: string;
  size: number;
  sha256: string;
  mode: string;
}
