/**
 * Files in a running sandbox: read, write, list, stat, mkdir, delete, move.
 * Each call asks the sandbox's host to run the sandbox file tool as the
 * sandbox user inside the sandbox (host-agent/src/files/), so nothing is ever
 * read or written that the sandbox itself could not; the bytes of an inline
 * read or write (at most FILES_INLINE_MAX_BYTES) pass through a staging object
 * in S3, never through SSM. Every call counts as activity for the idle timer.
 */
import { createHash } from 'node:crypto';
import type { FileEntryInfo, FileError, FileListing, FilesAnswer, FilesRequest } from '../../contract/host-protocol';
import { ApiError, invalidState, StillInProgress, type ApiErrorCode } from './errors';
import { isProtectedFromDelete, sandboxFilePath, sandboxPath } from './file-paths';
import { deleteStagedObject, fileStagingObjects, getStagedJson, getStagedObject, newFileOperationId, putStagedObject, stagingFolder } from './file-staging';
import { filesInlineMaxBytes } from './gateway';
import { hostFailure, hosts } from './host-calls';
import { HostDispatchError } from './host-dispatch';
import type { Principal } from './http';
import type { SandboxRecord } from './sandbox-record';
import { isActive } from './sandbox-state';
import { getTenantSandbox, recordActivity } from './sandbox-store';
import type { ListFilesQuery } from './schemas';
import { waitSecondsUntil } from './sandboxes';

/** How long the host may take over a quick file operation before it stops it (a recursive delete of a big tree). */
const quickOperationSeconds = 130;

/** A directory entry as the API shows it. */
export interface FileEntryView {
  path: string;
  name: string;
  type: FileEntryInfo['type'];
  size: number;
  mode: string;
  mtime: string;
  link_target?: string;
}

function entryView(e: FileEntryInfo): FileEntryView {
  return {
    path: e.path,
    name: e.name,
    type: e.type,
    size: e.size,
    mode: e.mode,
    mtime: new Date(e.mtime_ms).toISOString(),
    ...(e.link_target !== undefined ? { link_target: e.link_target } : {}),
  };
}

const errorStatus: Record<FileError['code'], [number, ApiErrorCode]> = {
  not_found: [404, 'not_found'],
  permission_denied: [403, 'permission_denied'],
  is_a_directory: [409, 'is_a_directory'],
  not_a_directory: [409, 'not_a_directory'],
  exists: [409, 'exists'],
  not_empty: [409, 'exists'],
  not_a_file: [409, 'not_a_file'],
  no_space: [507, 'no_space'],
  too_large: [413, 'too_large'],
  checksum_mismatch: [422, 'checksum_mismatch'],
  invalid_archive: [422, 'invalid_archive'],
  extract_failed: [422, 'invalid_archive'],
  invalid_path: [400, 'validation_error'],
  busy: [409, 'conflict'],
  sandbox_not_running: [409, 'invalid_state'],
  // The bytes did not all arrive (a stream cut between S3, the host and the sandbox): nothing was written, a retry may pass.
  incomplete: [503, 'host_unavailable'],
  timeout: [504, 'host_timeout'],
  failed: [502, 'host_error'],
};

/** The API error for a file error: the status that fits, and the path it is about. */
export function fileApiError(e: FileError, hint = ''): ApiError {
  const [status, code] = errorStatus[e.code] ?? [502, 'host_error'];
  const headers: Record<string, string> = status === 503 ? { 'Retry-After': '2' } : {};
  return new ApiError(status, code, `${e.path}: ${e.message}${hint}`, headers, { path: e.path });
}

/** The tenant's sandbox, running, with the call recorded as activity. */
export async function activeSandbox(p: Principal, sandboxId: string): Promise<SandboxRecord> {
  const r = await getTenantSandbox(p.tenantId, sandboxId);
  if (!isActive(r.status)) {
    const hint =
      r.status === 'paused'
        ? " (resume it, or read its user's stored home at /users/{user_id}/home/files)"
        : ` (its user's stored home is at /users/${r.user_id}/home/files)`;
    throw invalidState(`sandbox ${sandboxId} is ${r.status}; files need a ready or running sandbox${hint}`);
  }
  await recordActivity(r, Date.now());
  return r;
}

/**
 * Runs one files request on the sandbox's host, within the API's time. Work
 * the host is still doing when the time is up answers 202 (it finishes on its own).
 */
async function onHost(r: SandboxRecord, request: FilesRequest, deadline: number, path: string): Promise<FilesAnswer> {
  try {
    return await hosts().dispatch(r.host_id, 'files', request, { timeoutSeconds: quickOperationSeconds, waitSeconds: waitSecondsUntil(deadline) });
  } catch (err) {
    if (err instanceof HostDispatchError && err.code === 'still_running') {
      throw new StillInProgress({
        status: 'in_progress',
        path,
        message: 'the sandbox host is still at it and finishes on its own; repeat the call to see where it ended',
      });
    }
    throw hostFailure(err, 'the file operation');
  }
}

function answerOrThrow<K extends keyof FilesAnswer>(answer: FilesAnswer, field: K, hint = ''): NonNullable<FilesAnswer[K]> {
  if (answer.error) throw fileApiError(answer.error, hint);
  const value = answer[field];
  if (value === undefined) throw new ApiError(502, 'host_error', `the host answered a files request without its ${String(field)}`);
  return value as NonNullable<FilesAnswer[K]>;
}

export interface FileContent {
  path: string;
  bytes: Buffer;
  size: number;
  mode: string;
  sha256: string;
  mtime: string;
}

/** GET /sandboxes/{id}/files: the whole file, up to FILES_INLINE_MAX_BYTES. */
export async function readSandboxFile(p: Principal, sandboxId: string, rawPath: string, deadline: number): Promise<FileContent> {
  const path = sandboxPath(rawPath);
  const r = await activeSandbox(p, sandboxId);
  const staging = stagingFolder(p.tenantId, sandboxId, newFileOperationId('op'));
  const dataKey = staging + fileStagingObjects.data;
  try {
    const answer = await onHost(r, { op: 'read', sandboxId, path, maxBytes: filesInlineMaxBytes, staging }, deadline, path);
    const content = answerOrThrow(
      answer,
      'content',
      `; files over ${filesInlineMaxBytes} bytes are read with POST /sandboxes/${sandboxId}/files/download (a presigned URL, up to 5 GiB)`,
    );
    const bytes = await getStagedObject(dataKey);
    if (!bytes) throw new ApiError(502, 'host_error', `${path}: the host read the file but its bytes were not staged`);
    const sha256 = createHash('sha256').update(bytes).digest('hex');
    if (bytes.length !== content.size || sha256 !== content.sha256) {
      throw new ApiError(
        502,
        'host_error',
        `${path}: the staged bytes (${bytes.length}, sha256 ${sha256}) are not what the sandbox read (${content.size}, ${content.sha256})`,
      );
    }
    return { path, bytes, size: content.size, mode: content.mode, sha256, mtime: new Date(content.mtime_ms).toISOString() };
  } finally {
    await deleteStagedObject(dataKey);
  }
}

/** PUT /sandboxes/{id}/files: the body becomes the whole file, atomically, owned by the sandbox user. */
export async function writeSandboxFile(
  p: Principal,
  sandboxId: string,
  q: { path: string; mode?: number; mkdirs: boolean },
  body: { bytes: Buffer; binary: boolean },
  deadline: number,
): Promise<{ path: string; size: number; sha256: string; mode: string }> {
  const path = sandboxFilePath(q.path);
  if (body.bytes.length > 0 && !body.binary) {
    throw new ApiError(
      415,
      'unsupported_media_type',
      'send the file as Content-Type: application/octet-stream: any other type reaches the API as text, and bytes that are not UTF-8 would be lost',
    );
  }
  if (body.bytes.length > filesInlineMaxBytes) {
    throw new ApiError(
      413,
      'too_large',
      `${path}: the body is ${body.bytes.length} bytes; at most ${filesInlineMaxBytes} go inline: upload larger files with POST /sandboxes/${sandboxId}/files/upload (a presigned URL, up to 5 GiB)`,
      {},
      { path },
    );
  }
  const r = await activeSandbox(p, sandboxId);
  const staging = stagingFolder(p.tenantId, sandboxId, newFileOperationId('op'));
  const dataKey = staging + fileStagingObjects.data;
  const sha256 = createHash('sha256').update(body.bytes).digest('hex');
  await putStagedObject(dataKey, body.bytes, 'application/octet-stream');
  try {
    const answer = await onHost(
      r,
      { op: 'write', sandboxId, path, staging, size: body.bytes.length, sha256, mkdirs: q.mkdirs, ...(q.mode !== undefined ? { mode: q.mode } : {}) },
      deadline,
      path,
    );
    return answerOrThrow(answer, 'written');
  } finally {
    await deleteStagedObject(dataKey);
  }
}

/** GET /sandboxes/{id}/files/stat: the entry itself (a symlink is described, not followed). */
export async function statSandboxFile(p: Principal, sandboxId: string, rawPath: string, deadline: number): Promise<FileEntryView> {
  const path = sandboxPath(rawPath);
  const r = await activeSandbox(p, sandboxId);
  return entryView(answerOrThrow(await onHost(r, { op: 'stat', sandboxId, path }, deadline, path), 'entry'));
}

/** Page tokens of a listing: bound to the directory and the recursion they were made for. */
interface ListToken {
  p: string;
  r: boolean;
  a: string[];
}

function encodeListToken(t: ListToken): string {
  return Buffer.from(JSON.stringify(t), 'utf8').toString('base64url');
}

export function decodeListToken(token: string | undefined, path: string, recursive: boolean): string[] | undefined {
  if (token === undefined) return undefined;
  try {
    const t = JSON.parse(Buffer.from(token, 'base64url').toString('utf8')) as ListToken;
    if (t.p !== path || t.r !== recursive || !Array.isArray(t.a) || !t.a.every((c) => typeof c === 'string')) throw new Error('foreign');
    return t.a;
  } catch {
    throw new ApiError(400, 'validation_error', 'next_token: is not a page token of this listing (same path and recursive)');
  }
}

export interface ListingView {
  path: string;
  entries: FileEntryView[];
  next_token?: string;
  /** Directories below `path` that could not be read (recursive listings). */
  skipped?: { path: string; code: string }[];
}

/** GET /sandboxes/{id}/files/list: one page of a directory (recursive: every entry below it, depth first). */
export async function listSandboxFiles(p: Principal, sandboxId: string, q: ListFilesQuery, deadline: number): Promise<ListingView> {
  const path = sandboxPath(q.path ?? '/home/agent');
  const after = decodeListToken(q.next_token, path, q.recursive);
  const r = await activeSandbox(p, sandboxId);
  const staging = stagingFolder(p.tenantId, sandboxId, newFileOperationId('op'));
  const answer = await onHost(r, { op: 'list', sandboxId, path, recursive: q.recursive, limit: q.limit, staging, ...(after ? { after } : {}) }, deadline, path);
  if (answer.error) throw fileApiError(answer.error);
  let listing = answer.listing;
  if (!listing && answer.listingKey) {
    try {
      listing = await getStagedJson<FileListing>(answer.listingKey);
    } finally {
      await deleteStagedObject(answer.listingKey);
    }
  }
  if (!listing) throw new ApiError(502, 'host_error', `${path}: the host answered a listing without its entries`);
  return {
    path,
    entries: listing.entries.map(entryView),
    ...(listing.after ? { next_token: encodeListToken({ p: path, r: q.recursive, a: listing.after }) } : {}),
    ...(listing.skipped.length > 0 ? { skipped: listing.skipped } : {}),
  };
}

/** POST /sandboxes/{id}/files/mkdir */
export async function makeSandboxDirectory(
  p: Principal,
  sandboxId: string,
  body: { path: string; parents: boolean },
  deadline: number,
): Promise<FileEntryView> {
  const path = sandboxPath(body.path);
  const r = await activeSandbox(p, sandboxId);
  return entryView(answerOrThrow(await onHost(r, { op: 'mkdir', sandboxId, path, parents: body.parents }, deadline, path), 'entry'));
}

/** DELETE /sandboxes/{id}/files: a file or link (never what it points to), or a directory (recursive: with everything in it). */
export async function deleteSandboxFile(
  p: Principal,
  sandboxId: string,
  q: { path: string; recursive: boolean },
  deadline: number,
): Promise<{ path: string; type: FileEntryInfo['type']; deleted: true }> {
  const path = sandboxPath(q.path);
  if (isProtectedFromDelete(path)) {
    throw new ApiError(400, 'validation_error', `path: ${path} is the root or the home itself; delete the entries inside it instead`, {}, { path });
  }
  const r = await activeSandbox(p, sandboxId);
  const deleted = answerOrThrow(await onHost(r, { op: 'delete', sandboxId, path, recursive: q.recursive }, deadline, path), 'deleted');
  return { ...deleted, deleted: true };
}

/** POST /sandboxes/{id}/files/move: a rename (a copy and delete across file systems); `overwrite` replaces what is at `to`. */
export async function moveSandboxFile(
  p: Principal,
  sandboxId: string,
  body: { from: string; to: string; overwrite: boolean },
  deadline: number,
): Promise<{ from: string; to: string; entry: FileEntryView }> {
  const from = sandboxPath(body.from, 'from');
  const to = sandboxPath(body.to, 'to');
  if (isProtectedFromDelete(from))
    throw new ApiError(400, 'validation_error', `from: ${from} is the root or the home itself and cannot be moved`, {}, { path: from });
  const r = await activeSandbox(p, sandboxId);
  const entry = answerOrThrow(await onHost(r, { op: 'move', sandboxId, from, to, overwrite: body.overwrite }, deadline, from), 'entry');
  return { from, to, entry: entryView(entry) };
}
