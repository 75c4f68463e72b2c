/**
 * Hot tier: the user's home (`/home/agent`) lives on a host directory and is
 * synced with `<prefix>` (e.g. tenants/acme/users/u1/hot/) in the storage bucket.
 *
 * - hotSyncDown fills an empty host directory from S3 before the sandbox starts.
 * - hotSyncUp sends back what changed since the last sync (new and changed
 *   entries uploaded, removed entries deleted, unchanged ones skipped), judged
 *   against a manifest kept on the host outside the home.
 *
 * Object layout (s3fs-compatible metadata, so a prefix can be inspected with s3fs):
 *   <prefix><path>    a regular file; body = contents
 *   <prefix><path>    a symlink; body = the link target, x-amz-meta-mode has S_IFLNK
 *   <prefix><path>/   a directory marker (zero bytes): keeps empty directories and their mode
 *   x-amz-meta-mode = st_mode (decimal, type and permission bits), x-amz-meta-mtime =
 *   seconds, x-amz-meta-mtime-ms = milliseconds.
 *
 * The home is written by untrusted code, possibly while we read it: home-walk.ts
 * reads it without ever following a link out of it. Symlinks are stored as links
 * and never read through; sockets, FIFOs and devices are not synced.
 * Names S3 cannot carry (invalid UTF-8, control characters, keys over 1024 bytes)
 * are not synced and are listed in the report's `notSynced`.
 */
import {
  closeSync,
  createReadStream,
  constants as fsc,
  fchmodSync,
  fchownSync,
  fstatSync,
  futimesSync,
  openSync,
  rmSync,
  writeSync,
  type Stats,
} from 'node:fs';
import { chmod, lchown, lstat, lutimes, mkdir, readdir, symlink } from 'node:fs/promises';
import { isAbsolute, join, relative, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Readable } from 'node:stream';
import { DeleteObjectCommand, GetObjectCommand, ListObjectsV2Command, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import type { SyncReport } from '../../../contract/host-protocol';
import { QuotaExceededError, StorageError, SyncError, type FailedTransfer } from './errors';
import {
  controlCharacter,
  DirDescriptors,
  errnoCode,
  errorMessage,
  inMemoryFileBytes,
  LocalChangedError,
  openHomeRoot,
  openRegularFile,
  walkHome,
  type LocalEntry,
} from './home-walk';
import { entryFromStat, isUnchanged, pendingOf, readManifest, withSyncLock, writeManifest, type Manifest } from './hot-manifest';

/** Parallel S3 transfers per sync. */
export const defaultSyncConcurrency = 32;
/** Entries (files, links, directories) a home may hold: zero-byte files escape the byte quota. */
export const defaultMaxEntries = 100_000;

/** At most this many not-synced paths are listed in a report (the total is counted). */
const notSyncedListCap = 100;

export interface HotSyncOptions {
  s3: S3Client;
  bucket: string;
  /** Key prefix of the user's home, e.g. tenants/acme/users/u1/hot/ (a trailing `/` is added if missing). */
  prefix: string;
  /** Host directory mounted as the container's /home/agent. */
  dir: string;
  /** Owner given to everything hotSyncDown creates (the container's agent user). */
  uid: number;
  gid: number;
  /** Largest home, in bytes of file contents (and link targets); larger refuses the whole sync. */
  quotaBytes: number;
  /** Manifest path on the host, outside `dir` (the container must not be able to edit it). */
  stateFile: string;
  /** Parallel S3 transfers. @default 32 */
  concurrency?: number;
  /** Per-transfer retries with exponential backoff. @default { attempts: 4, baseDelayMs: 200 } */
  retry?: { attempts?: number; baseDelayMs?: number };
  /** Refuse homes with more entries than this. @default 100000 */
  maxEntries?: number;
  /** How long to wait for another sync of the same manifest to finish. @default 120000 */
  lockTimeoutMs?: number;
}

interface NotSyncedPath {
  /** Relative path; bytes that are not UTF-8 are shown escaped. */
  path: string;
  reason: string;
}

export interface HotSyncReport extends SyncReport {
  /** Transfers that needed more than one attempt. */
  retries: number;
  /** Paths left out on purpose (first 100), e.g. sockets, names S3 cannot store. */
  notSynced: NotSyncedPath[];
  notSyncedTotal: number;
}

/**
 * Fills `dir` (absent or empty) with the objects under `prefix`, owned by uid:gid,
 * with mode bits, mtimes and symlinks restored; writes the manifest to `stateFile`.
 * Refuses with QuotaExceededError, creating nothing, if the prefix holds more than
 * `quotaBytes`. No process may write `dir` while this runs (the container starts after).
 *
 * @example
 *   await hotSyncDown({ s3, bucket, prefix: 'tenants/acme/users/u1/hot/', dir: '/var/lib/sbx/sbx-1/home',
 *     uid: 1000, gid: 1000, quotaBytes: 100 << 20, stateFile: '/var/lib/sbx/sbx-1/hot-manifest.json' });
 */
export async function hotSyncDown(o: HotSyncOptions): Promise<HotSyncReport> {
  const started = Date.now();
  const cfg = resolveOptions(o);
  return withSyncLock(cfg.stateFile, cfg.lockTimeoutMs, async () => {
    const report = emptyReport();
    const notSynced = new NotSyncedList(report);
    const remote = await listPrefix(cfg);
    const storedBytes = remote.reduce((sum, item) => sum + item.size, 0);
    if (storedBytes > cfg.quotaBytes) {
      throw new QuotaExceededError(
        `the stored home under ${cfg.prefix} holds ${storedBytes} bytes, more than this sandbox's home size limit of ${cfg.quotaBytes} bytes; create the sandbox with a larger disk_mb, or remove files from the bucket`,
        storedBytes,
        cfg.quotaBytes,
      );
    }
    if (remote.length > cfg.maxEntries) {
      throw new QuotaExceededError(
        `the stored home under ${cfg.prefix} holds ${remote.length} entries, more than the limit of ${cfg.maxEntries}`,
        remote.length,
        cfg.maxEntries,
      );
    }

    const plan = planDownload(remote, notSynced);
    await prepareEmptyHome(cfg.dir, cfg.uid, cfg.gid);

    const manifest: Manifest = { version: 1, bucket: cfg.bucket, prefix: cfg.prefix, entries: {} };
    const dirModes = new Map<string, number>();
    // Parents before children; every directory starts 0700 and gets its mode at the end.
    for (const rel of [...plan.dirs].sort(byDepth)) {
      await mkdir(join(cfg.dir, rel), { mode: 0o700 });
      await lchown(join(cfg.dir, rel), cfg.uid, cfg.gid);
    }

    const links: { item: RemoteItem; target: Buffer; mode: number; mtimeMs?: number; etag?: string }[] = [];
    const failed: FailedTransfer[] = [];
    await runPool(plan.fetch, cfg.concurrency, async (item) => {
      try {
        const got = await withRetry(cfg, report, () => downloadItem(cfg, item));
        report.downloaded += 1;
        report.bytes += got.bytes;
        if (item.isDirMarker) {
          dirModes.set(item.rel, got.mode);
        } else if (got.linkTarget) {
          links.push({ item, target: got.linkTarget, mode: got.mode, mtimeMs: got.mtimeMs, etag: got.etag });
        } else if (got.stat) {
          manifest.entries[item.relKey] = entryFromStat('file', got.stat, got.etag);
        }
      } catch (err) {
        failed.push({ path: item.relKey, op: 'download', message: errorMessage(err) });
      }
    });

    // Links last: no later path resolution may pass through a link we made.
    for (const link of links) {
      const path = join(cfg.dir, link.item.rel);
      try {
        await symlink(link.target, path);
        await lchown(path, cfg.uid, cfg.gid);
        if (link.mtimeMs !== undefined) await lutimes(path, new Date(link.mtimeMs), new Date(link.mtimeMs));
        manifest.entries[link.item.relKey] = entryFromStat('symlink', await lstat(path), link.etag);
      } catch (err) {
        // e.g. a target longer than the kernel allows; left out of the manifest, so no sync deletes the object
        failed.push({ path: link.item.relKey, op: 'download', message: errorMessage(err) });
      }
    }
    // Deepest first, so a read-only parent never blocks a child's chmod.
    for (const rel of [...plan.dirs].sort(byDepth).reverse()) {
      const path = join(cfg.dir, rel);
      await chmod(path, (dirModes.get(rel) ?? 0o755) & 0o1777);
      const entry = entryFromStat('dir', await lstat(path));
      // A directory without a marker in S3 gets one at the next hotSyncUp.
      manifest.entries[rel + '/'] = dirModes.has(rel) ? entry : { ...entry, pending: true };
    }
    for (const loser of plan.conflictLosers) {
      // The key lost a file-versus-directory conflict; the next hotSyncUp deletes it.
      manifest.entries[loser] = { kind: 'file', size: -1, mtimeMs: 0, ctimeMs: 0, mode: 0, ino: 0, pending: true };
    }
    await writeManifest(cfg.stateFile, manifest);

    report.ms = Date.now() - started;
    if (failed.length > 0) {
      throw new SyncError(
        `hot sync down of ${cfg.prefix}: ${failed.length} object(s) could not be downloaded after retries (first: ${failed[0]!.path}: ${failed[0]!.message})`,
        failed,
        report,
      );
    }
    return report;
  });
}

/**
 * Uploads what changed in `dir` since the last sync and deletes what was removed.
 * Refuses the whole sync with QuotaExceededError, transferring nothing, if the home
 * is over `quotaBytes`. Throws SyncError listing the paths that still failed after
 * retries; the manifest records only what succeeded, so the next sync retries the rest.
 * Safe to run while the sandbox writes the home.
 */
export async function hotSyncUp(o: HotSyncOptions): Promise<HotSyncReport> {
  const started = Date.now();
  const cfg = resolveOptions(o);
  return withSyncLock(cfg.stateFile, cfg.lockTimeoutMs, async () => {
    const report = emptyReport();
    const notSynced = new NotSyncedList(report);
    const manifest = await readManifest(cfg);
    const root = openHomeRoot(cfg.dir);
    const dirs = new DirDescriptors(root);
    try {
      const local = await walkHome(root, cfg, notSynced);
      const leftOut = leaveOutSparseFiles(local, cfg.quotaBytes, notSynced);
      let homeBytes = 0;
      for (const e of local.values()) homeBytes += e.kind === 'dir' ? 0 : e.stat.size;
      if (homeBytes > cfg.quotaBytes) {
        throw new QuotaExceededError(
          `the home holds ${homeBytes} bytes, more than its size limit of ${cfg.quotaBytes} bytes (disk_mb); nothing was synced. Remove files and sync again`,
          homeBytes,
          cfg.quotaBytes,
        );
      }

      const toUpload: LocalEntry[] = [];
      for (const e of local.values()) {
        if (isUnchanged(manifest.entries[e.relKey], e)) report.skipped += 1;
        else toUpload.push(e);
      }
      // A file left out keeps whatever version of it is stored.
      const toDelete = Object.keys(manifest.entries).filter((relKey) => !local.has(relKey) && !leftOut.has(relKey));

      if (toUpload.length > 0) {
        // Record intent first: if the host dies mid-upload, the next sync still knows these keys may exist.
        for (const e of toUpload) manifest.entries[e.relKey] = { ...pendingOf(manifest.entries[e.relKey], e.kind) };
        await writeManifest(cfg.stateFile, manifest);
      }

      const failed: FailedTransfer[] = [];
      // Uploads before deletions: until the new state is stored, the old one stays.
      await runPool(toUpload, cfg.concurrency, async (e) => {
        try {
          const done = await withRetry(cfg, report, () => uploadEntry(cfg, dirs, e));
          manifest.entries[e.relKey] = entryFromStat(e.kind, done.stat, done.etag);
          report.uploaded += 1;
          report.bytes += done.bytes;
        } catch (err) {
          if (err instanceof LocalChangedError) {
            // Gone or replaced since the walk: the pending entry makes the next sync settle it.
            notSynced.add(e.relKey, err.message);
            return;
          }
          failed.push({ path: e.relKey, op: 'upload', message: errorMessage(err) });
        }
      });
      await runPool(toDelete, cfg.concurrency, async (relKey) => {
        try {
          await withRetry(cfg, report, () => cfg.s3.send(new DeleteObjectCommand({ Bucket: cfg.bucket, Key: cfg.prefix + relKey })));
          delete manifest.entries[relKey];
          report.deleted += 1;
        } catch (err) {
          failed.push({ path: relKey, op: 'delete', message: errorMessage(err) });
        }
      });
      await writeManifest(cfg.stateFile, manifest);

      report.ms = Date.now() - started;
      if (failed.length > 0) {
        throw new SyncError(
          `hot sync up to ${cfg.prefix}: ${failed.length} transfer(s) failed after retries (first: ${failed[0]!.op} ${failed[0]!.path}: ${failed[0]!.message}); the next sync retries them`,
          failed,
          report,
        );
      }
      return report;
    } finally {
      dirs.close();
      closeSync(root);
    }
  });
}

// ---------------------------------------------------------------------------
// Options

interface ResolvedOptions {
  s3: S3Client;
  bucket: string;
  prefix: string;
  dir: string;
  uid: number;
  gid: number;
  quotaBytes: number;
  stateFile: string;
  concurrency: number;
  attempts: number;
  baseDelayMs: number;
  maxEntries: number;
  lockTimeoutMs: number;
}

function resolveOptions(o: HotSyncOptions): ResolvedOptions {
  if (!o.prefix || o.prefix.startsWith('/')) {
    throw new StorageError('storage_error', `hot prefix must be a non-empty key prefix without a leading "/", got "${o.prefix}"`);
  }
  const dir = resolve(o.dir);
  const stateFile = resolve(o.stateFile);
  const fromHome = relative(dir, stateFile);
  if (!fromHome.startsWith('..') && !isAbsolute(fromHome)) {
    throw new StorageError('storage_error', `the hot sync manifest ${stateFile} must be outside the home ${dir}, where the sandbox cannot edit it`);
  }
  if (!(o.quotaBytes > 0)) throw new StorageError('storage_error', `hot quota must be a positive number of bytes, got ${o.quotaBytes}`);
  return {
    s3: o.s3,
    bucket: o.bucket,
    prefix: o.prefix.endsWith('/') ? o.prefix : o.prefix + '/',
    dir,
    uid: o.uid,
    gid: o.gid,
    quotaBytes: o.quotaBytes,
    stateFile,
    concurrency: Math.max(1, o.concurrency ?? defaultSyncConcurrency),
    attempts: Math.max(1, o.retry?.attempts ?? 4),
    baseDelayMs: o.retry?.baseDelayMs ?? 200,
    maxEntries: o.maxEntries ?? defaultMaxEntries,
    lockTimeoutMs: o.lockTimeoutMs ?? 120_000,
  };
}

// ---------------------------------------------------------------------------
// Transfers

interface UploadDone {
  stat: Stats;
  bytes: number;
  etag?: string;
}

async function uploadEntry(cfg: ResolvedOptions, dirs: DirDescriptors, e: LocalEntry): Promise<UploadDone> {
  if (e.kind === 'dir') {
    const res = await cfg.s3.send(
      new PutObjectCommand({ Bucket: cfg.bucket, Key: cfg.prefix + e.relKey, Body: Buffer.alloc(0), ContentLength: 0, Metadata: objectMetadata(e.stat) }),
    );
    return { stat: e.stat, bytes: 0, etag: res.ETag };
  }
  if (e.kind === 'symlink') {
    const target = e.linkTarget!;
    const res = await cfg.s3.send(
      new PutObjectCommand({ Bucket: cfg.bucket, Key: cfg.prefix + e.relKey, Body: target, ContentLength: target.length, Metadata: objectMetadata(e.stat) }),
    );
    return { stat: e.stat, bytes: target.length, etag: res.ETag };
  }
  const file = openRegularFile(dirs, e.rel);
  if ('contents' in file) {
    const res = await cfg.s3.send(
      new PutObjectCommand({
        Bucket: cfg.bucket,
        Key: cfg.prefix + e.relKey,
        Body: file.contents,
        ContentLength: file.stat.size,
        Metadata: objectMetadata(file.stat),
      }),
    );
    return { stat: file.stat, bytes: file.stat.size, etag: res.ETag };
  }
  try {
    // Bounded to the size we stat'ed: a file growing meanwhile cannot push past the quota.
    const body = createReadStream('', { fd: file.fd, start: 0, end: file.stat.size - 1, autoClose: false });
    const res = await cfg.s3.send(
      new PutObjectCommand({ Bucket: cfg.bucket, Key: cfg.prefix + e.relKey, Body: body, ContentLength: file.stat.size, Metadata: objectMetadata(file.stat) }),
    );
    return { stat: file.stat, bytes: file.stat.size, etag: res.ETag };
  } finally {
    closeSync(file.fd);
  }
}

/** s3fs-compatible: mode is st_mode in decimal, mtime in seconds; mtime-ms keeps the precision. */
function objectMetadata(st: Stats): Record<string, string> {
  return {
    mode: String(st.mode),
    mtime: String(Math.floor(st.mtimeMs / 1000)),
    'mtime-ms': String(st.mtimeMs),
  };
}

interface RemoteItem {
  key: string;
  /** Key relative to the prefix (directories end in `/`). */
  relKey: string;
  /** Path relative to the home, no trailing slash. */
  rel: string;
  isDirMarker: boolean;
  size: number;
  lastModifiedMs: number;
}

async function listPrefix(cfg: ResolvedOptions): Promise<RemoteItem[]> {
  const items: RemoteItem[] = [];
  let token: string | undefined;
  do {
    const page = await withRetry(cfg, undefined, () =>
      cfg.s3.send(new ListObjectsV2Command({ Bucket: cfg.bucket, Prefix: cfg.prefix, ContinuationToken: token })),
    );
    for (const obj of page.Contents ?? []) {
      if (!obj.Key) continue;
      const relKey = obj.Key.slice(cfg.prefix.length);
      const isDirMarker = relKey.endsWith('/');
      items.push({
        key: obj.Key,
        relKey,
        rel: isDirMarker ? relKey.slice(0, -1) : relKey,
        isDirMarker,
        size: obj.Size ?? 0,
        lastModifiedMs: obj.LastModified?.getTime() ?? 0,
      });
    }
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
  return items;
}

interface DownloadPlan {
  /** Every directory to create (markers and ancestors of any key), relative paths. */
  dirs: Set<string>;
  /** Objects to fetch: files, links, directory markers. */
  fetch: RemoteItem[];
  /** Keys that lost a file-versus-directory conflict (relKeys). */
  conflictLosers: string[];
}

/**
 * Validates keys (no `..`, empty or control-character segments) and settles a path
 * that is both a file/link and a directory (left by an interrupted sync): the newer
 * side wins, the other is left out and deleted by the next hotSyncUp. A link is never
 * an ancestor of anything created, so writing the home never passes through a link.
 */
function planDownload(remote: RemoteItem[], notSynced: NotSyncedList): DownloadPlan {
  const valid = remote.filter((item) => {
    if (item.relKey === '') return false; // the prefix's own marker (e.g. made by s3fs)
    const segments = item.rel.split('/');
    if (segments.some((s) => s === '' || s === '.' || s === '..' || controlCharacter.test(s))) {
      notSynced.add(JSON.stringify(item.relKey).slice(1, -1), 'object key is not a safe relative path');
      return false;
    }
    return true;
  });

  const removed = new Set<string>();
  const conflictLosers: string[] = [];
  const byShallowest = valid.filter((i) => !i.isDirMarker).sort((a, b) => byDepth(a.rel, b.rel));
  for (const item of byShallowest) {
    if (removed.has(item.relKey)) continue;
    const under = valid.filter((other) => !removed.has(other.relKey) && other.relKey.startsWith(item.rel + '/'));
    if (under.length === 0) continue;
    const newestUnder = Math.max(...under.map((u) => u.lastModifiedMs));
    const losers = item.lastModifiedMs > newestUnder ? under : [item];
    for (const loser of losers) {
      removed.add(loser.relKey);
      conflictLosers.push(loser.relKey);
      notSynced.add(
        loser.relKey,
        `conflicts with ${loser === item ? 'a newer directory' : 'a newer file'} at ${item.rel}; it will be deleted by the next sync`,
      );
    }
  }

  const fetch = valid.filter((i) => !removed.has(i.relKey));
  const dirs = new Set<string>();
  for (const item of fetch) {
    const segments = item.rel.split('/');
    const ancestors = item.isDirMarker ? segments.length : segments.length - 1;
    for (let n = 1; n <= ancestors; n++) dirs.add(segments.slice(0, n).join('/'));
  }
  return { dirs, fetch, conflictLosers };
}

/** The home must be absent or an empty real directory: nothing in it may redirect our writes. */
async function prepareEmptyHome(dir: string, uid: number, gid: number): Promise<void> {
  let st: Stats | undefined;
  try {
    st = await lstat(dir);
  } catch (err) {
    if (errnoCode(err) !== 'ENOENT') throw err;
  }
  if (!st) {
    await mkdir(dir, { recursive: true, mode: 0o755 });
  } else if (!st.isDirectory()) {
    throw new StorageError('storage_error', `the home ${dir} exists and is not a directory; hotSyncDown needs it absent or empty`);
  } else if ((await readdir(dir)).length > 0) {
    throw new StorageError('storage_error', `the home ${dir} is not empty; hotSyncDown fills only a fresh directory`);
  }
  await chmod(dir, 0o755);
  await lchown(dir, uid, gid);
}

interface Downloaded {
  bytes: number;
  mode: number;
  etag?: string;
  mtimeMs?: number;
  /** Set for regular files: the written file's final stat. */
  stat?: Stats;
  linkTarget?: Buffer;
}

async function downloadItem(cfg: ResolvedOptions, item: RemoteItem): Promise<Downloaded> {
  const res = await cfg.s3.send(new GetObjectCommand({ Bucket: cfg.bucket, Key: item.key }));
  const meta = res.Metadata ?? {};
  const storedMode = Number.parseInt(meta.mode ?? '', 10);
  const mtimeMs = parseMtimeMs(meta);
  const body = res.Body as Readable | undefined;
  const etag = res.ETag;
  if (item.isDirMarker) {
    body?.resume();
    return { bytes: 0, mode: Number.isInteger(storedMode) ? storedMode : 0o40755, etag };
  }
  if (Number.isInteger(storedMode) && (storedMode & fsc.S_IFMT) === fsc.S_IFLNK) {
    const target = body ? Buffer.concat(await collect(body)) : Buffer.alloc(0);
    return { bytes: target.length, mode: storedMode, linkTarget: target, etag, mtimeMs };
  }

  // Small bodies are received whole first, so the file is written with a few quick calls.
  const source: Buffer | AsyncIterable<Buffer> =
    body && (res.ContentLength ?? Infinity) <= inMemoryFileBytes ? Buffer.concat(await collect(body)) : ((body ?? []) as AsyncIterable<Buffer>);
  const path = join(cfg.dir, item.rel);
  // O_EXCL never follows a link and never reuses a file (a failed attempt removes its file below).
  const fd = openSync(path, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600);
  let complete = false;
  try {
    let written = 0;
    const writeAll = (chunk: Buffer) => {
      for (let offset = 0; offset < chunk.length; ) {
        const bytesWritten = writeSync(fd, chunk, offset, chunk.length - offset, written);
        offset += bytesWritten;
        written += bytesWritten;
      }
    };
    if (Buffer.isBuffer(source)) writeAll(source);
    else for await (const chunk of source) writeAll(chunk);
    if (res.ContentLength !== undefined && written !== res.ContentLength) {
      throw new Error(`got ${written} of ${res.ContentLength} bytes`);
    }
    const mode = Number.isInteger(storedMode) ? storedMode & 0o777 : 0o644;
    fchownSync(fd, cfg.uid, cfg.gid);
    fchmodSync(fd, mode);
    if (mtimeMs !== undefined) futimesSync(fd, mtimeMs / 1000, mtimeMs / 1000);
    const stat = fstatSync(fd);
    complete = true;
    return { bytes: written, mode, etag, mtimeMs, stat };
  } finally {
    closeSync(fd);
    // A partial file must not stay: the retry (or the failure report) takes over.
    if (!complete) rmSync(path, { force: true });
  }
}

function parseMtimeMs(meta: Record<string, string>): number | undefined {
  const ms = Number(meta['mtime-ms']);
  if (meta['mtime-ms'] !== undefined && Number.isFinite(ms)) return ms;
  const seconds = Number(meta.mtime);
  if (meta.mtime !== undefined && Number.isFinite(seconds)) return seconds * 1000;
  return undefined;
}

async function collect(body: Readable): Promise<Buffer[]> {
  const chunks: Buffer[] = [];
  for await (const chunk of body as AsyncIterable<Buffer>) chunks.push(chunk);
  return chunks;
}

// ---------------------------------------------------------------------------
// Retries, pool, report

/** Errors retrying cannot fix: answer at once instead of backing off. */
const permanentS3Errors = new Set(['AccessDenied', 'AllAccessDisabled', 'InvalidAccessKeyId', 'SignatureDoesNotMatch', 'NoSuchBucket', 'InvalidBucketName']);

async function withRetry<T>(cfg: ResolvedOptions, report: HotSyncReport | undefined, op: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await op();
    } catch (err) {
      const permanent = err instanceof LocalChangedError || permanentS3Errors.has((err as { name?: string }).name ?? '');
      if (permanent || attempt >= cfg.attempts) throw err;
      if (report && attempt === 1) report.retries += 1;
      await sleep(cfg.baseDelayMs * 2 ** (attempt - 1) * (0.5 + Math.random()));
    }
  }
}

/** Runs `fn` over `items` with at most `concurrency` in flight; `fn` records its own failures. */
async function runPool<T>(items: readonly T[], concurrency: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const item = items[next++]!;
      await fn(item);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, worker));
}

function emptyReport(): HotSyncReport {
  return { uploaded: 0, downloaded: 0, deleted: 0, skipped: 0, bytes: 0, ms: 0, retries: 0, notSynced: [], notSyncedTotal: 0 };
}

/**
 * Sparse files are the one way a home on its own file system can hold more
 * bytes (by size) than the file system has room for: `truncate -s 1T` takes
 * no space. Their contents would upload as zeros and could never be
 * restored into a home of the same size. While the home's files add up to
 * more than `quotaBytes`, the sparse ones (the most sparse first) are left out
 * of the sync and listed in the report, so the rest always syncs. Removes
 * them from `local`; answers their keys.
 */
function leaveOutSparseFiles(local: Map<string, LocalEntry>, quotaBytes: number, notSynced: NotSyncedList): Set<string> {
  const leftOut = new Set<string>();
  let total = 0;
  for (const e of local.values()) total += e.kind === 'dir' ? 0 : e.stat.size;
  if (total <= quotaBytes) return leftOut;
  const sparse = [...local.values()]
    .filter((e) => e.kind === 'file' && e.stat.blocks * 512 < e.stat.size)
    .sort((a, b) => b.stat.size - b.stat.blocks * 512 - (a.stat.size - a.stat.blocks * 512));
  for (const e of sparse) {
    if (total <= quotaBytes) break;
    total -= e.stat.size;
    local.delete(e.relKey);
    leftOut.add(e.relKey);
    notSynced.add(
      e.relKey,
      `sparse file of ${e.stat.size} bytes (${e.stat.blocks * 512} on disk): with it the home would be larger than its size limit of ${quotaBytes} bytes; not synced`,
    );
  }
  return leftOut;
}

class NotSyncedList {
  constructor(private readonly report: HotSyncReport) {}
  add(path: string, reason: string): void {
    this.report.notSyncedTotal += 1;
    if (this.report.notSynced.length < notSyncedListCap) this.report.notSynced.push({ path, reason });
  }
}

function byDepth(a: string, b: string): number {
  return a.split('/').length - b.split('/').length || (a < b ? -1 : a > b ? 1 : 0);
}
