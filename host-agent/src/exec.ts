/**
 * The exec verb: runs one command in a sandbox with `bash -lc` semantics, a
 * sticky working directory, capped output and a timeout enforced from the host.
 */
import { randomBytes } from 'node:crypto';
import type { z } from 'zod';
import { DockerApiError, DockerStreamDemuxer, type DockerClient } from './docker';
import { HostAgentError } from './errors';
import { CwdMarkerExtractor, StreamCapture, fitOutputs } from './exec-output';
import { cwdMarkerPrefix, execArgv, maxCommandBytes } from './exec-wrapper';
import { killProcessTree } from './process-tree';
import { ssmStdoutCap, type ExecResult, type execRequest } from './protocol';

export type ExecInput = z.output<typeof execRequest>;

/** What the printed envelope may take, leaving a margin below SSM's stdout cap. */
export const maxEnvelopeBytes = ssmStdoutCap - 200;
/** After the shell has exited, how long to wait for output still in flight before answering. */
const drainAfterExitMs = 250;
/** After a timeout kill, how long to wait for the stream to close before answering anyway. */
const drainAfterKillMs = 2_000;
const exitPollMs = 20;

/** Exit code reported when the command was killed at its timeout and docker reports none. */
const killedExitCode = 137;

function checkCommand(command: string): void {
  if (command.includes('\0')) {
    throw new HostAgentError('bad_request', 'command contains a NUL byte, which bash cannot take; write binary data to a file instead');
  }
  const bytes = Buffer.byteLength(command, 'utf8');
  if (bytes > maxCommandBytes) {
    throw new HostAgentError(
      'bad_request',
      `command is ${bytes} bytes, above the ${maxCommandBytes}-byte limit; upload a script and run it instead`,
    );
  }
}

async function createExec(docker: DockerClient, request: ExecInput, nonce: string): Promise<string> {
  try {
    const { Id } = await docker.createExec(request.sandboxId, {
      Cmd: execArgv(nonce, request.cwd, request.command, request.cwdFallback),
      User: request.user,
      Env: Object.entries(request.env).map(([name, value]) => `${name}=${value}`),
      AttachStdout: true,
      AttachStderr: true,
    });
    return Id;
  } catch (error) {
    if (error instanceof DockerApiError && error.statusCode === 404) {
      throw new HostAgentError('not_found', `sandbox ${request.sandboxId} has no container on this host`);
    }
    if (error instanceof DockerApiError && error.statusCode === 409) {
      throw new HostAgentError('bad_request', `sandbox ${request.sandboxId} is not running (paused or stopped); resume it first`);
    }
    throw error;
  }
}

/**
 * Runs `request.command` and answers when it has exited (or was killed at its
 * timeout), with head+tail-capped output that fits SSM's stdout limit.
 *
 * @example
 *   await runExec({ sandboxId, command: 'cd /tmp && ls', cwd: '/home/agent', env: {}, user: 'agent',
 *     timeoutSeconds: 30, outputBudgetChars: 20_000 }, docker)
 */
export async function runExec(request: ExecInput, docker: DockerClient): Promise<ExecResult> {
  checkCommand(request.command);
  const nonce = randomBytes(16).toString('hex');
  const execId = await createExec(docker, request, nonce);

  const captureLimit = Math.min(request.outputBudgetChars, maxEnvelopeBytes);
  const stdout = new StreamCapture(captureLimit);
  const stderr = new StreamCapture(captureLimit);
  let finalCwd: string | undefined;
  let timedOut = false;
  let killError: unknown;

  const started = Date.now();
  const stream = await docker.startExec(execId);

  await new Promise<void>((resolve) => {
    const timers: NodeJS.Timeout[] = [];
    let settled = false;

    // Background processes that keep stdout open hold the stream after the shell
    // exits; the cwd record tells us the shell is ending, so we watch for its exit.
    const watchForExit = async () => {
      while (!settled) {
        // A failed poll is simply retried on the next tick; the timeout still bounds the wait.
        const info = await docker.inspectExec(execId).catch(() => undefined);
        if (info && !info.Running) {
          timers.push(setTimeout(finish, drainAfterExitMs));
          return;
        }
        await new Promise((r) => setTimeout(r, exitPollMs));
      }
    };
    const extractor = new CwdMarkerExtractor(
      cwdMarkerPrefix(nonce),
      (chunk) => stderr.push(chunk),
      (cwd) => {
        if (finalCwd === undefined) void watchForExit();
        finalCwd = cwd;
      },
    );
    const demuxer = new DockerStreamDemuxer(
      (chunk) => stdout.push(chunk),
      (chunk) => extractor.push(chunk),
    );
    function finish() {
      if (settled) return;
      settled = true;
      for (const timer of timers) clearTimeout(timer);
      demuxer.end();
      extractor.end();
      resolve();
    }

    stream.on('data', (chunk: Buffer) => demuxer.push(chunk));
    stream.on('end', finish);
    stream.on('close', finish);
    stream.on('error', finish);

    timers.push(
      setTimeout(async () => {
        try {
          const info = await docker.inspectExec(execId);
          // Not running: it ended right at the deadline and its output is still draining.
          if (info.Running && info.Pid) {
            timedOut = true;
            killProcessTree(info.Pid);
          }
        } catch (error) {
          timedOut = true;
          killError = error;
        }
        if (!settled) timers.push(setTimeout(finish, drainAfterKillMs));
      }, request.timeoutSeconds * 1000),
    );
  });
  stream.destroy();
  const durationMs = Date.now() - started;

  if (killError) {
    const reason = killError instanceof Error ? killError.message : String(killError);
    throw new HostAgentError('internal_error', `exec timed out and its processes could not be killed: ${reason} (the host-agent must run as root)`);
  }

  const info = await docker.inspectExec(execId).catch(() => undefined);
  let exitCode = info && !info.Running && typeof info.ExitCode === 'number' ? info.ExitCode : undefined;
  if (exitCode === undefined) exitCode = timedOut ? killedExitCode : -1;

  const base: ExecResult = {
    exitCode,
    stdout: '',
    stderr: '',
    cwd: finalCwd ?? request.cwd,
    durationMs,
    timedOut,
    stdoutTruncated: false,
    stderrTruncated: false,
    stdoutBytes: stdout.totalBytes,
    stderrBytes: stderr.totalBytes,
  };
  // The output gets what the envelope leaves of SSM's limit (a long cwd takes its share).
  const envelopeOverhead = Buffer.byteLength(JSON.stringify({ ok: true, result: base }));
  const budget = Math.max(0, Math.min(request.outputBudgetChars, maxEnvelopeBytes - envelopeOverhead));
  const fitted = fitOutputs(stdout.snapshot(), stderr.snapshot(), budget);
  return {
    ...base,
    stdout: fitted.stdout.text,
    stderr: fitted.stderr.text,
    stdoutTruncated: fitted.stdout.truncated,
    stderrTruncated: fitted.stderr.truncated,
  };
}
