/**
 * Reading a home that untrusted code writes, possibly while we read it, as root,
 * without ever leaving it: every path is resolved one component at a time from an
 * open directory descriptor, through /proc/self/fd/<fd>/<name> with O_NOFOLLOW
 * (Node has no openat), so a directory swapped for a symlink mid-sync fails the
 * open instead of leading to /etc. Symlinks are read as links, never followed.
 */
import * as fsCallbacks from 'node:fs';
import { constants as fsc, type Stats } from 'node:fs';
import { lstat, readdir, readlink } from 'node:fs/promises';
import { promisify } from 'node:util';
import { QuotaExceededError, StorageError } from './errors';

export type HotEntryKind = 'file' | 'symlink' | 'dir';

/** S3's limit on a key, prefix included. */
export const maxKeyBytes = 1024;
/** Names with these cannot round-trip through S3's XML listings. */
export const controlCharacter = /[\u0000-\u001f\u007f]/;

/** An entry of the home found by the walk. */
export interface LocalEntry {
  relKey: string;
  /** Path relative to the home, no trailing slash. */
  rel: string;
  kind: HotEntryKind;
  stat: Stats;
  linkTarget?: Buffer;
}

/** Where the walk reports what it leaves out on purpose. */
export interface NotSyncedSink {
  add(path: string, reason: string): void;
}

// Plain descriptors: lighter than FileHandle objects, which counts at a thousand files per sync.
export const fdOpen = promisify(fsCallbacks.open) as (path: string, flags: number, mode?: number) => Promise<number>;
export const fdClose = promisify(fsCallbacks.close);
export const fdStat = promisify(fsCallbacks.fstat) as (fd: number) => Promise<Stats>;
export const fdRead = promisify(fsCallbacks.read) as (fd: number, buffer: Buffer, offset: number, length: number, position: number) => Promise<{ bytesRead: number }>;
export const fdWrite = promisify(fsCallbacks.write) as (fd: number, buffer: Uint8Array, offset: number, length: number, position: number) => Promise<{ bytesWritten: number }>;
export const fdChown = promisify(fsCallbacks.fchown);
export const fdChmod = promisify(fsCallbacks.fchmod);
export const fdUtimes = promisify(fsCallbacks.futimes);

/** Opens the home itself; the path is host-controlled, but a symlink there is still refused. */
export async function openHomeRoot(dir: string): Promise<number> {
  try {
    return await fdOpen(dir, fsc.O_RDONLY | fsc.O_DIRECTORY | fsc.O_NOFOLLOW);
  } catch (err) {
    throw new StorageError('storage_error', `cannot open the home ${dir}: ${errorMessage(err)}`, { cause: err });
  }
}

/** A path under an open directory that the kernel resolves from that directory, not by name from `/`. */
export function beneath(dirFd: number, name: string): string {
  return `/proc/self/fd/${dirFd}/${name}`;
}

/** Thrown when an entry vanished or changed type between the walk and its transfer. */
export class LocalChangedError extends Error {
  constructor(rel: string, why: string) {
    super(`${rel} changed during the sync (${why}); the next sync picks it up`);
    this.name = 'LocalChangedError';
  }
}

export const localChangeCodes = new Set(['ENOENT', 'ELOOP', 'ENOTDIR', 'EISDIR', 'ENXIO']);

export function asLocalChange(rel: string, err: unknown): unknown {
  const code = errnoCode(err);
  return code && localChangeCodes.has(code) ? new LocalChangedError(rel, code) : err;
}

export const directoryFlags = fsc.O_RDONLY | fsc.O_DIRECTORY | fsc.O_NOFOLLOW;

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
export class DirDescriptors {
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

/**
 * Lists every file, symlink (with its target) and directory under the open home,
 * keyed by object key relative to the prefix (directories end in `/`). Leaves out,
 * and reports, what S3 cannot store; refuses homes with more than `maxEntries` entries.
 */
export async function walkHome(root: number, limits: { prefix: string; maxEntries: number }, notSynced: NotSyncedSink): Promise<Map<string, LocalEntry>> {
  const out = new Map<string, LocalEntry>();
  const prefixBytes = Buffer.byteLength(limits.prefix);

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
          if (out.size >= limits.maxEntries) {
            throw new QuotaExceededError(
              `the home holds more than ${limits.maxEntries} entries (files, links, directories); nothing was synced. Remove files and sync again`,
              out.size + 1,
              limits.maxEntries,
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

function joinRel(dir: string, name: string): string {
  return dir ? `${dir}/${name}` : name;
}

function escapeBytes(raw: Buffer): string {
  return [...raw].map((b) => (b >= 0x20 && b < 0x7f && b !== 0x5c ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, '0')}`)).join('');
}

export function errnoCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err ? String((err as { code: unknown }).code) : undefined;
}

export function errorMessage(err: unknown): string {
  if (err instanceof Error) return `${err.name === 'Error' ? '' : err.name + ': '}${err.message}`;
  return String(err);
}
