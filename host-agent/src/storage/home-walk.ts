/**
 * Reading a home that untrusted code writes, possibly while we read it, as root,
 * without ever leaving it: every path is resolved one component at a time from an
 * open directory descriptor, through /proc/self/fd/<fd>/<name> with O_NOFOLLOW
 * (Node has no openat), so a directory swapped for a symlink mid-sync fails the
 * open instead of leading to /etc. Symlinks are read as links, never followed.
 *
 * The file-system calls here are synchronous on purpose: on a local disk each
 * takes microseconds, while a thread-pool round trip per call cost more CPU than
 * the work itself (measured: a 1,000-file sync spent most of its time in them on
 * a busy 2-core host). Network transfers stay asynchronous and parallel; the walk
 * yields to the event loop every few hundred entries.
 */
import { closeSync, constants as fsc, fstatSync, lstatSync, openSync, readdirSync, readlinkSync, readSync, type Stats } from 'node:fs';
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import { QuotaExceededError, StorageError } from './errors';

export type HotEntryKind = 'file' | 'symlink' | 'dir';

/** S3's limit on a key, prefix included. */
const maxKeyBytes = 1024;
/** Names with these cannot round-trip through S3's XML listings. */
// biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point
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

/** Opens the home itself; the path is host-controlled, but a symlink there is still refused. */
export function openHomeRoot(dir: string): number {
  try {
    return openSync(dir, directoryFlags);
  } catch (err) {
    throw new StorageError('storage_error', `cannot open the home ${dir}: ${errorMessage(err)}`, { cause: err });
  }
}

/** A path under an open directory that the kernel resolves from that directory, not by name from `/`. */
function beneath(dirFd: number, name: string): string {
  return `/proc/self/fd/${dirFd}/${name}`;
}

/** Thrown when an entry vanished or changed type between the walk and its transfer. */
export class LocalChangedError extends Error {
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
function openDirBeneath(rootFd: number, relDir: string): number {
  let current = rootFd;
  try {
    for (const part of relDir.split('/')) {
      const next = openSync(beneath(current, part), directoryFlags);
      if (current !== rootFd) closeSync(current);
      current = next;
    }
    return current;
  } catch (err) {
    if (current !== rootFd) closeSync(current);
    throw asLocalChange(relDir, err);
  }
}

/**
 * Directory descriptors reused across the files of one sync (the walk's order
 * keeps a directory's files together): a few recently used directories stay open,
 * each opened safely from the root. A descriptor is only used synchronously, right
 * after get(), so closing an old one can never pull it from under a reader.
 */
export class DirDescriptors {
  /** Map order is use order: the first entry is the least recently used. */
  private readonly open = new Map<string, number>();
  constructor(
    private readonly rootFd: number,
    private readonly capacity = 16,
  ) {}

  get(relDir: string): number {
    if (relDir === '') return this.rootFd;
    const cached = this.open.get(relDir);
    if (cached !== undefined) {
      this.open.delete(relDir);
      this.open.set(relDir, cached);
      return cached;
    }
    const fd = openDirBeneath(this.rootFd, relDir);
    this.open.set(relDir, fd);
    if (this.open.size > this.capacity) {
      const [oldest, oldFd] = this.open.entries().next().value as [string, number];
      this.open.delete(oldest);
      closeSync(oldFd);
    }
    return fd;
  }

  close(): void {
    for (const fd of this.open.values()) closeSync(fd);
    this.open.clear();
  }
}

/** Files up to this size are read whole into memory with one call; larger ones are streamed. */
export const inMemoryFileBytes = 8 * 1024 * 1024;

export type OpenedFile = { stat: Stats; contents: Buffer } | { stat: Stats; fd: number };

/**
 * Opens regular file `rel` under the home without following links. Small files
 * come back read and closed (contents as of the returned stat); a large one comes
 * back open, for the caller to stream at most `stat.size` bytes and close.
 */
export function openRegularFile(dirs: DirDescriptors, rel: string): OpenedFile {
  const slash = rel.lastIndexOf('/');
  const relDir = slash < 0 ? '' : rel.slice(0, slash);
  let fd: number;
  try {
    // O_NONBLOCK: a file swapped for a FIFO must not block the open; fstat below rejects it unread.
    fd = openSync(beneath(dirs.get(relDir), rel.slice(slash + 1)), fsc.O_RDONLY | fsc.O_NONBLOCK | fsc.O_NOCTTY | fsc.O_NOFOLLOW);
  } catch (err) {
    throw asLocalChange(rel, err);
  }
  let handedOver = false;
  try {
    const stat = fstatSync(fd);
    if (!stat.isFile()) throw new LocalChangedError(rel, 'no longer a regular file');
    if (stat.size > inMemoryFileBytes) {
      handedOver = true;
      return { stat, fd };
    }
    const contents = Buffer.allocUnsafe(stat.size);
    let filled = 0;
    while (filled < stat.size) {
      const bytesRead = readSync(fd, contents, filled, stat.size - filled, filled);
      if (bytesRead === 0) throw new Error(`${rel} shrank while being read`);
      filled += bytesRead;
    }
    return { stat, contents };
  } finally {
    if (!handedOver) closeSync(fd);
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
  let sinceYield = 0;

  const classify = (dirFd: number, relDir: string, raw: Buffer): LocalEntry | undefined => {
    let name: string;
    try {
      name = utf8.decode(raw);
    } catch {
      notSynced.add(joinRel(relDir, escapeBytes(raw)), 'name is not valid UTF-8, which S3 keys require');
      return undefined;
    }
    const rel = joinRel(relDir, name);
    if (controlCharacter.test(name)) {
      notSynced.add(JSON.stringify(rel).slice(1, -1), 'name contains a control character');
      return undefined;
    }
    let stat: Stats;
    try {
      stat = lstatSync(beneath(dirFd, name));
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') return undefined; // removed since readdir: nothing to sync
      throw err;
    }
    const kind: HotEntryKind | undefined = stat.isFile() ? 'file' : stat.isSymbolicLink() ? 'symlink' : stat.isDirectory() ? 'dir' : undefined;
    if (!kind) {
      notSynced.add(rel, 'sockets, FIFOs and device files are not synced');
      return undefined;
    }
    const relKey = kind === 'dir' ? rel + '/' : rel;
    if (prefixBytes + Buffer.byteLength(relKey) > maxKeyBytes) {
      notSynced.add(rel, `path is too long for an S3 key (${maxKeyBytes} bytes with the prefix)`);
      return undefined;
    }
    const entry: LocalEntry = { relKey, rel, kind, stat };
    if (kind === 'symlink') {
      try {
        entry.linkTarget = readlinkSync(beneath(dirFd, name), { encoding: 'buffer' });
      } catch (err) {
        if (errnoCode(err) === 'ENOENT' || errnoCode(err) === 'EINVAL') return undefined; // replaced since lstat
        throw err;
      }
    }
    return entry;
  };

  const visit = async (dirFd: number, relDir: string): Promise<void> => {
    const subdirs: LocalEntry[] = [];
    for (const raw of readdirSync(`/proc/self/fd/${dirFd}`, { encoding: 'buffer' })) {
      const entry = classify(dirFd, relDir, raw);
      if (!entry) continue;
      if (out.size >= limits.maxEntries) {
        throw new QuotaExceededError(
          `the home holds more than ${limits.maxEntries} entries (files, links, directories); nothing was synced. Remove files and sync again`,
          out.size + 1,
          limits.maxEntries,
        );
      }
      out.set(entry.relKey, entry);
      if (entry.kind === 'dir') subdirs.push(entry);
      if (++sinceYield >= 512) {
        sinceYield = 0;
        await yieldToEventLoop();
      }
    }
    // Depth-first, one directory descriptor per level: the tree depth is bounded by the key length.
    for (const sub of subdirs) {
      let fd: number;
      try {
        fd = openSync(beneath(dirFd, sub.rel.slice(sub.rel.lastIndexOf('/') + 1)), directoryFlags);
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
        sub.stat = fstatSync(fd);
        await visit(fd, sub.rel);
      } finally {
        closeSync(fd);
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
