/**
 * Runs the sandbox file tool (sandbox-tool.ts) as the sandbox user inside the
 * sandbox's container: a docker exec whose attached streams carry the bytes
 * (stdin in, stdout out, both with backpressure, so memory stays bounded by a
 * chunk whatever the file's size) and whose stderr ends with the outcome.
 *
 * docker exec's own streams (not the FIFOs commands use) because the tool
 * leaves nothing running behind it, and the streams are the host's alone: no
 * process in the sandbox can open them.
 */
import { randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { HostConfig } from '../config';
import { DockerApiError, DockerStreamDemuxer, type DockerClient } from '../docker';
import { killProcessTree } from '../process-tree';
import type { FileError, FileErrorCode } from '../../../contract/host-protocol';
import { sandboxFilesArgv } from './sandbox-tool';

/** What the tool's environment holds: nothing of the caller's, and the image's own binaries. */
const toolEnv = ['LC_ALL=C.UTF-8', 'PATH=/usr/bin:/bin', 'HOME=/home/agent'];
/** Diagnostics kept from the tool's stderr (its head and its tail, where the outcome is). */
const stderrHeadBytes = 4096;
const stderrTailBytes = 32 * 1024;

export type ToolOutcome<T> = { ok: true; value: T; stderr: string } | { ok: false; error: FileError; stderr: string };

export interface ToolIo {
  /** Bytes for the tool's stdin; the stream's end closes it. */
  stdin?: Readable;
  /** Receives the tool's stdout, one chunk at a time; the next chunk waits for it (backpressure). Throwing stops the tool. */
  onStdout?: (chunk: Buffer) => Promise<void> | void;
  /** The tool is killed past this. */
  timeoutMs: number;
  /** Lets the caller stop a run (a sandbox that ends, a daemon that stops). */
  signal?: AbortSignal;
}

/** An error that names the operation's path, for the API to show. */
export function fileError(code: FileErrorCode, path: string, message: string): FileError {
  return { code, path, message };
}

function isClosedUnderWriter(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException)?.code ?? '';
  return ['EPIPE', 'ECONNRESET', 'ERR_STREAM_WRITE_AFTER_END', 'ERR_STREAM_DESTROYED', 'ERR_STREAM_PREMATURE_CLOSE'].includes(code);
}

/** Keeps the first and the last bytes of a stream of text. */
class BoundedText {
  private head = '';
  private tail = '';
  private dropped = 0;
  push(chunk: Buffer): void {
    const text = chunk.toString('utf8');
    if (this.head.length < stderrHeadBytes) {
      const room = stderrHeadBytes - this.head.length;
      this.head += text.slice(0, room);
      if (text.length <= room) return;
      this.tail += text.slice(room);
    } else this.tail += text;
    if (this.tail.length > stderrTailBytes) {
      this.dropped += this.tail.length - stderrTailBytes;
      this.tail = this.tail.slice(-stderrTailBytes);
    }
  }
  toString(): string {
    return this.head + (this.dropped > 0 ? `\n…(${this.dropped} characters left out)…\n` : '') + this.tail;
  }
}

/** The outcome line the tool wrote last, and what it wrote before it (tar's messages, Python's). */
export function parseOutcome(stderr: string, nonce: string): { outcome?: { ok?: unknown; error?: FileError }; diagnostics: string } {
  const marker = `ESBX-RESULT-${nonce} `;
  const at = stderr.lastIndexOf(`\n${marker}`);
  if (at < 0) return { diagnostics: stderr.trim() };
  const line = stderr.slice(at + 1 + marker.length).split('\n')[0]!;
  try {
    return { outcome: JSON.parse(line) as { ok?: unknown; error?: FileError }, diagnostics: stderr.slice(0, at).trim() };
  } catch {
    return { diagnostics: stderr.trim() };
  }
}

/**
 * Runs `op` with `args` in the sandbox's container as its user and answers the
 * tool's outcome. Never throws for what happens in the sandbox (those are
 * file errors the caller can act on); throws only when the host itself fails
 * (the Docker engine unreachable).
 */
export async function runSandboxTool<T>(
  docker: DockerClient,
  config: HostConfig,
  sandboxId: string,
  op: string,
  args: Record<string, unknown>,
  io: ToolIo,
): Promise<ToolOutcome<T>> {
  const path = String(args.path ?? args.from ?? '');
  const nonce = randomBytes(12).toString('hex');
  let execId: string;
  try {
    ({ Id: execId } = await docker.createExec(sandboxId, {
      Cmd: sandboxFilesArgv(nonce, op, args),
      // Never root: the tool may read and write exactly what the sandbox user may.
      User: `${config.sandboxUid}:${config.sandboxGid}`,
      Env: toolEnv,
      WorkingDir: '/',
      AttachStdin: io.stdin !== undefined,
      AttachStdout: true,
      AttachStderr: true,
    }));
  } catch (error) {
    if (error instanceof DockerApiError && (error.statusCode === 404 || error.statusCode === 409)) {
      return { ok: false, error: fileError('sandbox_not_running', path, `sandbox ${sandboxId} has no running container on this host`), stderr: '' };
    }
    throw error;
  }
  const stream: Readable = io.stdin === undefined ? await docker.startExec(execId) : ((await docker.startExecWithStdin(execId)) as unknown as Readable);

  const stderr = new BoundedText();
  const pending: Buffer[] = [];
  let unframed = false;
  const demuxer = new DockerStreamDemuxer(
    (chunk) => pending.push(chunk),
    (chunk) => stderr.push(chunk),
    () => {
      unframed = true;
    },
  );

  let stopped: FileError | undefined;
  const stop = async (reason: FileError) => {
    stopped ??= reason;
    // The tool first: closing the stream alone leaves it blocked on a full pipe.
    try {
      const info = await docker.inspectExec(execId);
      if (info.Running && info.Pid) killProcessTree(info.Pid);
    } catch (error) {
      stopped = { ...stopped, message: `${stopped.message}; stopping the tool also failed: ${(error as Error).message}` };
    }
    stream.destroy();
  };
  const timer = setTimeout(
    () => void stop(fileError('timeout', path, `the file operation took longer than ${Math.round(io.timeoutMs / 1000)} s and was stopped`)),
    io.timeoutMs,
  );
  // The one reason a run is stopped from outside: its sandbox is stopping or ending.
  const onAbort = () => void stop(fileError('sandbox_not_running', path, String(io.signal?.reason ?? 'the operation was stopped')));
  io.signal?.addEventListener('abort', onAbort, { once: true });
  if (io.signal?.aborted) onAbort();

  const feeding: Promise<unknown> =
    io.stdin === undefined
      ? Promise.resolve(undefined)
      : pipeline(io.stdin, stream as unknown as NodeJS.WritableStream).then(
          () => undefined,
          (error: unknown) => error,
        );

  try {
    for await (const chunk of stream) {
      demuxer.push(chunk as Buffer);
      if (unframed) {
        await stop(fileError('failed', path, "the Docker engine answered with an unframed stream (an engine error?), not the tool's output"));
        break;
      }
      while (pending.length > 0 && !stopped) {
        const out = pending.shift()!;
        try {
          await io.onStdout?.(out);
        } catch (error) {
          await stop(
            typeof error === 'object' && error !== null && 'code' in error && 'path' in error
              ? (error as FileError)
              : fileError('failed', path, (error as Error).message),
          );
        }
      }
      if (stopped) break;
    }
  } catch (error) {
    if (!stopped) await stop(fileError('failed', path, `the exec stream failed: ${(error as Error).message}`));
  } finally {
    clearTimeout(timer);
    io.signal?.removeEventListener('abort', onAbort);
    if (io.stdin !== undefined) stream.destroy();
  }
  const feedError = await feeding;
  demuxer.end();
  if (stopped) {
    io.stdin?.destroy();
    return { ok: false, error: stopped, stderr: stderr.toString() };
  }
  const text = stderr.toString();
  const { outcome, diagnostics } = parseOutcome(text, nonce);
  if (feedError && !isClosedUnderWriter(feedError)) {
    return { ok: false, error: fileError('failed', path, `the bytes could not be fed to the sandbox: ${(feedError as Error).message}`), stderr: text };
  }
  if (outcome?.error) return { ok: false, error: outcome.error, stderr: diagnostics };
  if (outcome && 'ok' in outcome) {
    // The outcome is the tool's last word; its exit status must agree.
    const exitCode = await exitCodeOf(docker, execId);
    if (exitCode === 0) return { ok: true, value: outcome.ok as T, stderr: diagnostics };
    return { ok: false, error: fileError('failed', path, `the file tool reported success but exited ${exitCode}`), stderr: diagnostics };
  }
  const exitCode = await exitCodeOf(docker, execId).catch(() => undefined);
  const hint = exitCode === 127 ? ' (the sandbox image needs /usr/bin/python3)' : '';
  return {
    ok: false,
    error: fileError(
      'failed',
      path,
      `the file tool ended without an outcome (exit ${exitCode ?? 'unknown'})${hint}: ${diagnostics.slice(-2000) || 'no message'}`,
    ),
    stderr: diagnostics,
  };
}

/** The engine records an exec's exit code a moment after its stream ends. */
async function exitCodeOf(docker: DockerClient, execId: string): Promise<number | undefined> {
  for (let attempt = 0; attempt < 250; attempt++) {
    const info = await docker.inspectExec(execId);
    if (!info.Running && typeof info.ExitCode === 'number') return info.ExitCode;
    await new Promise((r) => setTimeout(r, Math.min(20, 2 + attempt)));
  }
  return undefined;
}
