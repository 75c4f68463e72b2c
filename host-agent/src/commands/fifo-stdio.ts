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
import { constants, open } from 'node:fs';
import { rm } from 'node:fs/promises';
import { Socket } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface FifoStdio {
  /** Write end of the command's stdin. */
  stdin: Socket;
  stdout: Socket;
  stderr: Socket;
  /** Closes the host's ends and removes the FIFOs (processes still holding them keep their own ends). */
  close(): Promise<void>;
}

/** Paths of a command's FIFOs in a host io directory. */
export function fifoPaths(ioDir: string, commandId: string): { in: string; out: string; err: string } {
  const base = join(ioDir, commandId);
  return { in: `${base}.in`, out: `${base}.out`, err: `${base}.err` };
}

/** Opens a FIFO as a plain descriptor the socket owns (a FileHandle would close it again when collected). */
async function openFifo(path: string, readable: boolean): Promise<Socket> {
  // O_NOFOLLOW: the directory is the host's own, but never follow a link anyway.
  const fd = await new Promise<number>((resolve, reject) =>
    open(path, constants.O_RDWR | constants.O_NONBLOCK | constants.O_NOFOLLOW, (err, value) => (err ? reject(err) : resolve(value))),
  );
  return new Socket({ fd, readable, writable: !readable });
}

/** Makes the FIFOs (any user of the sandbox may open them: the directory is the sandbox's alone) and opens the host's ends. */
export async function makeFifoStdio(ioDir: string, commandId: string): Promise<FifoStdio> {
  const p = fifoPaths(ioDir, commandId);
  await Promise.all([p.in, p.out, p.err].map((f) => rm(f, { force: true })));
  // Node has no mkfifo; one short-lived process per command.
  await run('mkfifo', ['-m', '0666', p.in, p.out, p.err]);
  const [stdin, stdout, stderr] = await Promise.all([openFifo(p.in, false), openFifo(p.out, true), openFifo(p.err, true)]);
  return {
    stdin,
    stdout,
    stderr,
    async close() {
      stdin.destroy();
      stdout.destroy();
      stderr.destroy();
      await Promise.all([p.in, p.out, p.err].map((f) => rm(f, { force: true })));
    },
  };
}
