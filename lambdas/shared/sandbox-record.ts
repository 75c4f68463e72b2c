/**
 * The sandbox record as stored in DynamoDB, and the view the API shows.
 */
import type { EgressPolicy } from '../../contract/egress-policy';
import { reapShards } from './tables';
import type { SandboxStatus, StopReason } from './sandbox-state';
import { isTerminal } from './sandbox-state';
import { idleDeadline } from './reaper-rules';

export const hotPath = '/home/agent';
const coldPath = '/data/cold';

/**
 * "none": no network at all; {egress}: the bridge under that policy;
 * "bridge": what records made before egress policies (and callers that still
 * send it) hold, the same as {egress: "allow_all"}.
 */
export type SandboxNetworkConfig = 'bridge' | 'none' | { egress: EgressPolicy };

/** The policy a network config means; undefined for "none". */
export function egressOf(network: SandboxNetworkConfig): EgressPolicy | undefined {
  if (network === 'none') return undefined;
  return network === 'bridge' ? 'allow_all' : network.egress;
}

interface SandboxConfigView {
  cpu: number;
  memory_mb: number;
  /** Home size (MB): its own file system, and its sync quota. Absent on records from before disk_mb. */
  disk_mb?: number;
  ttl_seconds: number;
  idle_timeout_seconds: number;
  network: SandboxNetworkConfig;
  env: Record<string, string>;
  labels: Record<string, string>;
}

export interface SandboxRecord {
  sandbox_id: string;
  tenant_id: string;
  user_id: string;
  /** `${tenant_id}#${user_id}`, key of the by-tenant-user index. */
  tenant_user: string;
  status: SandboxStatus;
  host_id: string;
  container_id?: string;
  created_at: string;
  updated_at: string;
  /** Absolute end (TTL), ISO and epoch ms. */
  expires_at: string;
  expires_at_ms: number;
  idle_timeout_s: number;
  /** Epoch ms of the last exec, heartbeat or file call. */
  last_activity_at: number;
  /** Commands in flight: command id -> epoch ms by which it must have ended. */
  execs?: Record<string, number>;
  /** Set when the sandbox ended: the commands that were still in flight then (closed by the end). */
  open_commands?: Record<string, number>;
  /** Sparse deadline index (live sandboxes only): min(idle deadline, TTL). */
  reap_shard?: string;
  deadline_at?: number;
  /** Sparse by-host index (while the sandbox holds a container). */
  live_host_id?: string;
  /** Sparse by-waiting index: 'capacity' while the create waits for a host with room (host_id is '' until one takes it). */
  waiting?: 'capacity';
  /** What a caller sees of why a create has not moved on yet. */
  status_detail?: 'waiting_for_capacity';
  /** Where a waiting create's host request (env, token) is staged until a host takes it (host-requests/...). */
  staged_request?: string;
  /** Sticky working directory for exec. */
  cwd: string;
  config: SandboxConfigView;
  /** SHA-256 of the per-sandbox token (hex). */
  token_hash: string;
  stop_reason?: StopReason;
  stop_detail?: string;
  ended_at?: string;
  result?: Record<string, unknown>;
  heartbeat_at?: string;
  /** What of /tmp the last pause could not keep (files their owner cannot read, root's, sockets). */
  tmp_not_kept?: string[];
  /** What of /tmp the last resume could not put back. */
  tmp_not_restored?: string[];
  /**
   * A paused sandbox moved off a draining host: the S3 prefix holding what its
   * next resume needs on another host (relocation.ts). Set with host_id '' by
   * the drain, removed once a resume restored it.
   */
  paused_state?: string;
}

export interface SandboxView {
  sandbox_id: string;
  user_id: string;
  status: SandboxStatus;
  /** Why a create has not moved on yet: `waiting_for_capacity` while no host has room for it. */
  status_detail?: 'waiting_for_capacity';
  /** null while a create waits for a host. */
  host_id: string | null;
  created_at: string;
  updated_at: string;
  expires_at: string;
  idle_expires_at: string | null;
  hot_path: string;
  cold_path: string;
  config: SandboxConfigView;
  cwd: string;
  last_activity_at: string;
  stop_reason?: StopReason;
  stop_detail?: string;
  ended_at?: string;
  result?: Record<string, unknown>;
  tmp_not_kept?: string[];
  tmp_not_restored?: string[];
}

export function toView(r: SandboxRecord): SandboxView {
  const idle = idleDeadline(r, r.last_activity_at);
  return {
    sandbox_id: r.sandbox_id,
    user_id: r.user_id,
    status: r.status,
    ...(r.status_detail && r.status === 'creating' ? { status_detail: r.status_detail } : {}),
    host_id: r.host_id || null,
    created_at: r.created_at,
    updated_at: r.updated_at,
    expires_at: r.expires_at,
    idle_expires_at: isTerminal(r.status) ? null : new Date(idle).toISOString(),
    hot_path: hotPath,
    cold_path: coldPath,
    config: r.config,
    cwd: r.cwd,
    last_activity_at: new Date(r.last_activity_at).toISOString(),
    ...(r.stop_reason ? { stop_reason: r.stop_reason } : {}),
    ...(r.stop_detail ? { stop_detail: r.stop_detail } : {}),
    ...(r.ended_at ? { ended_at: r.ended_at } : {}),
    ...(r.result ? { result: r.result } : {}),
    // Said after the pause (or resume) that could not keep (or put back) them, until the next one.
    ...(r.status === 'paused' && r.tmp_not_kept?.length ? { tmp_not_kept: r.tmp_not_kept } : {}),
    ...(r.status !== 'paused' && r.tmp_not_restored?.length ? { tmp_not_restored: r.tmp_not_restored } : {}),
  };
}

/** The reap-index shard of a sandbox (stable per id). */
export function reapShardOf(sandboxId: string): string {
  let h = 0;
  for (const c of sandboxId) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return String(h % reapShards);
}
