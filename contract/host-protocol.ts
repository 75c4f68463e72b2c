/**
 * The host-agent protocol: what the control plane asks a host to do through
 * SSM Run Command, and what the host-agent prints back (one JSON line).
 *
 * No caller-supplied text is ever spliced into shell text on the host. The
 * request is JSON, base64url-encoded (alphabet [A-Za-z0-9_-], inert in any
 * shell), and passed as one argument:
 *
 *   <HOST_AGENT_COMMAND> <verb> b64:<base64url(JSON)>
 *
 * A request too large for an SSM command parameter is staged in the storage
 * bucket and passed by reference (`s3:<key>`, key made of the same safe
 * alphabet plus `/` and `.`); the host-agent fetches and deletes it.
 */
import type { EgressPolicy } from './egress-policy';

/*
 * The request schemas the host-agent parses with are in host-requests.ts, so
 * a control-plane function that only needs this file's names, limits and key
 * layouts builds none of them at its cold start; their input types are
 * re-exported here.
 */
export type { CreateRequest, FilesRequest, ResumeRequest, StorageSpec } from './host-requests';

export const hostVerbs = ['create', 'destroy', 'pause', 'resume', 'sync', 'status', 'network', 'run', 'kill', 'stdin', 'drain', 'files'] as const;
export type HostVerb = (typeof hostVerbs)[number];

/**
 * Verbs only the host daemon can serve: a command (or a file transfer)
 * outlives the SSM call that started it, so the long-lived daemon must own it
 * (the CLI fallback refuses them).
 */
export const daemonOnlyVerbs: readonly HostVerb[] = ['run', 'kill', 'stdin', 'drain', 'files'];

/**
 * SSM Run Command workers a host needs (the SSM agent's Mds.CommandWorkersLimit,
 * 5 by default): every slot may have a lifecycle verb queued in the daemon and
 * a short command verb at once, plus room for the control plane's own calls.
 * The CDK writes it into the agent's configuration; the local SSM endpoint
 * emulates the same number.
 */
export function ssmCommandWorkersFor(slots: number): number {
  return 2 * slots + 4;
}

/** Label keys on every container the host-agent owns. */
export const containerLabels = {
  owner: 'dev.ephemeral-sandbox.owner',
  sandboxId: 'dev.ephemeral-sandbox.sandbox-id',
  tenantId: 'dev.ephemeral-sandbox.tenant-id',
  userId: 'dev.ephemeral-sandbox.user-id',
  createdAt: 'dev.ephemeral-sandbox.created-at',
  /** The host (HOST_ID env of the host-agent) that made the container. */
  hostId: 'dev.ephemeral-sandbox.host-id',
} as const;
export const ownerLabelValue = 'ephemeral-sandbox';

/** Largest inline encoded request; above it the request is staged in S3. */
export const maxInlineRequestChars = 24_000;

/**
 * Verbs whose requests carry a caller's data (env values, the sandbox
 * token, file paths): always staged in S3 (deleted once fetched), never in SSM command
 * text, which anyone with ssm:ListCommands reads and the agent keeps on disk.
 */
export const stagedVerbs: readonly HostVerb[] = ['create', 'files'];

/** SSM returns at most this many characters of a command's stdout. */
export const ssmStdoutCap = 24_000;
/** SSM returns at most this many characters of a command's stderr. */
export const ssmStderrCap = 8_000;

/** Smallest home a sandbox may have, in MB (ext4 and the caches of a few tools need room). */
export const minHomeDiskMb = 64;

/**
 * Where a moved paused sandbox's state waits: under its user's storage (next
 * to the hot and cold tiers, outside both, so neither a sync nor the sandbox
 * sees it) and its own id. Not under host-requests/: the bucket expires that
 * after a day, and a paused sandbox lives as long as its TTL.
 */
export function pausedStatePrefix(r: { tenant_id: string; user_id: string; sandbox_id: string }): string {
  return `tenants/${r.tenant_id}/users/${r.user_id}/sandboxes/${r.sandbox_id}/paused/`;
}

/** The objects under a paused state prefix: the host create request (env, token) and the /tmp archive (absent: /tmp was empty). */
export function pausedStateKeys(prefix: string): { request: string; tmp: string } {
  return { request: `${prefix}request.json`, tmp: `${prefix}tmp.tar` };
}

/**
 * Files. Every operation runs in the sandbox as its user (files/sandbox-tool.ts);
 * its bytes travel through a staging folder in the storage bucket, never
 * through SSM (which carries only the verb and the staged request's key):
 *   files-staging/<tenant>/<sandbox>/<operation id>/
 *     data         the bytes (an inline read or write, an upload, a download)
 *     spec.json    what an upload or download was asked for (the API writes it)
 *     result.json  how a transfer ended (the host writes it; the API answers from it)
 *     listing.json a directory page too large for the host's one-line answer
 * Folders are deleted once used, and a lifecycle rule expires what is left.
 */
export const fileStagingPrefix = 'files-staging/';
export const fileStagingObjects = { data: 'data', spec: 'spec.json', result: 'result.json', listing: 'listing.json' } as const;
export function fileStagingFolder(tenantId: string, sandboxIdValue: string, operationId: string): string {
  return `${fileStagingPrefix}${tenantId}/${sandboxIdValue}/${operationId}/`;
}
/**
 * The entry a transfer holds in its sandbox's `execs` (with the time it must
 * have ended by): like a running command, it keeps the reaper from ending the
 * sandbox for idleness; the host removes it when the transfer ends.
 */
export function transferActivityKey(transferId: string): string {
  return `xfer-${transferId}`;
}

/** The longest path the API takes, in bytes (Linux's PATH_MAX). */
export const maxFilePathBytes = 4096;
/** The largest single object S3 takes in one PUT (a presigned upload is one PUT). */
export const maxUploadBytes = 5 * 1024 ** 3;
/** A transfer (upload or download) is stopped past this. */
export const fileTransferTimeoutSeconds = 3600;
/** Why a file operation failed, named for the API (which maps each to its status). */
export type FileErrorCode =
  | 'not_found'
  | 'permission_denied'
  | 'is_a_directory'
  | 'not_a_directory'
  | 'exists'
  | 'not_empty'
  | 'not_a_file'
  | 'no_space'
  | 'too_large'
  | 'checksum_mismatch'
  | 'invalid_archive'
  | 'incomplete'
  | 'invalid_path'
  | 'busy'
  | 'extract_failed'
  | 'sandbox_not_running'
  | 'timeout'
  | 'failed';

export interface FileError {
  code: FileErrorCode;
  /** The path the error is about (the caller's, or the one inside it that failed). */
  path: string;
  message: string;
}

export interface FileEntryInfo {
  path: string;
  name: string;
  type: 'file' | 'dir' | 'symlink' | 'other';
  size: number;
  /** Permission bits, four octal digits. */
  mode: string;
  mtime_ms: number;
  link_target?: string;
}

export interface FileListing {
  entries: FileEntryInfo[];
  /** Set when there is more: the last entry's components below the listed directory. */
  after?: string[];
  /** Directories below the listed one that could not be read (recursive listings). */
  skipped: { path: string; code: string }[];
}

/** What a finished transfer produced (result.json, and the API's answer). */
export interface TransferResult {
  path: string;
  size: number;
  sha256: string;
  /** Uploads of a file: its mode. */
  mode?: string;
  /** Uploads with extract: the entries unpacked. */
  entries?: number;
  /** Downloads as an archive: what tar could not read (unreadable files), first lines. */
  warnings?: string[];
}

export type TransferState =
  | { status: 'running' }
  | { status: 'done'; result: TransferResult; finished_at: string }
  | { status: 'failed'; error: FileError; finished_at: string };

/** The host's answer to a files request: the field of its operation, or `error`. */
export interface FilesAnswer {
  error?: FileError;
  /** stat, mkdir, move */
  entry?: FileEntryInfo;
  /** list, when the page fits the answer */
  listing?: FileListing;
  /** list, when it did not: the listing.json key in the staging folder */
  listingKey?: string;
  /** read: the bytes are the staging folder's data object */
  content?: { size: number; sha256: string; mode: string; mtime_ms: number };
  /** write */
  written?: { path: string; size: number; sha256: string; mode: string };
  /** delete */
  deleted?: { path: string; type: FileEntryInfo['type'] };
  /** upload, download */
  transfer?: TransferState;
}

/** Budget, in bytes of JSON, for a listing the host's answer carries inline (below SSM's stdout cap). */
export const listingAnswerBudgetChars = 16_000;

export interface CreateResult {
  containerId: string;
  /** ms the host spent: pull/create/start and hot sync. */
  hostMs: number;
  /** True when a warm pool container was claimed instead of a cold Docker create and start. */
  pooled?: boolean;
  hotSync?: SyncReport;
}

/** Where a command stands, as the host last recorded it. */
export interface CommandSnapshot {
  status: 'pending' | 'running' | 'exited' | 'timed_out' | 'killed' | 'lost';
  exitCode: number | null;
  startedAt?: string;
  endedAt?: string;
  durationMs?: number;
  finalCwd?: string;
  endReason?: string;
  endDetail?: string;
  stdoutBytes: number;
  stderrBytes: number;
  stdoutTotalBytes: number;
  stderrTotalBytes: number;
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
}

export interface RunResult {
  command: CommandSnapshot;
  /**
   * The whole output, decoded as UTF-8, when the command ended within
   * `answerWithinMs` and both streams fit this answer; otherwise read it
   * from S3 (it is there either way).
   */
  output?: { stdout: string; stderr: string };
}

/** Budget, in bytes of JSON, for the output a run answer may carry inline (below SSM's stdout cap). */
export const runOutputBudgetChars = 16_000;

/**
 * Where a command's output lives in the storage bucket, written by the host
 * while the command runs and read by the API by offset:
 *   commands/<tenant>/<sandbox>/<command>/<stream>/<end>.<start>
 * with offsets as 16 zero-padded digits. Chunks are written in order and
 * never overlap, so the chunk holding byte N is the first key after
 * `<stream>/<N>.~` (keys sort by their end offset).
 */
export function commandOutputPrefix(tenantId: string, sandboxIdValue: string, commandIdValue: string): string {
  return `commands/${tenantId}/${sandboxIdValue}/${commandIdValue}/`;
}
const offsetDigits = 16;
const pad = (n: number) => String(n).padStart(offsetDigits, '0');
export function outputChunkKey(prefix: string, stream: 'stdout' | 'stderr', start: number, end: number): string {
  return `${prefix}${stream}/${pad(end)}.${pad(start)}`;
}
/** The ListObjectsV2 StartAfter that lists the chunk holding byte `offset` first. */
export function outputChunkListStart(prefix: string, stream: 'stdout' | 'stderr', offset: number): string {
  return `${prefix}${stream}/${pad(offset)}.~`;
}
export function parseOutputChunkKey(key: string): { start: number; end: number } | undefined {
  const m = /\/(\d{16})\.(\d{16})$/.exec(key);
  return m ? { end: Number(m[1]), start: Number(m[2]) } : undefined;
}

export interface DestroyResult {
  /** False when there was no container to remove (already gone). */
  removed: boolean;
  hotSync?: SyncReport;
  /** Set when a graceful end could not sync the home: it is kept on the host and synced later. */
  keptHome?: { path: string; reason: string };
}

export interface SyncReport {
  uploaded: number;
  downloaded: number;
  deleted: number;
  skipped: number;
  bytes: number;
  ms: number;
}

/** /tmp kept across a pause: the archive pause left on the host. */
export interface TmpArchiveReport {
  bytes: number;
  /** What was not kept (files their owner cannot read, root's files, sockets), first lines only. */
  warnings: string[];
  ms: number;
}

/** /tmp put back by a resume. */
export interface TmpRestoreReport {
  bytes: number;
  ms: number;
  /** Other users' files that could not be put back (the sandbox user's never fail silently: the resume fails). */
  warnings?: string[];
}

export interface HostStatus {
  containers: { sandboxId: string; containerId: string; state: string }[];
}

export type HostResults = {
  create: CreateResult;
  run: RunResult;
  kill: { command: CommandSnapshot };
  stdin: { delivered: number };
  destroy: DestroyResult;
  /** `tmp`: present when /tmp was archived (a running container was paused). */
  pause: { paused: boolean; tmp?: TmpArchiveReport };
  /** `tmp`: present when a kept /tmp was restored. */
  resume: { resumed: boolean; tmp?: TmpRestoreReport };
  sync: SyncReport;
  status: HostStatus;
  network: { egress: EgressPolicy };
  /** `started`: this call started the drain (false: it was draining already). */
  drain: { draining: true; started: boolean; sandboxes: number };
  files: FilesAnswer;
};

/**
 * Error codes a host can answer; the control plane maps them to API errors.
 * `unavailable`: the host cannot serve this now (its daemon is not running); retry shortly.
 */
export const hostErrorCodes = ['bad_request', 'not_found', 'quota_exceeded', 'docker_error', 'storage_error', 'unavailable', 'internal_error'] as const;
export type HostErrorCode = (typeof hostErrorCodes)[number];
export type HostEnvelope<V extends HostVerb> = { ok: true; result: HostResults[V] } | { ok: false; error: { code: HostErrorCode; message: string } };

export function encodeInline(request: unknown): string {
  return 'b64:' + Buffer.from(JSON.stringify(request), 'utf8').toString('base64url');
}

/** Decodes `b64:...` or returns the S3 key of `s3:...`. */
export function decodeArgument(arg: string): { inline: unknown } | { s3Key: string } {
  if (arg.startsWith('b64:')) {
    const body = arg.slice(4);
    if (!/^[A-Za-z0-9_-]*$/.test(body)) throw new Error('request is not base64url');
    return { inline: JSON.parse(Buffer.from(body, 'base64url').toString('utf8')) };
  }
  if (arg.startsWith('s3:')) {
    const key = arg.slice(3);
    if (!/^[A-Za-z0-9_\-/.]{1,512}$/.test(key) || key.includes('..')) throw new Error('bad staged request key');
    return { s3Key: key };
  }
  throw new Error('request argument must start with b64: or s3:');
}

/** The S3 key prefix under which oversized requests are staged. */
export const stagedRequestPrefix = 'host-requests/';
