/**
 * /tmp across pause and resume. /tmp is a tmpfs (memory), so a stopped
 * container loses it: pause archives it from INSIDE the sandbox (a docker exec
 * of tar as the sandbox user) into STATE_DIR/sandboxes/<id>/tmp.tar, and
 * resume feeds that archive to `tar -x` inside the started container, then
 * deletes it.
 *
 * The host never opens the sandbox's files through its own view of them
 * (/proc/<pid>/root): absolute symlinks in an untrusted /tmp would resolve on
 * the host. It only stores and replays the bytes tar wrote, bounded by the
 * tmpfs size and the host's free disk, in a root-only file.
 *
 * Kept: regular files (sparse ones stay sparse), directories, symlinks, hard
 * links, FIFOs, modes and modification times (to the nanosecond). Not kept: processes and open
 * files, sockets, files the sandbox user cannot read (reported), ownership
 * (everything comes back owned by the sandbox user), extended attributes.
 */
import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, rename, rm, stat, statfs, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ContainerInspectInfo } from 'dockerode';
import { sandboxPaths, type HostConfig } from './config';
import { DockerStreamDemuxer, type DockerClient } from './docker';
import { HostAgentError } from './errors';
import { killProcessTree } from './process-tree';
import type { TmpArchiveReport, TmpRestoreReport } from './protocol';

/** The archive may exceed the tmpfs by this factor: tar's headers (1.5 KiB each in pax format) of empty files, dirs and links take no tmpfs pages. */
export const archiveSizeFactor = 2;
/** Never let an archive take the host's disk below this much free space. */
export const hostDiskReserveBytes = 512 * 1024 * 1024;
/** Re-check the host's free space every this many archive bytes. */
const diskCheckEveryBytes = 16 * 1024 * 1024;
/** Archive and restore each get this long before tar is killed (pause and resume are dispatched with 120 s). */
export const tarTimeoutMs = 60_000;
/** How many of tar's warning lines a report carries (the rest are counted). */
const maxWarnings = 20;
const maxWarningChars = 300;

/** The image's own tools only: the request's env (PATH) must not pick the binaries. */
const tarEnv = ['LC_ALL=C', 'PATH=/usr/bin:/bin'];

/**
 * Top-level entries by name (NUL-separated), so the archive never holds `./`:
 * restoring that entry would chmod/utime /tmp itself, which the sandbox user
 * does not own. --verbatim-files-from: a file named `--remove-files` is a name.
 */
const archiveScript =
  "cd /tmp && find . -mindepth 1 -maxdepth 1 -printf '%P\\0' | " +
  // posix (pax) keeps nanosecond mtimes (build tools compare them); gnu format would cut them to seconds.
  'tar --create --file=- --format=posix --null --verbatim-files-from --files-from=- ' +
  '--ignore-failed-read --sparse --one-file-system --numeric-owner';
const restoreArgv = ['tar', '--extract', '--file=-', '--directory=/tmp', '--preserve-permissions', '--no-same-owner', '--delay-directory-restore'];

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
  const lines = stderr.split('\n').map((l) => l.trim()).filter((l) => l && !/^tar: Exiting with failure status/.test(l));
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
  io: { sink?: (chunk: Buffer) => Promise<void>; stdinFile?: string; what: string },
): Promise<TarRun> {
  const { Id: execId } = await docker.createExec(containerId, {
    Cmd: cmd,
    User: `${config.sandboxUid}:${config.sandboxGid}`,
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
  const timer = setTimeout(() => void stop(new HostAgentError('storage_error', `${io.what} took longer than ${tarTimeoutMs / 1000} s; tar was stopped`)), tarTimeoutMs);

  // Resolves to the feeding error, if any: when tar leaves early the write side fails too, and tar's exit code says why.
  const feeding: Promise<unknown> =
    io.stdinFile === undefined
      ? Promise.resolve(undefined)
      : pipeline(createReadStream(io.stdinFile), stream as unknown as NodeJS.WritableStream).then(
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

/**
 * Archives the running container's /tmp into tmp.tar (0600, root-owned),
 * written under a temporary name and renamed once complete, so a failed archive
 * never replaces a good one. Refuses (storage_error, the container keeps
 * running) when the archive would pass twice the tmpfs size or take the
 * host's disk below hostDiskReserveBytes. Unreadable files are skipped and
 * reported in `warnings`.
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
    throw new HostAgentError('storage_error', `${what}: the host's disk has less than ${hostDiskReserveBytes >> 20} MiB free; not pausing (the sandbox keeps running)`);
  }
  let file: FileHandle | undefined;
  let bytes = 0;
  let nextDiskCheck = diskCheckEveryBytes;
  try {
    file = await open(partialPath, 'wx', 0o600);
    await file.chmod(0o600);
    const handle = file;
    const run = await runTar(docker, info.Id, config, ['/bin/sh', '-c', archiveScript], {
      what,
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
            throw new HostAgentError('storage_error', `${what}: the host's disk fell below ${hostDiskReserveBytes >> 20} MiB free; not pausing (the sandbox keeps running)`);
          }
        }
        await handle.write(chunk);
      },
    });
    // 1: some files changed while being read (a process still writing); they are kept as read.
    if (run.exitCode !== 0 && run.exitCode !== 1) {
      const hint = run.exitCode === 127 ? ' (the sandbox image needs tar and find in /usr/bin or /bin)' : '';
      throw new HostAgentError('storage_error', `${what}: tar exited ${run.exitCode}${hint}: ${run.stderr.trim().slice(0, 2000) || 'no message'}; not pausing (the sandbox keeps running)`);
    }
    if (bytes === 0) throw new HostAgentError('storage_error', `${what}: tar wrote nothing; not pausing (the sandbox keeps running)`);
    await file.sync();
    await file.close();
    file = undefined;
    await rename(partialPath, finalPath);
    return { bytes, warnings: warningLines(run.stderr, run.stderrBytes), ms: Date.now() - started };
  } catch (error) {
    await file?.close().catch(() => undefined);
    await rm(partialPath, { force: true });
    throw error instanceof HostAgentError ? error : storageError(what, error);
  }
}

/**
 * Restores tmp.tar into the running container's /tmp (tar -x as the sandbox
 * user, the archive on the exec's stdin) and deletes it. On failure the
 * archive is kept and a storage_error says so: the next resume retries.
 */
export async function restoreTmp(docker: DockerClient, config: HostConfig, sandboxId: string, containerId: string): Promise<TmpRestoreReport> {
  const started = Date.now();
  const archive = tmpArchivePath(config, sandboxId);
  const kept = `the archive is kept on the host and the next start retries the restore`;
  const what = `restoring /tmp of ${sandboxId}`;
  let bytes: number;
  try {
    bytes = (await stat(archive)).size;
    const run = await runTar(docker, containerId, config, restoreArgv, { what, stdinFile: archive });
    if (run.exitCode !== 0) {
      throw new HostAgentError('storage_error', `tar exited ${run.exitCode}: ${run.stderr.trim().slice(0, 2000) || 'no message'}`);
    }
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    const code = error instanceof HostAgentError && error.code === 'docker_error' ? 'docker_error' : 'storage_error';
    throw new HostAgentError(code, `sandbox ${sandboxId} is running again but its /tmp was not restored (${reason}); ${kept}`);
  }
  await rm(archive, { force: true });
  return { bytes, ms: Date.now() - started };
}
