/**
 * Commands: the record a command leaves in DynamoDB, its statuses and how one
 * may follow another. The control plane creates the record (`pending`); the
 * host that runs the command moves it on and reports its end; the reaper and
 * the host's reconciliation close what nobody can finish any more (`lost`).
 *
 *   pending -> running -> exited | timed_out | killed | lost
 *   pending -> killed | lost (never started)
 */
export const commandStatuses = ['pending', 'running', 'exited', 'timed_out', 'killed', 'lost'] as const;
export type CommandStatus = (typeof commandStatuses)[number];

/** Statuses in which a command may still produce output or change. */
export const openCommandStatuses: readonly CommandStatus[] = ['pending', 'running'];
/** Statuses after which nothing about a command changes any more. */
const finalCommandStatuses: readonly CommandStatus[] = ['exited', 'timed_out', 'killed', 'lost'];

export function isFinalCommandStatus(status: CommandStatus): boolean {
  return finalCommandStatuses.includes(status);
}

/** Why a command ended other than by itself. */
export type CommandEndReason =
  /** POST .../kill. */
  | 'kill_requested'
  /** Ran past its timeout. */
  | 'timeout'
  /** Its sandbox ended (destroy, complete/error, idle or TTL). */
  | 'sandbox_ended'
  /** Its sandbox was stopped (POST .../stop): its processes stop with the container. */
  | 'sandbox_paused'
  /** Its host vanished. */
  | 'host_lost'
  /** The host daemon that ran it restarted; the command's processes were stopped. */
  | 'host_daemon_restarted'
  /** The host never started it (it could not be delivered, or the sandbox was not running). */
  | 'not_started';

export type OutputStream = 'stdout' | 'stderr';

/** Where a command came from: the commands API, or the start-and-wait exec route. */
export type CommandOrigin = 'commands' | 'exec';

export interface CommandRecord {
  sandbox_id: string;
  command_id: string;
  tenant_id: string;
  /** `<created_at>#<command_id>`: sort key of the by-sandbox-created index. */
  created_seq: string;
  origin: CommandOrigin;
  status: CommandStatus;
  command: string;
  /** The directory asked for, or the sandbox's sticky one when none was. */
  cwd: string;
  /** Set when the caller named no cwd: a sticky cwd that vanished falls back to it, and the final cwd sticks. */
  cwd_fallback?: string;
  user: string;
  timeout_s: number;
  /** Caller env values: kept only until the host has started the command. */
  env?: Record<string, string>;
  /** Initial stdin (UTF-8): kept only until the host has started the command. */
  stdin?: string;
  /** True when stdin stays open for POST .../stdin after the initial data. */
  stdin_open: boolean;
  /** Next stdin byte offset the API accepts. */
  stdin_offset: number;
  /** Bytes of the initial stdin (written at start). */
  stdin_initial_bytes: number;
  /** Set once a write with eof: true was accepted: stdin closes after `stdin_offset` bytes. */
  stdin_eof?: boolean;
  /** Bytes of stdin the host has written to the command. */
  stdin_delivered?: number;
  /** SHA-256 of the request that created it (a retry with the same command_id must match). */
  fingerprint: string;
  host_id: string;
  /** The sandbox's idle timeout and TTL end when the command was made: its end refreshes the idle deadline with them. */
  sandbox_idle_s: number;
  sandbox_expires_ms: number;
  created_at: string;
  started_at?: string;
  ended_at?: string;
  duration_ms?: number;
  exit_code?: number | null;
  /** Working directory when the shell ended (sticky cwd). */
  final_cwd?: string;
  end_reason?: CommandEndReason;
  end_detail?: string;
  /** Bytes of each stream stored (readable) so far. */
  stdout_bytes: number;
  stderr_bytes: number;
  /** Bytes each stream carried in all, stored or not (past COMMAND_OUTPUT_MAX_BYTES). */
  stdout_total_bytes?: number;
  stderr_total_bytes?: number;
  /** True when a stream was cut at COMMAND_OUTPUT_MAX_BYTES. */
  stdout_truncated?: boolean;
  stderr_truncated?: boolean;
  /** The host daemon incarnation running it (its reconciliation closes those of earlier ones). */
  runner_id?: string;
  /** Epoch seconds after which DynamoDB may delete the record. */
  expires_at_s: number;
}
