/**
 * The hot sync manifest: what the last sync left in S3, per key, with the local
 * stat it reflected. Kept on the host outside the home (the sandbox must not edit
 * it); hotSyncUp compares the home with it to upload only what changed and to
 * delete what is gone.
 */
import type { Stats } from 'node:fs';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { StorageError } from './errors';
import { isAlive } from '../process-tree';
import { errnoCode, type HotEntryKind, type LocalEntry } from './home-walk';

export interface ManifestEntry {
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

export interface Manifest {
  version: 1;
  bucket: string;
  prefix: string;
  /** Keyed by the object key relative to the prefix (directories end in `/`). */
  entries: Record<string, ManifestEntry>;
}

export async function readManifest(cfg: { stateFile: string; bucket: string; prefix: string }): Promise<Manifest> {
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

export async function writeManifest(stateFile: string, manifest: Manifest): Promise<void> {
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
export async function withSyncLock<T>(stateFile: string, timeoutMs: number, fn: () => Promise<T>): Promise<T> {
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
      if (Number.isInteger(owner) && owner > 0 && !isAlive(owner)) {
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

export function entryFromStat(kind: HotEntryKind, st: Stats, etag?: string): ManifestEntry {
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

export function pendingOf(previous: ManifestEntry | undefined, kind: HotEntryKind): ManifestEntry {
  return { ...(previous ?? { kind, size: -1, mtimeMs: 0, ctimeMs: 0, mode: 0, ino: 0 }), pending: true };
}

/**
 * Unchanged = same kind, size, mtime, ctime, mode and inode as when last synced.
 * ctime catches edits that put the mtime back (touch -r); user code cannot set it.
 * A directory only carries its mode.
 */
export function isUnchanged(m: ManifestEntry | undefined, e: LocalEntry): boolean {
  if (!m || m.pending || m.kind !== e.kind) return false;
  if (e.kind === 'dir') return m.mode === e.stat.mode;
  return m.size === e.stat.size && m.mtimeMs === e.stat.mtimeMs && m.ctimeMs === e.stat.ctimeMs && m.mode === e.stat.mode && m.ino === e.stat.ino;
}
