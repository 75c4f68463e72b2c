/**
 * A command's stdio: three FIFOs the host makes in the sandbox's io directory
 * (`<command>.in`, `.out`, `.err`), which the sandbox sees read-only at
 * /run/sandbox/io and its shell opens as its stdin, stdout and stderr.
 *
 * Why not docker exec's own streams: a background process the command leaves
 * behind holds them open, and the engine then waits on them before it reports
 * the next command's end (seconds, on every later command). With FIFOs the
 * host decides when a command's output ends (its shell's end records), and the
 * engine copies nothing.
 *
 * The host opens each FIFO read-write, so an open never blocks and a read
 * never sees end-of-file because a writer came and went: the end is the
 * host's call, made when the shell's end records arrived or the shell is gone.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { constants, open, readSync } from 'node:fs';
import { mkdir, rename, rm } from 'node:fs/promises';
import { Socket } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface FifoStdio {
  /** Write end of the command's stdin. */
  stdin: Socket;
  stdout: Socket;
  stderr: Socket;
  /**
   * For a command whose shell is gone: what its output FIFO holds now, read without waiting for the event
   * loop to get to it (a busy loop runs due timers before it reads ready descriptors, so a timer that
   * judged the output complete could end it while the shell's last writes still sat in the FIFO). What the
   * stream had read but not handed out (it was paused) goes to its 'data' listeners first; the chunks
   * returned come after it, in order. Empty once closed.
   */
  readNow(which: 'stdout' | 'stderr'): Buffer[];
  /** Closes the host's ends and removes the FIFOs (processes still holding them keep their own ends). */
  close(): Promise<void>;
}

/** Paths of a command's FIFOs in a host io directory. */
function fifoPaths(ioDir: string, commandId: string): { in: string; out: string; err: string } {
  const base = join(ioDir, commandId);
  return { in: `${base}.in`, out: `${base}.out`, err: `${base}.err` };
}

/** Opens a FIFO as a plain descriptor the socket owns (a FileHandle would close it again when collected). */
export async function openFifo(path: string, readable: boolean): Promise<{ socket: Socket; fd: number }> {
  // O_NOFOLLOW: the directory is the host's own, but never follow a link anyway.
  const fd = await new Promise<number>((resolve, reject) =>
    open(path, constants.O_RDWR | constants.O_NONBLOCK | constants.O_NOFOLLOW, (err, value) => (err ? reject(err) : resolve(value))),
  );
  return { socket: new Socket({ fd, readable, writable: !readable }), fd };
}

/**
 * Most one readNow takes: a FIFO holds 64 KiB (up to 1 MiB when enlarged), so this is all a dead shell left;
 * a process it left behind that keeps writing cannot hold the host's event loop in the loop below.
 */
const readNowMaxBytes = 1024 * 1024;

/** Reads `fd` (non-blocking) until it has nothing more right now, or readNowMaxBytes. */
function readAvailable(fd: number): Buffer[] {
  const chunks: Buffer[] = [];
  for (let total = 0; total < readNowMaxBytes; ) {
    const chunk = Buffer.allocUnsafe(Math.min(64 * 1024, readNowMaxBytes - total));
    let n: number;
    try {
      n = readSync(fd, chunk);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EAGAIN') break;
      throw error;
    }
    if (n === 0) break;
    chunks.push(chunk.subarray(0, n));
    total += n;
  }
  return chunks;
}

/**
 * Spare FIFO triples made ahead, per io directory, in `<io>/.spare` (root only,
 * mode 0700: the sandbox cannot enter it, and their names are random). Node has
 * no mkfifo: a command that finds a spare renames it into place instead of
 * starting a process; the spares are made again in batches, off the command's path.
 */
const spares = new Map<string, string[]>();
const refilling = new Set<string>();
const spareBatch = 4;

const spareDir = (ioDir: string) => join(ioDir, '.spare');

/** Makes `count` spare triples in one process; commands in this process take them (makeFifoStdio). */
export async function makeSpareFifos(ioDir: string, count = spareBatch): Promise<void> {
  const dir = spareDir(ioDir);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const bases = Array.from({ length: count }, () => join(dir, randomBytes(16).toString('hex')));
  await run('mkfifo', ['-m', '0666', ...bases.flatMap((b) => [`${b}.in`, `${b}.out`, `${b}.err`])]);
  spares.set(ioDir, [...(spares.get(ioDir) ?? []), ...bases]);
}

/** Starts a batch of spares when few are left (never waited for; a failure only means the next command makes its own). */
function refillSpares(ioDir: string): void {
  if (refilling.has(ioDir) || (spares.get(ioDir)?.length ?? 0) > 1) return;
  refilling.add(ioDir);
  void makeSpareFifos(ioDir)
    .catch(() => undefined)
    .finally(() => refilling.delete(ioDir));
}

/** Renames a spare triple to the command's names; false when there is none (or it is gone with its sandbox). */
async function takeSpare(ioDir: string, p: { in: string; out: string; err: string }): Promise<boolean> {
  const base = spares.get(ioDir)?.shift();
  if (!base) return false;
  try {
    await Promise.all([rename(`${base}.in`, p.in), rename(`${base}.out`, p.out), rename(`${base}.err`, p.err)]);
    return true;
  } catch {
    await Promise.all([p.in, p.out, p.err].map((f) => rm(f, { force: true })));
    spares.delete(ioDir);
    return false;
  }
}

/** Forgets the spares of an io directory (its sandbox ended; the files go with its state). */
export function forgetSpareFifos(ioDir: string): void {
  spares.delete(ioDir);
}

/** Makes the FIFOs (any user of the sandbox may open them: the directory is the sandbox's alone) and opens the host's ends. */
export async function makeFifoStdio(ioDir: string, commandId: string): Promise<FifoStdio> {
  const p = fifoPaths(ioDir, commandId);
  await Promise.all([p.in, p.out, p.err].map((f) => rm(f, { force: true })));
  if (!(await takeSpare(ioDir, p))) await run('mkfifo', ['-m', '0666', p.in, p.out, p.err]);
  refillSpares(ioDir);
  const [{ socket: stdin }, out, err] = await Promise.all([openFifo(p.in, false), openFifo(p.out, true), openFifo(p.err, true)]);
  const [stdout, stderr] = [out.socket, err.socket];
  let closed = false;
  return {
    stdin,
    stdout,
    stderr,
    readNow(which) {
      // Once closed the descriptor number may belong to something else.
      if (closed) return [];
      const { socket, fd } = which === 'stdout' ? out : err;
      while (socket.read() !== null) {
        // read() hands each chunk to the 'data' listeners.
      }
      return readAvailable(fd);
    },
    async close() {
      closed = true;
      stdin.destroy();
      stdout.destroy();
      stderr.destroy();
      await Promise.all([p.in, p.out, p.err].map((f) => rm(f, { force: true })));
    },
  };
}
