/**
 * /tmp across pause and resume. /tmp is a tmpfs (memory), so a stopped
 * container loses it: pause archives it from INSIDE the sandbox (docker execs
 * of find and tar, each as the user who owns the files it reads) into
 * STATE_DIR/sandboxes/<id>/tmp.tar, and resume feeds that archive to `tar -x`
 * inside the started container, again as each owner, then deletes it.
 *
 * Files of other users than the sandbox user (an exec with `user`, e.g.
 * nobody's `mktemp` files, mode 0600) are kept without any privilege: the
 * archive is one tar stream per owner (uid:gid), each written and restored by
 * a tar running as that owner, who can read and create exactly those files.
 * Streams are restored in layers (a user's files inside another user's
 * directory come after that directory) and listed in an index at the end of
 * the file. Root's files are never read (no exec runs as root).
 *
 * The host never opens the sandbox's files through its own view of them
 * (/proc/<pid>/root): absolute symlinks in an untrusted /tmp would resolve on
 * the host. It only stores and replays the bytes tar wrote, bounded by the
 * tmpfs size and the host's free disk, in a root-only file.
 *
 * Kept: regular files (sparse ones stay sparse), directories, symlinks, hard
 * links (within one owner's files), FIFOs, owners and groups, modes and
 * modification times (to the nanosecond). Not kept (each reported): files
 * their own owner cannot read (mode 000), files of root, entries in a
 * directory their owner cannot enter; and never: processes and open files,
 * sockets, extended attributes.
 */
import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, rename, rm, stat, statfs, writeFile, type FileHandle } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ContainerInspectInfo } from 'dockerode';
import { sandboxPaths, type HostConfig } from './config';
import { DockerStreamDemuxer, type DockerClient } from './docker';
import { HostAgentError } from './errors';
import { killProcessTree } from './process-tree';
import type { TmpArchiveReport, TmpRestoreReport } from '../../contract/host-protocol';

/** The archive may exceed the tmpfs by this factor: tar's headers (1.5 KiB each in pax format) of empty files, dirs and links take no tmpfs pages. */
export const archiveSizeFactor = 2;
/** Never let an archive take the host's disk below this much free space. */
const hostDiskReserveBytes = 512 * 1024 * 1024;
/** Re-check the host's free space every this many archive bytes. */
const diskCheckEveryBytes = 16 * 1024 * 1024;
/** Archive and restore each get this long before tar is killed (pause and resume are dispatched with 120 s). */
const tarTimeoutMs = 60_000;
/** How many of tar's warning lines a report carries (the rest are counted). */
const maxWarnings = 20;
const maxWarningChars = 300;

/** The image's own tools only: the request's env (PATH) must not pick the binaries. */
const tarEnv = ['LC_ALL=C', 'PATH=/usr/bin:/bin'];

/**
 * Lists, as the user running it, every entry below the directories named on
 * stdin (NUL-separated, `.` for /tmp itself), never /tmp itself: `E uid gid
 * path` per entry, and `X uid gid path` for a directory this user cannot list
 * (its owner lists it). -xdev: mounts inside /tmp are not its files.
 */
const inventoryScript =
  'cd /tmp && xargs -0 -r sh -c \'exec find "$@" -xdev -mindepth 1 ' +
  '\\( -type d \\( ! -readable -o ! -executable \\) -printf "X %U %G %y %T@ %p\\0" -prune \\) -o -printf "E %U %G %y %T@ %p\\0"\' find';

/** Sets directories' mtimes again (NUL-separated `mtime`, `name` pairs on stdin): another owner's restore inside them changed them. */
const touchScript = 'cd /tmp && xargs -0 -r -n 2 sh -c \'exec touch -m -d "@$0" -- "$1"\'';

/**
 * Archives exactly the entries named on stdin (NUL-separated, no recursion:
 * the inventory decides), so the archive never holds `./`: restoring that
 * entry would chmod/utime /tmp itself, which no sandbox user owns.
 * --verbatim-files-from: a file named `--remove-files` is a name.
 */
const archiveArgv = [
  'tar',
  '--create',
  '--file=-',
  '--directory=/tmp',
  // posix (pax) keeps nanosecond mtimes (build tools compare them); gnu format would cut them to seconds.
  '--format=posix',
  '--null',
  '--verbatim-files-from',
  // Positional: before the list it applies to.
  '--no-recursion',
  '--files-from=-',
  '--ignore-failed-read',
  '--sparse',
  '--numeric-owner',
];
const restoreArgv = ['tar', '--extract', '--file=-', '--directory=/tmp', '--preserve-permissions', '--no-same-owner', '--delay-directory-restore'];

/** One owner's tar stream inside the archive file. */
interface TmpSegment {
  uid: number;
  gid: number;
  offset: number;
  bytes: number;
}

/** Directory mtimes one owner sets again after every stream is restored: [mtime (find's %T@), name]. */
export interface TmpTimes {
  uid: number;
  gid: number;
  dirs: [string, string][];
}

/** The archive's last line: `<magic><16-digit length of the JSON index before it>\n`. */
const indexMagic = 'ESBX-TMP-INDEX ';
const footerBytes = indexMagic.length + 17;
/** The inventory's listing is bounded like the archive (a name per entry). */
const maxInventoryBytes = 32 * 1024 * 1024;
/** Each stream is a docker exec (~50 ms): ownership that changes at every level of a deep tree must not make thousands. */
const maxTmpSegments = 64;

/** Where a paused sandbox's /tmp is kept (outside the home: the sandbox cannot see or edit it). */
export function tmpArchivePath(config: HostConfig, sandboxId: string): string {
  return join(sandboxPaths(config, sandboxId).root, 'tmp.tar');
}

/** The container's /tmp tmpfs size in bytes (from its own definition; the host setting as fallback). */
export function tmpfsBytes(info: Pick<ContainerInspectInfo, 'HostConfig'>, config: HostConfig): number {
  const options = info.HostConfig.Tmpfs?.['/tmp'] ?? '';
  const match = /(?:^|,)size=(\d+)([kmg]?)(?:,|$)/i.exec(options);
  if (!match) return config.tmpSizeMb * 1024 * 1024;
  const unit = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[match[2]!.toLowerCase() as '' | 'k' | 'm' | 'g'];
  return Number(match[1]) * unit;
}

/**
 * What the archive on the host means for a container:
 * `pending` — taken before the container's last start: a restore is owed (a resume's restore failed);
 * `stale` — taken during the current run (the stop after it failed): the live /tmp is newer;
 * `none` — there is no archive.
 */
export async function tmpArchiveState(config: HostConfig, sandboxId: string, info: ContainerInspectInfo): Promise<'pending' | 'stale' | 'none'> {
  let mtimeMs: number;
  try {
    mtimeMs = (await stat(tmpArchivePath(config, sandboxId))).mtimeMs;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return 'none';
    throw storageError(`cannot read the /tmp archive of ${sandboxId}`, error);
  }
  const startedMs = Date.parse(info.State.StartedAt);
  return Number.isFinite(startedMs) && mtimeMs < startedMs ? 'pending' : 'stale';
}

function storageError(what: string, error: unknown): HostAgentError {
  return new HostAgentError('storage_error', `${what}: ${error instanceof Error ? error.message : String(error)}`);
}

async function freeBytes(dir: string): Promise<number> {
  const fs = await statfs(dir);
  return fs.bavail * fs.bsize;
}

/** tar's stderr as report lines: the first few, each cut, plus a count of the rest. */
function warningLines(stderr: string, total: number): string[] {
  const lines = stderr
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !/^tar: Exiting with failure status/.test(l));
  const shown = lines.slice(0, maxWarnings).map((l) => (l.length > maxWarningChars ? l.slice(0, maxWarningChars) + '…' : l));
  const more = lines.length - shown.length;
  if (more > 0) shown.push(`… and ${more} more line(s)`);
  if (total > stderr.length) shown.push(`… (${total - stderr.length} more bytes of warnings not kept)`);
  return shown;
}

function isClosedUnderWriter(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException)?.code ?? '';
  return ['EPIPE', 'ECONNRESET', 'ERR_STREAM_WRITE_AFTER_END', 'ERR_STREAM_DESTROYED', 'ERR_STREAM_PREMATURE_CLOSE'].includes(code);
}

interface TarRun {
  exitCode: number;
  stderr: string;
  stderrBytes: number;
}

/**
 * Runs tar inside the container as the sandbox user: stdout goes to `sink`
 * (with backpressure), stdin (when given) comes from `stdinFile`. A `sink` may
 * throw to stop the run; tar is then killed. Bounded by tarTimeoutMs.
 */
async function runTar(
  docker: DockerClient,
  containerId: string,
  config: HostConfig,
  cmd: string[],
  io: {
    sink?: (chunk: Buffer) => Promise<void>;
    stdinFile?: string;
    stdinRange?: { start: number; end: number };
    what: string;
    user?: { uid: number; gid: number };
  },
): Promise<TarRun> {
  const user = io.user ?? { uid: config.sandboxUid, gid: config.sandboxGid };
  // Never as root: every run reads or writes only what its own user may.
  if (user.uid === 0) throw new HostAgentError('internal_error', `${io.what}: refusing to run tar as root`);
  const { Id: execId } = await docker.createExec(containerId, {
    Cmd: cmd,
    User: `${user.uid}:${user.gid}`,
    Env: tarEnv,
    WorkingDir: '/',
    AttachStdin: io.stdinFile !== undefined,
    AttachStdout: true,
    AttachStderr: true,
  });
  const stream: Readable = io.stdinFile === undefined ? await docker.startExec(execId) : await docker.startExecWithStdin(execId);

  let stderr = '';
  let stderrBytes = 0;
  let unframed = false;
  const stdoutChunks: Buffer[] = [];
  const demuxer = new DockerStreamDemuxer(
    (chunk) => stdoutChunks.push(chunk),
    (chunk) => {
      stderrBytes += chunk.length;
      if (stderr.length < 8192) stderr += chunk.toString('utf8');
    },
    () => {
      unframed = true;
    },
  );

  let stopReason: HostAgentError | undefined;
  const stop = async (reason: HostAgentError) => {
    stopReason ??= reason;
    // Kill tar first: closing the stream alone leaves it blocked on a full pipe.
    try {
      const info = await docker.inspectExec(execId);
      if (info.Running && info.Pid) killProcessTree(info.Pid);
    } catch (error) {
      stopReason = new HostAgentError(stopReason.code, `${stopReason.message}; stopping tar also failed: ${(error as Error).message}`);
    }
    stream.destroy();
  };
  const timer = setTimeout(
    () => void stop(new HostAgentError('storage_error', `${io.what} took longer than ${tarTimeoutMs / 1000} s; tar was stopped`)),
    tarTimeoutMs,
  );

  // Resolves to the feeding error, if any: when tar leaves early the write side fails too, and tar's exit code says why.
  const feeding: Promise<unknown> =
    io.stdinFile === undefined
      ? Promise.resolve(undefined)
      : pipeline(
          io.stdinRange && io.stdinRange.end <= io.stdinRange.start
            ? Readable.from([])
            : createReadStream(io.stdinFile, io.stdinRange ? { start: io.stdinRange.start, end: io.stdinRange.end - 1 } : {}),
          stream as unknown as NodeJS.WritableStream,
        ).then(
          () => undefined,
          (error: unknown) => error,
        );

  try {
    for await (const chunk of stream) {
      demuxer.push(chunk as Buffer);
      if (unframed) {
        await stop(new HostAgentError('docker_error', `${io.what}: the Docker engine answered with an unframed stream (an engine error?), not tar's output`));
        break;
      }
      while (stdoutChunks.length > 0) {
        const out = stdoutChunks.shift()!;
        if (!io.sink) continue;
        try {
          await io.sink(out);
        } catch (error) {
          await stop(error instanceof HostAgentError ? error : storageError(io.what, error));
          break;
        }
      }
      if (stopReason) break;
    }
  } catch (error) {
    // A destroyed stream (stop) ends the loop with a premature-close error: the stop reason is the story.
    if (!stopReason) await stop(storageError(`${io.what}: the exec stream failed`, error));
  } finally {
    clearTimeout(timer);
    // The engine closed the exec (tar exited): nothing more can be fed.
    if (io.stdinFile !== undefined) stream.destroy();
  }
  const feedError = await feeding;
  demuxer.end();
  if (stopReason) throw stopReason;

  // The stream ends as tar exits; the engine records the exit code a moment later.
  let exitCode: number | undefined;
  for (let attempt = 0; attempt < 250 && exitCode === undefined; attempt += 1) {
    const info = await docker.inspectExec(execId);
    if (!info.Running && typeof info.ExitCode === 'number') exitCode = info.ExitCode;
    else await new Promise((r) => setTimeout(r, 20));
  }
  if (exitCode === undefined) throw new HostAgentError('docker_error', `${io.what}: the engine reported no exit code for tar`);
  // tar exiting 0 read its archive to the end marker; a write that then met the closed exec is no failure. A read failure of the host file is.
  if (exitCode === 0 && feedError && !isClosedUnderWriter(feedError)) throw storageError(`${io.what}: the archive could not be fed to tar`, feedError);
  return { exitCode, stderr, stderrBytes };
}

interface TmpEntry {
  /** As find prints it below /tmp: `./a/b`. */
  path: string;
  uid: number;
  gid: number;
  /** find's %y: d for a directory. */
  type: string;
  /** find's %T@: seconds since the epoch, to the nanosecond. */
  mtime: string;
}

const ownerOf = (e: { uid: number; gid: number }) => `${e.uid}:${e.gid}`;
const parentOf = (path: string) => path.slice(0, path.lastIndexOf('/')) || '.';
const depthOf = (path: string) => path.split('/').length;

/** Collects tar/find warnings across runs, bounded like one run's. */
class Warnings {
  readonly lines: string[] = [];
  add(lines: string[]): void {
    for (const l of lines) if (this.lines.length < maxWarnings) this.lines.push(l);
  }
}

/** A NUL-separated list on the host (root-only), fed to an exec's stdin. */
async function withList<T>(dir: string, names: string[], fn: (file: string) => Promise<T>): Promise<T> {
  const file = join(dir, `tmp-list.${process.pid}-${randomBytes(4).toString('hex')}`);
  await writeFile(file, names.map((n) => n + '\0').join(''), { mode: 0o600, flag: 'wx' });
  try {
    return await fn(file);
  } finally {
    await rm(file, { force: true });
  }
}

/**
 * Lists /tmp as each owner can see it: the sandbox user lists all it can;
 * a directory it cannot list is listed by that directory's owner, and so on.
 * Entries of root, and directories their own owner cannot list, are reported.
 */
async function inventory(docker: DockerClient, config: HostConfig, containerId: string, root: string, what: string, warnings: Warnings): Promise<TmpEntry[]> {
  const entries = new Map<string, TmpEntry>();
  const listed = new Set<string>(['.']);
  const queue: { user: { uid: number; gid: number }; dirs: string[] }[] = [{ user: { uid: config.sandboxUid, gid: config.sandboxGid }, dirs: ['.'] }];
  let listingBytes = 0;
  while (queue.length > 0) {
    const { user, dirs } = queue.shift()!;
    const chunks: Buffer[] = [];
    const run = await withList(root, dirs, (file) =>
      runTar(docker, containerId, config, ['/bin/sh', '-c', inventoryScript], {
        what: `${what} (listing as ${ownerOf(user)})`,
        stdinFile: file,
        user,
        sink: async (chunk) => {
          listingBytes += chunk.length;
          if (listingBytes > maxInventoryBytes) {
            throw new HostAgentError(
              'storage_error',
              `${what}: /tmp lists more than ${maxInventoryBytes} bytes of names; not pausing (the sandbox keeps running): remove files from /tmp and retry`,
            );
          }
          chunks.push(chunk);
        },
      }),
    );
    // find: 1 means some entries could not be read (reported through stderr).
    if (run.exitCode !== 0 && run.exitCode !== 1) {
      throw new HostAgentError(
        'storage_error',
        `${what}: listing /tmp as ${ownerOf(user)} failed (exit ${run.exitCode}): ${run.stderr.trim().slice(0, 2000) || 'no message'}; not pausing (the sandbox keeps running)`,
      );
    }
    warnings.add(warningLines(run.stderr, run.stderrBytes));
    const unlisted = new Map<string, { user: { uid: number; gid: number }; dirs: string[] }>();
    for (const record of Buffer.concat(chunks).toString('utf8').split('\0')) {
      const m = /^([EX]) (\d+) (\d+) (\S) (\d+(?:\.\d+)?) (\.\/.+)$/s.exec(record);
      if (!m) continue;
      const entry: TmpEntry = { path: m[6]!, uid: Number(m[2]), gid: Number(m[3]), type: m[4]!, mtime: m[5]! };
      if (!entries.has(entry.path)) entries.set(entry.path, entry);
      if (m[1] !== 'X' || listed.has(entry.path)) continue;
      listed.add(entry.path);
      if (entry.uid === 0) continue; // reported below with root's other entries
      if (entry.uid === user.uid) {
        // tar cannot archive a directory it cannot open, even without its contents.
        warnings.add([`${entry.path.slice(2)}: its owner (${ownerOf(entry)}) cannot list it; it is not kept`]);
        entries.delete(entry.path);
        continue;
      }
      const key = ownerOf(entry);
      const group = unlisted.get(key) ?? { user: { uid: entry.uid, gid: entry.gid }, dirs: [] };
      group.dirs.push(entry.path);
      unlisted.set(key, group);
    }
    queue.push(...unlisted.values());
  }
  const rootOwned = [...entries.values()].filter((e) => e.uid === 0);
  if (rootOwned.length > 0) {
    warnings.add([
      `${rootOwned.length} entr${rootOwned.length === 1 ? 'y' : 'ies'} owned by root not kept (no exec runs as root), e.g. ${rootOwned[0]!.path.slice(2)}`,
    ]);
  }
  return [...entries.values()].filter((e) => e.uid !== 0);
}

/**
 * Groups entries into tar streams, one per owner per layer: an entry's layer
 * is its parent's, plus one where the owner changes, so every directory is
 * restored (by its owner) before another owner's files inside it.
 */
export function tmpSegmentsOf(
  entries: readonly TmpEntry[],
  sandboxUid: number,
): { segments: { uid: number; gid: number; paths: string[] }[]; times: TmpTimes[] } {
  const byPath = new Map(entries.map((e) => [e.path, e]));
  const layers = new Map<string, number>();
  const groups = new Map<string, { layer: number; uid: number; gid: number; paths: string[] }>();
  // Directories with another owner's entries inside: those entries' restore changes their mtime.
  const retimed = new Map<string, TmpEntry>();
  const ordered = [...entries].sort((a, b) => depthOf(a.path) - depthOf(b.path) || (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  for (const e of ordered) {
    const parent = byPath.get(parentOf(e.path));
    if (parent && ownerOf(parent) !== ownerOf(e)) retimed.set(parent.path, parent);
    const layer = parent ? layers.get(parent.path)! + (ownerOf(parent) === ownerOf(e) ? 0 : 1) : 0;
    layers.set(e.path, layer);
    const key = `${layer}|${ownerOf(e)}`;
    const group = groups.get(key) ?? { layer, uid: e.uid, gid: e.gid, paths: [] };
    group.paths.push(e.path);
    groups.set(key, group);
  }
  const segments = [...groups.values()]
    .sort((a, b) => a.layer - b.layer || Number(b.uid === sandboxUid) - Number(a.uid === sandboxUid) || a.uid - b.uid || a.gid - b.gid)
    .map(({ uid, gid, paths }) => ({ uid, gid, paths }));
  const times = new Map<string, TmpTimes>();
  for (const dir of retimed.values()) {
    const t = times.get(ownerOf(dir)) ?? { uid: dir.uid, gid: dir.gid, dirs: [] };
    t.dirs.push([dir.mtime, dir.path.slice(2)]);
    times.set(ownerOf(dir), t);
  }
  return { segments, times: [...times.values()] };
}

/** The archive's index of tar streams, or undefined for an archive of one stream by the sandbox user (made before owners were kept). */
async function readIndex(archive: string): Promise<{ segments: TmpSegment[]; times: TmpTimes[] } | undefined> {
  const handle = await open(archive, 'r');
  try {
    const { size } = await handle.stat();
    if (size < footerBytes) return undefined;
    const footer = Buffer.alloc(footerBytes);
    await handle.read(footer, 0, footerBytes, size - footerBytes);
    const text = footer.toString('latin1');
    if (!text.startsWith(indexMagic) || !text.endsWith('\n')) return undefined;
    const length = Number(text.slice(indexMagic.length, -1));
    if (!Number.isInteger(length) || length < 0 || length > size - footerBytes)
      throw new Error(`the archive's index length ${text.slice(indexMagic.length, -1)} is out of range`);
    const json = Buffer.alloc(length);
    await handle.read(json, 0, length, size - footerBytes - length);
    const index = JSON.parse(json.toString('utf8')) as { version: number; segments: TmpSegment[]; times?: TmpTimes[] };
    if (index.version !== 1 || !Array.isArray(index.segments)) throw new Error(`unknown archive index version ${index.version}`);
    return { segments: index.segments, times: index.times ?? [] };
  } finally {
    await handle.close();
  }
}

/**
 * Archives the running container's /tmp into tmp.tar (0600, root-owned): one
 * tar stream per owner (see tmpSegmentsOf), then their index. Written under a
 * temporary name and renamed once complete, so a failed archive never
 * replaces a good one. Refuses (storage_error, the container keeps running)
 * when the archive would pass twice the tmpfs size or take the host's disk
 * below hostDiskReserveBytes. What is not kept is reported in `warnings`.
 */
export async function archiveTmp(docker: DockerClient, config: HostConfig, sandboxId: string, info: ContainerInspectInfo): Promise<TmpArchiveReport> {
  const started = Date.now();
  const finalPath = tmpArchivePath(config, sandboxId);
  // Unique: a concurrent pause never writes into this one's file (a crash's leftover goes with destroy).
  const partialPath = `${finalPath}.${process.pid}-${randomBytes(4).toString('hex')}.partial`;
  const root = sandboxPaths(config, sandboxId).root;
  const capBytes = archiveSizeFactor * tmpfsBytes(info, config);
  const what = `archiving /tmp of ${sandboxId}`;

  await mkdir(root, { recursive: true, mode: 0o755 });
  if ((await freeBytes(root)) < hostDiskReserveBytes) {
    throw new HostAgentError(
      'storage_error',
      `${what}: the host's disk has less than ${hostDiskReserveBytes >> 20} MiB free; not pausing (the sandbox keeps running)`,
    );
  }
  let file: FileHandle | undefined;
  let bytes = 0;
  let nextDiskCheck = diskCheckEveryBytes;
  const warnings = new Warnings();
  try {
    file = await open(partialPath, 'wx', 0o600);
    await file.chmod(0o600);
    const handle = file;
    const segments: TmpSegment[] = [];
    const plan = tmpSegmentsOf(await inventory(docker, config, info.Id, root, what, warnings), config.sandboxUid);
    if (plan.segments.length > maxTmpSegments) {
      throw new HostAgentError(
        'storage_error',
        `${what}: /tmp's files change owner ${plan.segments.length} times along their directories (at most ${maxTmpSegments}); not pausing (the sandbox keeps running): move other users' files out of each other's directories and retry`,
      );
    }
    for (const segment of plan.segments) {
      const offset = bytes;
      // Names relative to /tmp (tar runs with --directory=/tmp), as the archive has always stored them.
      const run = await withList(
        root,
        segment.paths.map((p) => p.slice(2)),
        (list) =>
          runTar(docker, info.Id, config, archiveArgv, {
            what: `${what} (files of ${ownerOf(segment)})`,
            stdinFile: list,
            user: segment,
            sink: async (chunk) => {
              if (bytes + chunk.length > capBytes) {
                throw new HostAgentError(
                  'storage_error',
                  `${what}: the archive passed ${capBytes} bytes (twice the ${capBytes / archiveSizeFactor}-byte tmpfs; many empty files or huge sparse ones?); not pausing (the sandbox keeps running): remove files from /tmp and retry`,
                );
              }
              bytes += chunk.length;
              if (bytes >= nextDiskCheck) {
                nextDiskCheck += diskCheckEveryBytes;
                if ((await freeBytes(root)) < hostDiskReserveBytes) {
                  throw new HostAgentError(
                    'storage_error',
                    `${what}: the host's disk fell below ${hostDiskReserveBytes >> 20} MiB free; not pausing (the sandbox keeps running)`,
                  );
                }
              }
              await handle.write(chunk);
            },
          }),
      );
      // 1: some files changed while being read (a process still writing); they are kept as read.
      if (run.exitCode !== 0 && run.exitCode !== 1) {
        const hint = run.exitCode === 127 ? ' (the sandbox image needs tar and find in /usr/bin or /bin)' : '';
        throw new HostAgentError(
          'storage_error',
          `${what}: tar as ${ownerOf(segment)} exited ${run.exitCode}${hint}: ${run.stderr.trim().slice(0, 2000) || 'no message'}; not pausing (the sandbox keeps running)`,
        );
      }
      if (bytes === offset)
        throw new HostAgentError('storage_error', `${what}: tar as ${ownerOf(segment)} wrote nothing; not pausing (the sandbox keeps running)`);
      warnings.add(warningLines(run.stderr, run.stderrBytes));
      segments.push({ uid: segment.uid, gid: segment.gid, offset, bytes: bytes - offset });
    }
    const index = Buffer.from(JSON.stringify({ version: 1, segments, times: plan.times }), 'utf8');
    const trailer = Buffer.concat([index, Buffer.from(`${indexMagic}${String(index.length).padStart(16, '0')}\n`, 'latin1')]);
    await handle.write(trailer);
    bytes += trailer.length;
    await file.sync();
    await file.close();
    file = undefined;
    await rename(partialPath, finalPath);
    return { bytes, warnings: warnings.lines, ms: Date.now() - started };
  } catch (error) {
    await file?.close().catch(() => undefined);
    await rm(partialPath, { force: true });
    throw error instanceof HostAgentError ? error : storageError(what, error);
  }
}

/**
 * Restores tmp.tar into the running container's /tmp (tar -x as each owner,
 * its stream on the exec's stdin, in the archive's order) and deletes it. On
 * failure the archive is kept and a storage_error says so: the next resume
 * retries (tar -x puts back what an earlier try already did).
 */
export async function restoreTmp(docker: DockerClient, config: HostConfig, sandboxId: string, containerId: string): Promise<TmpRestoreReport> {
  const started = Date.now();
  const archive = tmpArchivePath(config, sandboxId);
  const kept = `the archive is kept on the host and the next start retries the restore`;
  const what = `restoring /tmp of ${sandboxId}`;
  const warnings = new Warnings();
  let bytes: number;
  try {
    bytes = (await stat(archive)).size;
    const index = await readIndex(archive);
    for (const segment of index?.segments ?? [{ uid: config.sandboxUid, gid: config.sandboxGid, offset: 0, bytes }]) {
      const run = await runTar(docker, containerId, config, restoreArgv, {
        what: `${what} (files of ${ownerOf(segment)})`,
        stdinFile: archive,
        stdinRange: { start: segment.offset, end: segment.offset + segment.bytes },
        user: segment,
      });
      if (run.exitCode === 0) continue;
      const why = `tar${segment.uid === config.sandboxUid ? '' : ` as ${ownerOf(segment)}`} exited ${run.exitCode}: ${run.stderr.trim().slice(0, 2000) || 'no message'}`;
      // Another user's files that cannot go back (say, into a directory whose mode changed after
      // they were made there) would fail every retry: report them and go on.
      if (segment.uid !== config.sandboxUid) warnings.add([`files of ${ownerOf(segment)} not restored: ${why}`]);
      else throw new HostAgentError('storage_error', why);
    }
    for (const t of index?.times ?? []) {
      const run = await withList(dirname(archive), t.dirs.flat(), (list) =>
        runTar(docker, containerId, config, ['/bin/sh', '-c', touchScript], { what: `${what} (directory times of ${ownerOf(t)})`, stdinFile: list, user: t }),
      );
      if (run.exitCode !== 0) warnings.add([`modification times of ${ownerOf(t)}'s directories not restored: ${run.stderr.trim().slice(0, 500)}`]);
    }
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    const code = error instanceof HostAgentError && error.code === 'docker_error' ? 'docker_error' : 'storage_error';
    throw new HostAgentError(code, `sandbox ${sandboxId} is running again but its /tmp was not restored (${reason}); ${kept}`);
  }
  await rm(archive, { force: true });
  return { bytes, ms: Date.now() - started, ...(warnings.lines.length > 0 ? { warnings: warnings.lines } : {}) };
}
