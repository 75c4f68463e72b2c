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
 * The home is written by untrusted code, possibly while we read it. Every path is
 * resolved one component at a time from an open directory descriptor through
 * /proc/self/fd/<fd>/<name> with O_NOFOLLOW, so a directory swapped for a symlink
 * mid-sync fails the open instead of leading outside the home. Symlinks are
 * stored as links and never read through; sockets, FIFOs and devices are not synced.
 * Names S3 cannot carry (invalid UTF-8, control characters, keys over 1024 bytes)
 * are not synced and are listed in the report's `notSynced`.
 */
import * as fsCallbacks from 'node:fs';
import { constants as fsc, type Stats } from 'node:fs';
import { chmod, lchown, lstat, lutimes, mkdir, readdir, readFile, readlink, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { dirname, isAbsolute, join, relative, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import type { Readable } from 'node:stream';
import {
  DeleteObjectCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  type S3Client,
} from '@aws-sdk/client-s3';
import type { SyncReport } from '../protocol';
import { QuotaExceededError, StorageError, SyncError, type FailedTransfer } from './errors';

/** Default cap on a user's hot home. */
export const defaultHotQuotaBytes = 100 * 1024 * 1024;
/** Default seconds between incremental syncs while a sandbox runs. */
export const defaultSyncIntervalSeconds = 60;
/** Parallel S3 transfers per sync. */
export const defaultSyncConcurrency = 32;
/** Entries (files, links, directories) a home may hold: zero-byte files escape the byte quota. */
export const defaultMaxEntries = 100_000;

const maxKeyBytes = 1024;
/** Files up to this size are read whole into memory; larger ones are streamed. */
const inMemoryFileBytes = 8 * 1024 * 1024;
/** At most this many not-synced paths are listed in a report (the total is counted). */
const notSyncedListCap = 100;
const controlCharacter = /[\u0000-\u001f\u007f]/;

export type HotEntryKind = 'file' | 'symlink' | 'dir';

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

export interface NotSyncedPath {
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

interface ManifestEntry {
  kind: HotEntryKind;
  size: number;
  mtimeMs: number;
  ctimeMs: number;
  mode: number;
  ino: number;
  etag?: string;
  /**
   * The object may exist in S3 but the local state it reflects is unknown
   * (an upload was started or failed, or a directory had no marker): the next
   * sync uploads the path if it exists and deletes the key if it does not.
   */
  pending?: true;
}

interface Manifest {
  version: 1;
  bucket: string;
  prefix: string;
  /** Keyed by the object key relative to the prefix (directories end in `/`). */
  entries: Record<string, ManifestEntry>;
}

interface LocalEntry {
  relKey: string;
  /** Path relative to the home, no trailing slash. */
  rel: string;
  kind: HotEntryKind;
  stat: Stats;
  linkTarget?: Buffer;
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
        `the stored home under ${cfg.prefix} holds ${storedBytes} bytes, more than the hot quota of ${cfg.quotaBytes} bytes; raise the quota or remove files from the bucket`,
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

    const plan = planDownload(cfg.prefix, remote, notSynced);
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
    const root = await openHomeRoot(cfg.dir);
    try {
      const local = await walkHome(root, cfg, notSynced);
      let homeBytes = 0;
      for (const e of local.values()) homeBytes += e.kind === 'dir' ? 0 : e.stat.size;
      if (homeBytes > cfg.quotaBytes) {
        throw new QuotaExceededError(
          `the home holds ${homeBytes} bytes, more than the hot quota of ${cfg.quotaBytes} bytes; nothing was synced. Remove files and sync again`,
          homeBytes,
          cfg.quotaBytes,
        );
      }

      const toUpload: LocalEntry[] = [];
      // Walk order keeps a directory's files together, so each directory is opened about once.
      const dirs = new DirDescriptors(root);
      for (const e of local.values()) {
        if (isUnchanged(manifest.entries[e.relKey], e)) report.skipped += 1;
        else toUpload.push(e);
      }
      const toDelete = Object.keys(manifest.entries).filter((relKey) => !local.has(relKey));

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
      await fdClose(root);
    }
  });
}

export interface HotSyncLoop {
  /** Stops the timer and waits for a sync in progress. */
  stop(): Promise<void>;
}

/**
 * Runs hotSyncUp every `intervalSeconds` (never two at once) while a sandbox runs,
 * so a crash loses at most one interval. 0 disables it.
 */
export function startHotSyncLoop(
  o: HotSyncOptions & {
    intervalSeconds: number;
    onReport?: (report: HotSyncReport) => void;
    onError: (err: unknown) => void;
  },
): HotSyncLoop {
  let stopped = o.intervalSeconds <= 0;
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> | undefined;
  const schedule = () => {
    if (stopped) return;
    timer = setTimeout(() => {
      running = hotSyncUp(o)
        .then((report) => o.onReport?.(report), o.onError)
        .finally(() => {
          running = undefined;
          schedule();
        });
    }, o.intervalSeconds * 1000);
  };
  schedule();
  return {
    async stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      await running;
    },
  };
}

// ---------------------------------------------------------------------------
// Options, manifest, lock

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

async function readManifest(cfg: ResolvedOptions): Promise<Manifest> {
  let text: string;
  try {
    text = await readFile(cfg.stateFile, 'utf8');
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') {
      // Without a manifest, deletions cannot be told from never-downloaded files: refuse rather than wipe the stored home.
      throw new StorageError('storage_error', `no hot sync manifest at ${cfg.stateFile}: hotSyncDown must run (and succeed) for this home before hotSyncUp`);
    }
    throw err;
  }
  const manifest = JSON.parse(text) as Manifest;
  if (manifest.version !== 1 || manifest.bucket !== cfg.bucket || manifest.prefix !== cfg.prefix) {
    throw new StorageError(
      'storage_error',
      `the hot sync manifest ${cfg.stateFile} belongs to s3://${manifest.bucket}/${manifest.prefix}, not s3://${cfg.bucket}/${cfg.prefix}`,
    );
  }
  return manifest;
}

async function writeManifest(stateFile: string, manifest: Manifest): Promise<void> {
  await mkdir(dirname(stateFile), { recursive: true, mode: 0o700 });
  const tmp = `${stateFile}.${process.pid}.tmp`;
  await writeFile(tmp, JSON.stringify(manifest), { mode: 0o600 });
  await rename(tmp, stateFile);
}

/**
 * One sync per manifest at a time, across processes (the daemon's periodic sync
 * and a destroy from SSM): an O_EXCL lock file holding the owner's pid; a lock
 * whose pid is gone is stale and taken over.
 */
async function withSyncLock<T>(stateFile: string, timeoutMs: number, fn: () => Promise<T>): Promise<T> {
  const lockFile = `${stateFile}.lock`;
  await mkdir(dirname(stateFile), { recursive: true, mode: 0o700 });
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await writeFile(lockFile, String(process.pid), { flag: 'wx', mode: 0o600 });
      break;
    } catch (err) {
      if (errnoCode(err) !== 'EEXIST') throw err;
      const owner = Number.parseInt(await readFile(lockFile, 'utf8').catch(() => ''), 10);
      if (Number.isInteger(owner) && owner > 0 && !isProcessAlive(owner)) {
        await rm(lockFile, { force: true });
        continue;
      }
      if (Date.now() > deadline) {
        throw new StorageError('storage_error', `another hot sync (pid ${owner}) still holds ${lockFile} after ${timeoutMs} ms; try again later`);
      }
      await sleep(100);
    }
  }
  try {
    return await fn();
  } finally {
    await rm(lockFile, { force: true });
  }
}

function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return errnoCode(err) === 'EPERM';
  }
}

function entryFromStat(kind: HotEntryKind, st: Stats, etag?: string): ManifestEntry {
  return {
    kind,
    size: st.size,
    mtimeMs: st.mtimeMs,
    ctimeMs: st.ctimeMs,
    mode: st.mode,
    ino: st.ino,
    ...(etag ? { etag } : {}),
  };
}

function pendingOf(previous: ManifestEntry | undefined, kind: HotEntryKind): ManifestEntry {
  return { ...(previous ?? { kind, size: -1, mtimeMs: 0, ctimeMs: 0, mode: 0, ino: 0 }), pending: true };
}

/**
 * Unchanged = same kind, size, mtime, ctime, mode and inode as when last synced.
 * ctime catches edits that put the mtime back (touch -r); user code cannot set it.
 * A directory only carries its mode.
 */
function isUnchanged(m: ManifestEntry | undefined, e: LocalEntry): boolean {
  if (!m || m.pending || m.kind !== e.kind) return false;
  if (e.kind === 'dir') return m.mode === e.stat.mode;
  return m.size === e.stat.size && m.mtimeMs === e.stat.mtimeMs && m.ctimeMs === e.stat.ctimeMs && m.mode === e.stat.mode && m.ino === e.stat.ino;
}

// ---------------------------------------------------------------------------
// Walking the home without following links

// Plain descriptors: lighter than FileHandle objects, which counts at a thousand files per sync.
const fdOpen = promisify(fsCallbacks.open) as (path: string, flags: number, mode?: number) => Promise<number>;
const fdClose = promisify(fsCallbacks.close);
const fdStat = promisify(fsCallbacks.fstat) as (fd: number) => Promise<Stats>;
const fdRead = promisify(fsCallbacks.read) as (fd: number, buffer: Buffer, offset: number, length: number, position: number) => Promise<{ bytesRead: number }>;
const fdWrite = promisify(fsCallbacks.write) as (fd: number, buffer: Uint8Array, offset: number, length: number, position: number) => Promise<{ bytesWritten: number }>;
const fdChown = promisify(fsCallbacks.fchown);
const fdChmod = promisify(fsCallbacks.fchmod);
const fdUtimes = promisify(fsCallbacks.futimes);

/** Opens the home itself; the path is host-controlled, but a symlink there is still refused. */
async function openHomeRoot(dir: string): Promise<number> {
  try {
    return await fdOpen(dir, fsc.O_RDONLY | fsc.O_DIRECTORY | fsc.O_NOFOLLOW);
  } catch (err) {
    throw new StorageError('storage_error', `cannot open the home ${dir}: ${errorMessage(err)}`, { cause: err });
  }
}

/** A path under an open directory that the kernel resolves from that directory, not by name from `/`. */
function beneath(dirFd: number, name: string): string {
  return `/proc/self/fd/${dirFd}/${name}`;
}

/** Thrown when an entry vanished or changed type between the walk and its transfer. */
class LocalChangedError extends Error {
  constructor(rel: string, why: string) {
    super(`${rel} changed during the sync (${why}); the next sync picks it up`);
    this.name = 'LocalChangedError';
  }
}

const localChangeCodes = new Set(['ENOENT', 'ELOOP', 'ENOTDIR', 'EISDIR', 'ENXIO']);

function asLocalChange(rel: string, err: unknown): unknown {
  const code = errnoCode(err);
  return code && localChangeCodes.has(code) ? new LocalChangedError(rel, code) : err;
}

const directoryFlags = fsc.O_RDONLY | fsc.O_DIRECTORY | fsc.O_NOFOLLOW;

/** Opens directory `relDir` under `rootFd`, one component at a time, refusing a symlink at every step. */
async function openDirBeneath(rootFd: number, relDir: string): Promise<number> {
  let current = rootFd;
  try {
    for (const part of relDir.split('/')) {
      const next = await fdOpen(beneath(current, part), directoryFlags);
      if (current !== rootFd) await fdClose(current);
      current = next;
    }
    return current;
  } catch (err) {
    if (current !== rootFd) await fdClose(current);
    throw asLocalChange(relDir, err);
  }
}

/**
 * Directory descriptors shared by the transfers of one sync: each opened once
 * (safely, from the root) and closed when its last user is done, never while in
 * use, so a descriptor number is never reused under a transfer.
 */
class DirDescriptors {
  private readonly slots = new Map<string, { fd: Promise<number>; users: number }>();
  constructor(private readonly rootFd: number) {}

  async acquire(relDir: string): Promise<number> {
    if (relDir === '') return this.rootFd;
    let slot = this.slots.get(relDir);
    if (!slot) {
      slot = { fd: openDirBeneath(this.rootFd, relDir), users: 0 };
      slot.fd.catch(() => undefined); // awaited by every user below
      this.slots.set(relDir, slot);
    }
    slot.users += 1;
    try {
      return await slot.fd;
    } catch (err) {
      this.release(relDir);
      throw err;
    }
  }

  release(relDir: string): void {
    if (relDir === '') return;
    const slot = this.slots.get(relDir);
    if (!slot) return;
    slot.users -= 1;
    if (slot.users > 0) return;
    this.slots.delete(relDir);
    slot.fd.then(fdClose, () => undefined).catch(() => undefined); // a close failure of a read-only directory loses nothing
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

async function walkHome(root: number, cfg: ResolvedOptions, notSynced: NotSyncedList): Promise<Map<string, LocalEntry>> {
  const out = new Map<string, LocalEntry>();
  const prefixBytes = Buffer.byteLength(cfg.prefix);

  const visit = async (dirFd: number, relDir: string): Promise<void> => {
    const rawNames = await readdir(`/proc/self/fd/${dirFd}`, { encoding: 'buffer' });
    const subdirs: LocalEntry[] = [];
    for (let i = 0; i < rawNames.length; i += 64) {
      await Promise.all(
        rawNames.slice(i, i + 64).map(async (raw) => {
          let name: string;
          try {
            name = utf8.decode(raw);
          } catch {
            notSynced.add(joinRel(relDir, escapeBytes(raw)), 'name is not valid UTF-8, which S3 keys require');
            return;
          }
          const rel = joinRel(relDir, name);
          if (controlCharacter.test(name)) {
            notSynced.add(JSON.stringify(rel).slice(1, -1), 'name contains a control character');
            return;
          }
          let st: Stats;
          try {
            st = await lstat(beneath(dirFd, name));
          } catch (err) {
            if (errnoCode(err) === 'ENOENT') return; // removed since readdir: nothing to sync
            throw err;
          }
          const kind: HotEntryKind | undefined = st.isFile() ? 'file' : st.isSymbolicLink() ? 'symlink' : st.isDirectory() ? 'dir' : undefined;
          if (!kind) {
            notSynced.add(rel, 'sockets, FIFOs and device files are not synced');
            return;
          }
          const relKey = kind === 'dir' ? rel + '/' : rel;
          if (prefixBytes + Buffer.byteLength(relKey) > maxKeyBytes) {
            notSynced.add(rel, `path is too long for an S3 key (${maxKeyBytes} bytes with the prefix)`);
            return;
          }
          const entry: LocalEntry = { relKey, rel, kind, stat: st };
          if (kind === 'symlink') {
            try {
              entry.linkTarget = await readlink(beneath(dirFd, name), { encoding: 'buffer' });
            } catch (err) {
              if (errnoCode(err) === 'ENOENT' || errnoCode(err) === 'EINVAL') return; // replaced since lstat
              throw err;
            }
          }
          if (out.size >= cfg.maxEntries) {
            throw new QuotaExceededError(
              `the home holds more than ${cfg.maxEntries} entries (files, links, directories); nothing was synced. Remove files and sync again`,
              out.size + 1,
              cfg.maxEntries,
            );
          }
          out.set(relKey, entry);
          if (kind === 'dir') subdirs.push(entry);
        }),
      );
    }
    // Depth-first, one directory descriptor per level: the tree depth is bounded by the key length.
    for (const sub of subdirs) {
      let fd: number;
      try {
        fd = await fdOpen(beneath(dirFd, sub.rel.slice(sub.rel.lastIndexOf('/') + 1)), directoryFlags);
      } catch (err) {
        const code = errnoCode(err);
        if (code && localChangeCodes.has(code)) {
          out.delete(sub.relKey);
          notSynced.add(sub.rel, `changed during the sync (${code}); the next sync picks it up`);
          continue;
        }
        throw err;
      }
      try {
        sub.stat = await fdStat(fd);
        await visit(fd, sub.rel);
      } finally {
        await fdClose(fd);
      }
    }
  };

  await visit(root, '');
  return out;
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
  const slash = e.rel.lastIndexOf('/');
  const relDir = slash < 0 ? '' : e.rel.slice(0, slash);
  const dirFd = await dirs.acquire(relDir);
  try {
    // O_NONBLOCK: a file swapped for a FIFO must not block the open; fstat below rejects it unread.
    const fd = await fdOpen(beneath(dirFd, e.rel.slice(slash + 1)), fsc.O_RDONLY | fsc.O_NONBLOCK | fsc.O_NOCTTY | fsc.O_NOFOLLOW).catch((err: unknown) => {
      throw asLocalChange(e.rel, err);
    });
    try {
      const st = await fdStat(fd);
      if (!st.isFile()) throw new LocalChangedError(e.rel, 'no longer a regular file');
      let body: Buffer | Readable;
      if (st.size <= inMemoryFileBytes) {
        body = Buffer.allocUnsafe(st.size);
        let filled = 0;
        while (filled < st.size) {
          const { bytesRead } = await fdRead(fd, body, filled, st.size - filled, filled);
          if (bytesRead === 0) throw new Error(`${e.rel} shrank while being read`);
          filled += bytesRead;
        }
      } else {
        // Bounded to the size we stat'ed: a file growing meanwhile cannot push past the quota.
        body = fsCallbacks.createReadStream('', { fd, start: 0, end: st.size - 1, autoClose: false });
      }
      const res = await cfg.s3.send(
        new PutObjectCommand({ Bucket: cfg.bucket, Key: cfg.prefix + e.relKey, Body: body, ContentLength: st.size, Metadata: objectMetadata(st) }),
      );
      return { stat: st, bytes: st.size, etag: res.ETag };
    } finally {
      await fdClose(fd);
    }
  } finally {
    dirs.release(relDir);
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
function planDownload(prefix: string, remote: RemoteItem[], notSynced: NotSyncedList): DownloadPlan {
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
      notSynced.add(loser.relKey, `conflicts with ${loser === item ? 'a newer directory' : 'a newer file'} at ${item.rel}; it will be deleted by the next sync`);
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

  const path = join(cfg.dir, item.rel);
  // O_EXCL never follows a link and never reuses a file (a failed attempt removes its file below).
  const fd = await fdOpen(path, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600);
  let complete = false;
  try {
    let written = 0;
    if (body) {
      for await (const chunk of body as AsyncIterable<Buffer>) {
        let offset = 0;
        while (offset < chunk.length) {
          const { bytesWritten } = await fdWrite(fd, chunk, offset, chunk.length - offset, written);
          offset += bytesWritten;
          written += bytesWritten;
        }
      }
    }
    if (res.ContentLength !== undefined && written !== res.ContentLength) {
      throw new Error(`got ${written} of ${res.ContentLength} bytes`);
    }
    const mode = Number.isInteger(storedMode) ? storedMode & 0o777 : 0o644;
    await fdChown(fd, cfg.uid, cfg.gid);
    await fdChmod(fd, mode);
    if (mtimeMs !== undefined) await fdUtimes(fd, mtimeMs / 1000, mtimeMs / 1000);
    const stat = await fdStat(fd);
    complete = true;
    return { bytes: written, mode, etag, mtimeMs, stat };
  } finally {
    await fdClose(fd);
    // A partial file must not stay: the retry (or the failure report) takes over.
    if (!complete) await rm(path, { force: true });
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
const permanentS3Errors = new Set([
  'AccessDenied',
  'AllAccessDisabled',
  'InvalidAccessKeyId',
  'SignatureDoesNotMatch',
  'NoSuchBucket',
  'InvalidBucketName',
]);

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

function joinRel(dir: string, name: string): string {
  return dir ? `${dir}/${name}` : name;
}

function escapeBytes(raw: Buffer): string {
  return [...raw].map((b) => (b >= 0x20 && b < 0x7f && b !== 0x5c ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, '0')}`)).join('');
}

function errnoCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err ? String((err as { code: unknown }).code) : undefined;
}

function errorMessage(err: unknown): string {
  if (err instanceof Error) return `${err.name === 'Error' ? '' : err.name + ': '}${err.message}`;
  return String(err);
}

