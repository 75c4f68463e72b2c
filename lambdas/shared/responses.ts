/**
 * Response schemas (zod): what each route answers, as the OpenAPI document
 * describes it and the tests check real answers against. Strict objects, so
 * a field a handler adds without describing it here fails those tests.
 */
import * as z from 'zod';
import { commandStatuses } from './command-state';
import { sandboxStatuses, stopReasons } from './sandbox-state';

const isoTime = z.string().describe('ISO 8601 time');
const stringMap = z.record(z.string(), z.string());

/** `config.network` as a sandbox records it (see networkConfigSchema for what a create accepts). */
export const egressPolicyView = z.union([z.literal('allow_all'), z.literal('deny_all'), z.strictObject({ allow: z.array(z.string()) })]);
export const networkView = z.union([z.literal('none'), z.literal('bridge'), z.strictObject({ egress: egressPolicyView })]);

export const sandboxConfigView = z.strictObject({
  cpu: z.number(),
  memory_mb: z.number().int(),
  disk_mb: z.number().int().optional(),
  ttl_seconds: z.number().int(),
  idle_timeout_seconds: z.number().int(),
  network: networkView,
  env: stringMap,
  labels: stringMap,
});

export const sandboxView = z.strictObject({
  sandbox_id: z.string(),
  user_id: z.string(),
  status: z.enum(sandboxStatuses),
  status_detail: z.literal('waiting_for_capacity').optional().describe('Why a create has not moved on yet: no host has room for it'),
  host_id: z.string().nullable().describe('null while a create waits for a host'),
  created_at: isoTime,
  updated_at: isoTime,
  expires_at: isoTime,
  idle_expires_at: isoTime.nullable(),
  hot_path: z.string(),
  cold_path: z.string(),
  config: sandboxConfigView,
  cwd: z.string(),
  last_activity_at: isoTime,
  stop_reason: z.enum(stopReasons).optional(),
  stop_detail: z.string().optional(),
  ended_at: isoTime.optional(),
  result: z.record(z.string(), z.unknown()).optional(),
  tmp_not_kept: z.array(z.string()).optional(),
  tmp_not_restored: z.array(z.string()).optional(),
});

export const sandboxList = z.strictObject({ sandboxes: z.array(sandboxView), total: z.number().int(), next_token: z.string().optional() });

export const heartbeatAnswer = sandboxView.extend({ acknowledged: z.literal(true) });
export const errorSignalAnswer = sandboxView.extend({ error_received: z.literal(true) });

export const commandView = z.strictObject({
  command_id: z.string(),
  sandbox_id: z.string(),
  command: z.string(),
  status: z.enum(commandStatuses),
  exit_code: z.number().int().nullable(),
  created_at: isoTime,
  started_at: isoTime.nullable(),
  ended_at: isoTime.nullable(),
  duration_ms: z.number().nullable(),
  cwd: z.string(),
  user: z.string(),
  timeout: z.number().int(),
  stdout_bytes: z.number().int(),
  stderr_bytes: z.number().int(),
  stdout_truncated: z.boolean(),
  stderr_truncated: z.boolean(),
  stdin_open: z.boolean(),
  stdin_offset: z.number().int(),
  end_reason: z.string().optional(),
  end_detail: z.string().optional(),
});

/** A command with its output from the asked offsets (bytes as UTF-8 text, never splitting a character). */
export const commandWithOutput = commandView.extend({
  stdout: z.string(),
  stderr: z.string(),
  stdout_offset_next: z.number().int(),
  stderr_offset_next: z.number().int(),
});

export const commandList = z.strictObject({ commands: z.array(commandView), next_token: z.string().optional() });

export const execAnswer = z.strictObject({
  exit_code: z.number().int(),
  stdout: z.string(),
  stderr: z.string(),
  cwd: z.string(),
  duration_ms: z.number(),
  timed_out: z.boolean(),
  stdout_truncated: z.boolean(),
  stderr_truncated: z.boolean(),
  stdout_bytes: z.number().int(),
  stderr_bytes: z.number().int(),
  command_id: z.string(),
  status: z.enum(commandStatuses),
});

export const stdinAnswer = z.strictObject({ offset_next: z.number().int() });

export const egressLog = z.strictObject({
  sandbox_id: z.string(),
  decisions: z.array(
    z.strictObject({
      time: isoTime,
      kind: z.enum(['dns', 'address', 'sni', 'http_host', 'rate_limit']),
      target: z.string(),
      verdict: z.enum(['allowed', 'refused', 'not_logged']),
      reason: z.string(),
    }),
  ),
});

export const fileEntry = z.strictObject({
  path: z.string(),
  name: z.string(),
  type: z.enum(['file', 'dir', 'symlink', 'other']),
  size: z.number().int(),
  mode: z.string().describe('permission bits as octal digits'),
  mtime: isoTime,
  link_target: z.string().optional(),
});

export const fileListing = z.strictObject({
  path: z.string(),
  entries: z.array(fileEntry),
  next_token: z.string().optional(),
  skipped: z.array(z.strictObject({ path: z.string(), code: z.string() })).optional(),
});

export const fileWritten = z.strictObject({ path: z.string(), size: z.number().int(), sha256: z.string(), mode: z.string() });
export const fileDeleted = z.strictObject({ path: z.string(), type: fileEntry.shape.type, deleted: z.literal(true) });
export const fileMoved = z.strictObject({ from: z.string(), to: z.string(), entry: fileEntry });

export const uploadTicket = z.strictObject({
  upload_id: z.string(),
  path: z.string(),
  method: z.literal('PUT'),
  url: z.string().describe('presigned S3 PUT: send the bytes with Content-Length'),
  expires_at: isoTime,
  max_bytes: z.number().int(),
});

const transferResult = {
  path: z.string(),
  size: z.number().int(),
  sha256: z.string(),
  mode: z.string().optional(),
  entries: z.number().int().optional(),
  warnings: z.array(z.string()).optional(),
};
export const uploadDone = z.strictObject({ upload_id: z.string(), ...transferResult });
export const downloadDone = z.strictObject({
  download_id: z.string(),
  ...transferResult,
  archive: z.literal('tar.gz').optional(),
  url: z.string().describe('presigned S3 GET'),
  expires_at: isoTime,
});
/** A transfer still running on the host (202): repeat the call (or GET the download) to follow it. */
export const transferInProgress = z.strictObject({
  status: z.literal('in_progress'),
  path: z.string(),
  upload_id: z.string().optional(),
  download_id: z.string().optional(),
});

export const homeCopy = z.strictObject({
  may_lag: z.boolean(),
  sandboxes: z.array(z.strictObject({ sandbox_id: z.string(), status: z.string() })).optional(),
  sync_interval_seconds: z.number().int().optional(),
});
export const homeListing = z.strictObject({ path: z.string(), entries: z.array(fileEntry), next_token: z.string().optional(), home_copy: homeCopy });
export const homeDownload = z.strictObject({
  path: z.string(),
  url: z.string(),
  expires_at: isoTime,
  size: z.number().int(),
  mode: z.string(),
  mtime: isoTime,
  sha256: z.string().nullable(),
  home_copy: homeCopy,
});

export const healthAnswer = z.strictObject({ status: z.enum(['healthy', 'degraded']), database: z.string(), version: z.string(), started_at: isoTime });

/** Every error: {"error": {"code", "message", ...fields a caller can act on, e.g. path, expected_offset}}. */
export const errorAnswer = z.strictObject({
  error: z.looseObject({ code: z.string(), message: z.string() }),
});
