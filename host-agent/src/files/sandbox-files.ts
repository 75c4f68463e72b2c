/**
 * The `files` verb on a host: every operation runs the sandbox file tool in
 * the sandbox (exec-tool.ts), and its bytes go through the operation's staging
 * folder in S3, never through SSM.
 *
 * Quick operations (stat, list, read, write, mkdir, delete, move) answer in
 * the SSM call. Uploads and downloads (up to 5 GiB) outlive it: the host
 * daemon owns each transfer from its start to its end, however many calls ask
 * about it (a second `complete` joins the one running), and records how it
 * ended in the folder's result.json, where the API reads it. Once recorded, a
 * transfer is never run again; one the daemon did not live to record (its
 * tool sees its streams close and leaves nothing half-written) runs again on
 * the next call about it.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import type { z } from 'zod';
import { logger } from '../../../lambdas/shared/logger';
import { endExec, getSandbox } from '../../../lambdas/shared/sandbox-store';
import type { HostConfig } from '../config';
import type { DockerClient } from '../docker';
import {
  fileStagingObjects,
  fileTransferTimeoutSeconds,
  listingAnswerBudgetChars,
  transferActivityKey,
  type FileEntryInfo,
  type FileError,
  type FileListing,
  type FilesAnswer,
  type TransferResult,
  type TransferState,
} from '../../../contract/host-protocol';
import type { filesRequest } from '../../../contract/host-requests';
import { fileError, runSandboxTool, type ToolOutcome } from './exec-tool';
import { deleteStaged, openStaged, putStaged, readStagedJson, StagedObjectWriter, type Staging } from './staging';

type Request = z.output<typeof filesRequest>;
type Of<O extends Request['op']> = Extract<Request, { op: O }>;

/** Quick operations are stopped past this (a recursive delete of a large tree is the slowest). */
const quickTimeoutMs = 120_000;
/** A listing the tool prints is at most this (it pages by bytes too), with room for JSON framing. */
const listingPageBytes = 1024 * 1024;
/** Lines of tar's messages a download's warnings carry. */
const maxWarnings = 20;

export interface SandboxFilesOptions {
  docker: DockerClient;
  hostConfig: HostConfig;
  s3: S3Client;
  bucket: string;
}

interface Transfer {
  sandboxId: string;
  done: Promise<TransferState>;
  controller: AbortController;
}

const finishedAt = () => new Date().toISOString();
const failed = (error: FileError): TransferState => ({ status: 'failed', error, finished_at: finishedAt() });

/** Reads what tar said when an archive would not unpack, and names the cause. */
export function extractFailure(error: FileError, stderr: string): FileError {
  if (error.code !== 'extract_failed') return error;
  const lines = stderr
    .split('\n')
    .map((l) => l.replace(/^\/usr\/bin\/tar: /, '').trim())
    .filter((l) => l && !/^Exiting with failure status|^Error is not recoverable|^Child returned status/.test(l));
  const detail = lines.slice(0, 5).join('; ') || error.message;
  if (/No space left on device|Disk quota exceeded/.test(stderr))
    return fileError('no_space', error.path, `the archive does not fit: ${detail}; nothing was extracted`);
  if (/Permission denied|Read-only file system/.test(stderr)) return fileError('permission_denied', error.path, `${detail}; nothing was extracted`);
  return fileError('invalid_archive', error.path, `the archive could not be unpacked (${detail}); nothing was extracted`);
}

export class SandboxFiles {
  private readonly transfers = new Map<string, Transfer>();
  private readonly staging: Staging;

  constructor(private readonly o: SandboxFilesOptions) {
    this.staging = { s3: o.s3, bucket: o.bucket };
  }

  /** Transfers this daemon runs now. */
  get size(): number {
    return this.transfers.size;
  }

  async handle(req: Request): Promise<FilesAnswer> {
    switch (req.op) {
      case 'stat':
        return this.entryOf(await this.tool<{ entry: FileEntryInfo }>(req.sandboxId, 'stat', { path: req.path }));
      case 'mkdir':
        return this.entryOf(await this.tool<{ entry: FileEntryInfo }>(req.sandboxId, 'mkdir', { path: req.path, parents: req.parents }));
      case 'move':
        return this.entryOf(await this.tool<{ entry: FileEntryInfo }>(req.sandboxId, 'move', { from: req.from, to: req.to, overwrite: req.overwrite }));
      case 'delete': {
        const out = await this.tool<{ path: string; type: FileEntryInfo['type'] }>(req.sandboxId, 'delete', { path: req.path, recursive: req.recursive });
        return out.ok ? { deleted: out.value } : { error: out.error };
      }
      case 'list':
        return this.list(req);
      case 'read':
        return this.read(req);
      case 'write':
        return this.write(req);
      case 'upload':
      case 'download':
        return { transfer: await this.transfer(req) };
    }
  }

  private tool<T>(
    sandboxId: string,
    op: string,
    args: Record<string, unknown>,
    io: Partial<Parameters<typeof runSandboxTool>[5]> = {},
  ): Promise<ToolOutcome<T>> {
    return runSandboxTool<T>(this.o.docker, this.o.hostConfig, sandboxId, op, args, { timeoutMs: quickTimeoutMs, ...io });
  }

  private entryOf(out: ToolOutcome<{ entry: FileEntryInfo }>): FilesAnswer {
    return out.ok ? { entry: out.value.entry } : { error: out.error };
  }

  private async list(req: Of<'list'>): Promise<FilesAnswer> {
    const chunks: Buffer[] = [];
    let bytes = 0;
    const out = await this.tool<{ count: number }>(
      req.sandboxId,
      'list',
      { path: req.path, recursive: req.recursive, limit: req.limit, page_bytes: listingPageBytes, ...(req.after ? { after: req.after } : {}) },
      {
        onStdout: (chunk) => {
          bytes += chunk.length;
          // The tool bounds its page; this bounds what a broken tool could make the host hold.
          if (bytes > 4 * listingPageBytes) throw fileError('failed', req.path, 'the listing was larger than any page should be');
          chunks.push(chunk);
        },
      },
    );
    if (!out.ok) return { error: out.error };
    const text = Buffer.concat(chunks).toString('utf8');
    if (text.length <= listingAnswerBudgetChars) return { listing: JSON.parse(text) as FileListing };
    const key = req.staging + fileStagingObjects.listing;
    await putStaged(this.staging, key, text, 'application/json');
    return { listingKey: key };
  }

  private async read(req: Of<'read'>): Promise<FilesAnswer> {
    const chunks: Buffer[] = [];
    let bytes = 0;
    const out = await this.tool<{ size: number; sha256: string; mode: string; mtime_ms: number }>(
      req.sandboxId,
      'read',
      { path: req.path, max_bytes: req.maxBytes },
      {
        onStdout: (chunk) => {
          bytes += chunk.length;
          if (bytes > req.maxBytes) throw fileError('too_large', req.path, `is larger than ${req.maxBytes} bytes`);
          chunks.push(chunk);
        },
      },
    );
    if (!out.ok) return { error: out.error };
    if (out.value.size !== bytes) return { error: fileError('failed', req.path, `the tool read ${out.value.size} bytes but ${bytes} arrived`) };
    await putStaged(this.staging, req.staging + fileStagingObjects.data, Buffer.concat(chunks), 'application/octet-stream');
    return { content: out.value };
  }

  private async write(req: Of<'write'>): Promise<FilesAnswer> {
    const opened = await openStaged(this.staging, req.staging + fileStagingObjects.data);
    if (!opened) return { error: fileError('failed', req.path, 'the bytes to write were not staged (or were already consumed)') };
    if (opened.size !== req.size) {
      opened.body.destroy();
      return { error: fileError('failed', req.path, `the staged bytes are ${opened.size} bytes, not the ${req.size} sent`) };
    }
    const out = await this.tool<{ path: string; size: number; sha256: string; mode: string }>(
      req.sandboxId,
      'write',
      { path: req.path, size: req.size, sha256: req.sha256, mkdirs: req.mkdirs, ...(req.mode !== undefined ? { mode: req.mode } : {}) },
      { stdin: opened.body },
    );
    return out.ok ? { written: out.value } : { error: out.error };
  }

  /** Starts a transfer (once) or joins the one running, and answers where it stands after at most `answerWithinMs`. */
  private async transfer(req: Of<'upload'> | Of<'download'>): Promise<TransferState> {
    const key = `${req.sandboxId}/${req.transferId}`;
    let t = this.transfers.get(key);
    if (!t) {
      const recorded = await readStagedJson<TransferState>(this.staging, req.staging + fileStagingObjects.result);
      if (recorded) return recorded;
      // A second request may have started it while the first read the record.
      t = this.transfers.get(key) ?? this.launch(key, req);
    }
    let timer: NodeJS.Timeout | undefined;
    const state = await Promise.race([t.done, new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), req.answerWithinMs)))]);
    clearTimeout(timer);
    return state ?? { status: 'running' };
  }

  private launch(key: string, req: Of<'upload'> | Of<'download'>): Transfer {
    const controller = new AbortController();
    const run = async (): Promise<TransferState> => {
      let state: TransferState;
      try {
        state = req.op === 'upload' ? await this.upload(req, controller.signal) : await this.download(req, controller.signal);
      } catch (err) {
        state = failed(fileError('failed', req.path, `the host could not finish the transfer: ${(err as Error).message}`));
      }
      try {
        await putStaged(this.staging, req.staging + fileStagingObjects.result, JSON.stringify(state), 'application/json', 10 * 60_000);
      } catch (err) {
        // Nothing records it: the next call about it runs it again, which writes the same file again.
        logger.error('files: could not record how a transfer ended', { sandboxId: req.sandboxId, transferId: req.transferId, err });
      }
      // Only now: a complete that finds no result must still find the upload's object (not a missing one it would call "nothing uploaded yet").
      if (req.op === 'upload') await this.dropUploadObjects(req.staging);
      await this.releaseActivity(req.sandboxId, req.transferId);
      return state;
    };
    const transfer: Transfer = { sandboxId: req.sandboxId, controller, done: run() };
    this.transfers.set(key, transfer);
    void transfer.done.finally(() => this.transfers.delete(key));
    return transfer;
  }

  /** The API held the sandbox awake for this transfer (an exec entry on its record): it is over now. */
  private async releaseActivity(sandboxId: string, transferId: string): Promise<void> {
    const entry = transferActivityKey(transferId);
    try {
      const sandbox = await getSandbox(sandboxId);
      if (sandbox?.execs?.[entry] !== undefined) await endExec(sandbox, entry, undefined, Date.now());
    } catch (err) {
      // The entry names its own end time: past it, the reaper no longer counts it.
      logger.warn('files: could not clear a finished transfer from its sandbox record', { sandboxId, transferId, err });
    }
  }

  private async upload(req: Of<'upload'>, signal: AbortSignal): Promise<TransferState> {
    const dataKey = req.staging + fileStagingObjects.data;
    const opened = await openStaged(this.staging, dataKey);
    if (!opened) return failed(fileError('not_found', req.path, "nothing was uploaded to this upload's URL (or it was already used)"));
    try {
      const io = { stdin: opened.body, timeoutMs: fileTransferTimeoutSeconds * 1000, signal };
      if (req.extract) {
        const out = await this.tool<{ size: number; sha256: string; entries: number }>(
          req.sandboxId,
          'extract',
          { path: req.path, size: opened.size, extract: req.extract, ...(req.sha256 ? { sha256: req.sha256 } : {}) },
          io,
        );
        if (!out.ok) return failed(extractFailure(out.error, out.stderr));
        return {
          status: 'done',
          result: { path: req.path, size: out.value.size, sha256: out.value.sha256, entries: out.value.entries },
          finished_at: finishedAt(),
        };
      }
      const out = await this.tool<{ size: number; sha256: string; mode: string }>(
        req.sandboxId,
        'write',
        {
          path: req.path,
          size: opened.size,
          mkdirs: req.mkdirs,
          ...(req.sha256 ? { sha256: req.sha256 } : {}),
          ...(req.mode !== undefined ? { mode: req.mode } : {}),
        },
        io,
      );
      if (!out.ok) return failed(out.error);
      return { status: 'done', result: { path: req.path, size: out.value.size, sha256: out.value.sha256, mode: out.value.mode }, finished_at: finishedAt() };
    } finally {
      opened.body.destroy();
    }
  }

  /** An upload's object and spec are used once, whatever the outcome (a failed upload starts again with a new URL). */
  private async dropUploadObjects(staging: string): Promise<void> {
    for (const name of [fileStagingObjects.data, fileStagingObjects.spec]) {
      await deleteStaged(this.staging, staging + name).catch((err) =>
        logger.warn('files: staged upload not deleted; the lifecycle rule will', { key: staging + name, err }),
      );
    }
  }

  private async download(req: Of<'download'>, signal: AbortSignal): Promise<TransferState> {
    const writer = new StagedObjectWriter(this.staging, req.staging + fileStagingObjects.data, req.archive ? 'application/gzip' : 'application/octet-stream');
    const out = await this.tool<{ size?: number; sha256?: string; tar_exit?: number }>(
      req.sandboxId,
      req.archive ? 'archive' : 'read',
      { path: req.path },
      {
        onStdout: (chunk) => writer.write(chunk),
        timeoutMs: fileTransferTimeoutSeconds * 1000,
        signal,
      },
    );
    if (!out.ok) {
      await writer.abort().catch((err) => logger.warn("files: could not abort a failed download's upload; the lifecycle rule will", { err }));
      return failed(out.error);
    }
    const stored = await writer.finish();
    if (!req.archive && (out.value.size !== stored.size || out.value.sha256 !== stored.sha256)) {
      return failed(
        fileError(
          'failed',
          req.path,
          `the sandbox read ${out.value.size} bytes (sha256 ${out.value.sha256}) but ${stored.size} bytes (sha256 ${stored.sha256}) were stored`,
        ),
      );
    }
    const result: TransferResult = { path: req.path, size: stored.size, sha256: stored.sha256 };
    if (req.archive && out.value.tar_exit !== 0) {
      // tar skipped what the sandbox user cannot read: the archive has the rest, and the answer says what is missing.
      const lines = out.stderr
        .split('\n')
        .map((l) => l.replace(/^\/usr\/bin\/tar: /, '').trim())
        .filter((l) => l && !/^Exiting with failure status/.test(l));
      result.warnings = lines.slice(0, maxWarnings);
      if (lines.length > maxWarnings) result.warnings.push(`… and ${lines.length - maxWarnings} more`);
    }
    return { status: 'done', result, finished_at: finishedAt() };
  }

  /** Stops every transfer of a sandbox (it is ending or stopping) and waits until each is recorded. */
  async endSandbox(sandboxId: string): Promise<void> {
    const mine = [...this.transfers.values()].filter((t) => t.sandboxId === sandboxId);
    for (const t of mine) t.controller.abort(`sandbox ${sandboxId} is stopping or ending`);
    await Promise.all(mine.map((t) => t.done));
  }
}
