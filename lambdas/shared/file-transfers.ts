/**
 * Large files in and out of a sandbox, up to 5 GiB, never through a Lambda:
 *
 * - upload: the API records what is asked (spec.json in the transfer's staging
 *   folder) and answers a presigned PUT URL for one object (`data`); the
 *   client PUTs the bytes to S3; `complete` asks the host, which streams the
 *   object into the sandbox (a temporary file renamed into place, or an
 *   archive unpacked beside the target and moved in), checking the sha256
 *   given before anything is written.
 * - download: the host streams the file (or the directory as a tar.gz) from
 *   the sandbox into the folder's `data` object; the API answers a presigned
 *   GET URL for it.
 *
 * The host daemon owns a transfer from its start to its end and records how
 * it ended in result.json; a call that runs out of the API's time answers 202
 * and the next one (complete again, or GET the download) follows it. While a
 * transfer runs it holds an entry in the sandbox's `execs`, so the reaper
 * never ends the sandbox for idleness under it.
 */
import {
  fileTransferTimeoutSeconds,
  maxUploadBytes,
  transferActivityKey,
  type FilesAnswer,
  type FilesRequest,
  type TransferResult,
  type TransferState,
} from '../../contract/host-protocol';
import { ApiError, invalidState, notFound } from './errors';
import { sandboxFilePath, sandboxPath } from './file-paths';
import { activeSandbox, fileApiError } from './files';
import { fileStagingObjects, getStagedJson, newFileOperationId, putStagedObject, stagedObjectSize, stagingFolder } from './file-staging';
import { hostFailure, hosts } from './host-calls';
import { HostDispatchError } from './host-dispatch';
import type { Principal } from './http';
import { presignedDownload, presignedUpload } from './presign';
import type { SandboxRecord } from './sandbox-record';
import { isActive } from './sandbox-state';
import { beginExec, getTenantSandbox } from './sandbox-store';
import type { DownloadBody, UploadBody } from './schemas';

/** Time kept for answering after waiting on the host. */
const answerReserveMs = 2_000;
const uploadIdPattern = /^upl-[a-z0-9]{20}$/;
const downloadIdPattern = /^dl-[a-z0-9]{20}$/;

/** What an upload or download was asked for: spec.json, written by the API before anything runs. */
interface TransferSpec {
  kind: 'upload' | 'download';
  path: string;
  sha256?: string;
  extract?: 'tar' | 'tar.gz';
  mode?: number;
  mkdirs?: boolean;
  archive?: 'tar.gz';
  created_at: string;
}

export interface UploadTicket {
  upload_id: string;
  path: string;
  method: 'PUT';
  url: string;
  expires_at: string;
  max_bytes: number;
}

/** POST /sandboxes/{id}/files/upload: a presigned PUT for one staging object. */
export async function startUpload(p: Principal, sandboxId: string, body: UploadBody): Promise<UploadTicket> {
  const path = body.extract ? sandboxPath(body.path) : sandboxFilePath(body.path);
  await activeSandbox(p, sandboxId);
  const uploadId = newFileOperationId('upl');
  const folder = stagingFolder(p.tenantId, sandboxId, uploadId);
  const spec: TransferSpec = {
    kind: 'upload',
    path,
    ...(body.sha256 ? { sha256: body.sha256 } : {}),
    ...(body.extract ? { extract: body.extract } : {}),
    ...(body.mode !== undefined ? { mode: body.mode } : {}),
    mkdirs: body.mkdirs,
    created_at: new Date().toISOString(),
  };
  await putStagedObject(folder + fileStagingObjects.spec, JSON.stringify(spec), 'application/json');
  const signed = await presignedUpload(folder + fileStagingObjects.data);
  return { upload_id: uploadId, path, method: 'PUT', url: signed.url, expires_at: signed.expires_at, max_bytes: maxUploadBytes };
}

export type TransferAnswer<T> = { done: true; view: T } | { done: false; view: { status: 'in_progress'; path: string } & Record<string, unknown> };

/** The transfer's recorded end, as the caller sees it (a failure is the error it was). */
function ended<T>(state: TransferState, view: (r: TransferResult) => T): TransferAnswer<T> | undefined {
  if (state.status === 'done') return { done: true, view: view(state.result) };
  if (state.status === 'failed') throw fileApiError(state.error);
  return undefined;
}

/**
 * Starts (or joins) the transfer on the sandbox's host and waits for it
 * within the API's time; then reads its record until the deadline.
 */
async function runTransfer(
  r: SandboxRecord,
  request: FilesRequest & { op: 'upload' | 'download' },
  folder: string,
  o: { deadline: number; waitMs: number },
): Promise<TransferState> {
  const { deadline } = o;
  const now = Date.now();
  const key = transferActivityKey(request.transferId);
  // Awake while it runs (once per transfer: a follow-up call finds the entry there).
  if (r.execs?.[key] === undefined) await beginExec(r, key, now + (fileTransferTimeoutSeconds + 60) * 1000, now);
  const budgetMs = Math.max(0, deadline - answerReserveMs - now);
  let answer: FilesAnswer;
  try {
    answer = await hosts().dispatch(
      r.host_id,
      'files',
      { ...request, answerWithinMs: Math.min(o.waitMs, 20_000, Math.max(0, budgetMs - 3_000)) },
      {
        timeoutSeconds: 60,
        waitSeconds: Math.max(0.5, budgetMs / 1000),
      },
    );
  } catch (err) {
    if (err instanceof HostDispatchError && err.code === 'still_running')
      return (await getStagedJson<TransferState>(folder + fileStagingObjects.result)) ?? { status: 'running' };
    throw hostFailure(err, `the ${request.op}`);
  }
  if (answer.error) throw fileApiError(answer.error);
  return answer.transfer ?? { status: 'running' };
}

export interface UploadView extends TransferResult {
  upload_id: string;
}

/** POST /sandboxes/{id}/files/upload/{upload_id}/complete: the host streams the object into the sandbox. Repeat it to follow a 202. */
export async function completeUpload(p: Principal, sandboxId: string, uploadId: string, deadline: number): Promise<TransferAnswer<UploadView>> {
  if (!uploadIdPattern.test(uploadId)) throw notFound(`upload ${uploadId.slice(0, 64)}`);
  const r = await getTenantSandbox(p.tenantId, sandboxId);
  const folder = stagingFolder(p.tenantId, sandboxId, uploadId);
  const view = (result: TransferResult): UploadView => ({ upload_id: uploadId, ...result });
  const recorded = await getStagedJson<TransferState>(folder + fileStagingObjects.result);
  if (recorded) {
    const answer = ended(recorded, view);
    if (answer) return answer;
  }
  const spec = await getStagedJson<TransferSpec>(folder + fileStagingObjects.spec);
  if (spec?.kind !== 'upload') throw notFound(`upload ${uploadId} of sandbox ${sandboxId} (unknown, or its staging area expired)`);
  const size = await stagedObjectSize(folder + fileStagingObjects.data);
  if (size === undefined) {
    // The host may have finished between the two reads: it records the result before it drops the object.
    const justEnded = await getStagedJson<TransferState>(folder + fileStagingObjects.result);
    const answer = justEnded && ended(justEnded, view);
    if (answer) return answer;
    throw new ApiError(
      409,
      'conflict',
      `upload ${uploadId}: nothing was uploaded yet; PUT the bytes to the upload's url first (it is valid until the expires_at it came with)`,
      {},
      {
        path: spec.path,
      },
    );
  }
  if (size > maxUploadBytes)
    throw new ApiError(413, 'too_large', `${spec.path}: the upload is ${size} bytes; at most ${maxUploadBytes}`, {}, { path: spec.path });
  if (!isActive(r.status)) throw invalidState(`sandbox ${sandboxId} is ${r.status}; an upload completes into a ready or running sandbox`);
  const state = await runTransfer(
    r,
    {
      op: 'upload',
      sandboxId,
      transferId: uploadId,
      staging: folder,
      path: spec.path,
      size,
      mkdirs: spec.mkdirs ?? false,
      ...(spec.sha256 ? { sha256: spec.sha256 } : {}),
      ...(spec.extract ? { extract: spec.extract } : {}),
      ...(spec.mode !== undefined ? { mode: spec.mode } : {}),
    },
    folder,
    { deadline, waitMs: 20_000 },
  );
  const answer = ended(state, view);
  return answer ?? { done: false, view: { upload_id: uploadId, status: 'in_progress', path: spec.path } };
}

export interface DownloadView extends TransferResult {
  download_id: string;
  url: string;
  expires_at: string;
  archive?: 'tar.gz';
}

async function downloadView(downloadId: string, folder: string, spec: TransferSpec, result: TransferResult): Promise<DownloadView> {
  const signed = await presignedDownload(folder + fileStagingObjects.data);
  return { download_id: downloadId, ...result, ...(spec.archive ? { archive: spec.archive } : {}), url: signed.url, expires_at: signed.expires_at };
}

/** POST /sandboxes/{id}/files/download: the host streams the file (or directory, as tar.gz) to S3; answers a presigned GET. */
export async function startDownload(p: Principal, sandboxId: string, body: DownloadBody, deadline: number): Promise<TransferAnswer<DownloadView>> {
  const path = sandboxPath(body.path);
  const r = await activeSandbox(p, sandboxId);
  const downloadId = newFileOperationId('dl');
  const folder = stagingFolder(p.tenantId, sandboxId, downloadId);
  const spec: TransferSpec = { kind: 'download', path, ...(body.archive ? { archive: body.archive } : {}), created_at: new Date().toISOString() };
  await putStagedObject(folder + fileStagingObjects.spec, JSON.stringify(spec), 'application/json');
  return followOnHost(r, downloadId, folder, spec, { deadline, waitMs: 20_000 });
}

async function followOnHost(
  r: SandboxRecord,
  downloadId: string,
  folder: string,
  spec: TransferSpec,
  o: { deadline: number; waitMs: number },
): Promise<TransferAnswer<DownloadView>> {
  const state = await runTransfer(
    r,
    { op: 'download', sandboxId: r.sandbox_id, transferId: downloadId, staging: folder, path: spec.path, ...(spec.archive ? { archive: spec.archive } : {}) },
    folder,
    o,
  );
  if (state.status === 'done') return { done: true, view: await downloadView(downloadId, folder, spec, state.result) };
  if (state.status === 'failed') throw fileApiError(state.error);
  return { done: false, view: { download_id: downloadId, status: 'in_progress', path: spec.path } };
}

/** GET /sandboxes/{id}/files/download/{download_id}?wait=S: the download once it is staged (a fresh URL each time). */
export async function followDownload(
  p: Principal,
  sandboxId: string,
  downloadId: string,
  waitSeconds: number,
  deadline: number,
): Promise<TransferAnswer<DownloadView>> {
  if (!downloadIdPattern.test(downloadId)) throw notFound(`download ${downloadId.slice(0, 64)}`);
  const r = await getTenantSandbox(p.tenantId, sandboxId);
  const folder = stagingFolder(p.tenantId, sandboxId, downloadId);
  const spec = await getStagedJson<TransferSpec>(folder + fileStagingObjects.spec);
  if (spec?.kind !== 'download') throw notFound(`download ${downloadId} of sandbox ${sandboxId} (unknown, or its staging area expired)`);
  const recorded = await getStagedJson<TransferState>(folder + fileStagingObjects.result);
  if (recorded?.status === 'done') return { done: true, view: await downloadView(downloadId, folder, spec, recorded.result) };
  if (recorded?.status === 'failed') throw fileApiError(recorded.error);
  if (!isActive(r.status))
    throw invalidState(`sandbox ${sandboxId} is ${r.status} and download ${downloadId} never finished; start a new download in a running sandbox`);
  // Not recorded yet: its host joins the transfer it runs (waiting up to `wait` for its end), or runs it again if it lost it (a restart).
  return followOnHost(r, downloadId, folder, spec, { deadline, waitMs: waitSeconds * 1000 });
}
