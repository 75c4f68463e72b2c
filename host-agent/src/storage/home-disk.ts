/**
 * A sandbox home of a fixed size: an ext4 file system in a file of its own
 * (preallocated, so the space is the sandbox's from the start and no other
 * sandbox's writes can take it), loop-mounted at the home directory before the
 * container is made. Past its size, writes inside the sandbox fail with
 * ENOSPC; nothing else on the host notices. Works on any host file system
 * that supports fallocate (ext4, xfs), with no quota setup.
 *
 * The file system's size is the home's one limit: the hot sync's quota is the
 * same number, and the file system has fewer inodes than the sync's entry
 * limit, so a home can never hold more than a sync will carry.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chown, chmod, mkdir, readFile, realpath, rename, rmdir, stat, statfs, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';
import { promisify } from 'node:util';
import { StorageError } from './errors';

const run = promisify(execFile);

export interface HomeDiskOptions {
  /** The file holding the file system, outside the home. */
  image: string;
  /** The home directory: the mount point. */
  mountPoint: string;
  sizeMb: number;
  uid: number;
  gid: number;
  /** Most entries (files, directories, links) the home may hold: the hot sync's limit. */
  maxEntries: number;
}

function failure(what: string, error: unknown): StorageError {
  const e = error as { stderr?: string; message?: string };
  return new StorageError('storage_error', `${what}: ${(e.stderr || e.message || String(error)).trim()}`);
}

/** Whether `dir` is a mount point, from /proc/self/mountinfo (octal escapes decoded). */
async function isMountPoint(path: string): Promise<boolean> {
  const dir = await realpath(path).catch(() => path);
  const decode = (field: string) => field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
  return (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').some((line) => decode(line.split(' ')[4] ?? '') === dir);
}

/** Inodes for a home of `bytes`: ext4's usual one per 16 KiB, never more than the sync carries (less the 11 ext4 keeps). */
function homeInodes(bytes: number, maxEntries: number): number {
  // mke2fs rounds the count up to fill whole inode-table blocks in every group: leave it room below the limit.
  return Math.max(1024, Math.min(Math.floor(bytes / 16_384), Math.floor(maxEntries * 0.9)));
}

const mountOptions = ['-t', 'ext4', '-o', 'loop,nosuid,nodev,noatime'];

/**
 * Mounts the home's file system at the home, making it first when the image
 * does not exist yet (an empty home owned by the sandbox user); idempotent.
 * nosuid and nodev: nothing in a home may become set-uid or a device.
 */
export async function attachHomeDisk(o: HomeDiskOptions): Promise<void> {
  await mkdir(o.mountPoint, { recursive: true, mode: 0o755 });
  if (await isMountPoint(o.mountPoint)) return;
  if (!existsSync(o.image)) return makeHomeDisk(o);
  try {
    await run('mount', [...mountOptions, o.image, o.mountPoint]);
  } catch (error) {
    throw failure(`cannot mount the home file system ${o.image} at ${o.mountPoint} (the host-agent must run as root, with loop devices)`, error);
  }
}

async function makeHomeDisk(o: HomeDiskOptions): Promise<void> {
  const bytes = o.sizeMb * 1024 * 1024;
  const partial = `${o.image}.partial`;
  await mkdir(dirname(o.image), { recursive: true, mode: 0o755 });
  await unlink(partial).catch(() => undefined);
  try {
    await run('fallocate', ['-l', String(bytes), partial]);
  } catch (error) {
    await unlink(partial).catch(() => undefined);
    const fs = await statfs(dirname(o.image)).catch(() => undefined);
    const free = fs ? `${Math.floor((fs.bavail * fs.bsize) / 1024 / 1024)} MB free` : 'free space unknown';
    throw failure(`the host has no room for a ${o.sizeMb} MB home (${free} under ${dirname(o.image)})`, error);
  }
  let mounted = false;
  try {
    await run('mkfs.ext4', [
      '-q',
      '-F',
      // No root-reserved blocks (the sandbox gets all of it), no journal (a home lives and dies with its sandbox).
      '-m',
      '0',
      '-O',
      '^has_journal',
      '-N',
      String(homeInodes(bytes, o.maxEntries)),
      // nodiscard: a discard would punch the preallocated space back out of the image.
      '-E',
      'nodiscard,lazy_itable_init=1',
      '-L',
      'sandbox-home',
      partial,
    ]);
    await run('mount', [...mountOptions, partial, o.mountPoint]);
    mounted = true;
    // An empty home: no lost+found (root's, unreadable to the sandbox, nothing to sync); e2fsck makes one if it needs it.
    await rmdir(`${o.mountPoint}/lost+found`).catch((error) => {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    });
    await chown(o.mountPoint, o.uid, o.gid);
    await chmod(o.mountPoint, 0o755);
    // Only a finished home has the final name: a crash half-way leaves nothing that looks usable.
    await rename(partial, o.image);
  } catch (error) {
    if (mounted) await run('umount', ['-l', o.mountPoint]).catch(() => undefined);
    await unlink(partial).catch(() => undefined);
    throw failure(`cannot make the home file system ${o.image}`, error);
  }
}

/** The size limit of a home on its own file system (the image's size), or undefined for a plain directory. */
export async function homeDiskBytes(image: string): Promise<number | undefined> {
  try {
    return (await stat(image)).size;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw failure(`cannot read the home image ${image}`, error);
  }
}

/**
 * Unmounts the home's file system if it is mounted (force: lazily, even while
 * something still holds it open); the loop device goes with it. Idempotent.
 */
export async function detachHomeDisk(mountPoint: string, options: { force: boolean }): Promise<void> {
  if (!(await isMountPoint(mountPoint))) return;
  try {
    await run('umount', options.force ? ['-l', mountPoint] : [mountPoint]);
  } catch (error) {
    throw failure(`cannot unmount the home at ${mountPoint}; is the sandbox's container still running?`, error);
  }
}
