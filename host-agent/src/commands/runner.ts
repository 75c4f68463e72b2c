/**
 * Commands on a host: the host daemon starts each one (docker exec of the
 * wrapper, in a cgroup of its own), owns it for its whole life, and writes what
 * happens where the API reads it: the output to S3 as it comes, the status and
 * counters to the command's record in DynamoDB. No SSM call waits for a
 * command; SSM only carries the ids (`run`, `kill`, `stdin`), and the caller's
 * data (command text, env, stdin) comes from the record.
 *
 * A command ends when its shell exits (what it left in the background keeps
 * running, in its cgroup), at its timeout or a kill (the whole cgroup is
 * killed, and the end is recorded once it is empty), or with its sandbox.
 */
import { randomBytes } from 'node:crypto';
import type { S3Client } from '@aws-sdk/client-s3';
import {
  CommandConflictError,
  dropPendingStdin,
  finishCommand,
  getCommand,
  claimCommandStart,
  finishCommandOnSandbox,
  markStdinDelivered,
  openCommandsOfSandbox,
  pendingStdin,
  recordCommandProgress,
  type CommandEnd,
} from '../../../lambdas/shared/command-store';
import type { CommandEndReason, CommandRecord } from '../../../lambdas/shared/command-state';
import { whileDependencyDown } from '../../../lambdas/shared/dependencies';
import { logger } from '../../../lambdas/shared/logger';
import { endExec, getSandbox } from '../../../lambdas/shared/sandbox-store';
import { sandboxPaths, type HostConfig } from '../config';
import { sandboxEnv } from '../claim';
import { sandboxIoMount } from '../create';
import type { ExecInspectInfo } from 'dockerode';
import { DockerApiError, type DockerClient } from '../docker';
import { HostAgentError } from '../errors';
import { CwdMarkerExtractor } from '../exec-output';
import { cwdMarkerPrefix, execArgv, maxCommandBytes } from '../exec-wrapper';
import { commandOutputPrefix, runOutputBudgetChars, type CommandSnapshot, type RunResult } from '../../../contract/host-protocol';
import { CommandCgroup } from './cgroup';
import { ExecServerError, execServerUser, type ExecServers } from './exec-server';
import { makeFifoStdio, type FifoStdio } from './fifo-stdio';
import { isAlive } from '../process-tree';
import { OutputStore } from './output-store';
import { span } from '../../../lambdas/shared/timing';

export interface CommandRunnerOptions {
  docker: DockerClient;
  hostConfig: HostConfig;
  s3: S3Client;
  bucket: string;
  /** This daemon incarnation; records started by another one are its reconciliation's to close. */
  runnerId: string;
  /** Per stream. */
  outputMaxBytes: number;
  /** A TERM kill escalates to KILL after this long. @default 10000 */
  termGraceMs?: number;
  /** Warm processes in the sandboxes that start their commands (exec-server.ts); without them every command is a docker exec. */
  execServers?: ExecServers;
}

/** A command's shell, started by the sandbox's exec server or by a docker exec. */
interface CommandProcess {
  /** Its pid on the host. */
  pid: number;
  /** Its cgroup (not made yet). */
  cgroup: CommandCgroup;
  /** Its exit code once it ended (null: ended, code unknown); undefined while it runs or nobody knows yet. */
  exited(): Promise<number | null | undefined>;
}

/** Exit code reported when a command was killed and docker reports none. */
const killedExitCode = 137;
/** After the shell exited, output still in flight gets this long to arrive. */
const drainAfterExitMs = 100;
/** How often a command whose shell might have died unseen is checked. */
const exitBackstopMs = 1_000;

/** A pending command nobody started after this long is lost. */
const unstartedAfterMs = 60_000;

interface Running {
  record: CommandRecord;
  key: string;
  /** Its shell: pid, cgroup and exit code. */
  proc: CommandProcess;
  stdio: FifoStdio;
  output: OutputStore;
  startedMs: number;
  finalCwd?: string;
  /** The exit status the shell wrote in its end record (exec-wrapper.ts): its code when nothing else reports one. */
  reportedExit?: number;
  /** Why it is being ended from outside, if it is. */
  ending?: { reason: CommandEndReason; signal: 'TERM' | 'KILL' };
  stdinChain: Promise<void>;
  stdinClosed: boolean;
  done: Promise<CommandRecord>;
}

function snapshot(r: CommandRecord): CommandSnapshot {
  return {
    status: r.status,
    exitCode: r.exit_code ?? null,
    ...(r.started_at ? { startedAt: r.started_at } : {}),
    ...(r.ended_at ? { endedAt: r.ended_at } : {}),
    ...(r.duration_ms !== undefined ? { durationMs: r.duration_ms } : {}),
    ...(r.final_cwd ? { finalCwd: r.final_cwd } : {}),
    ...(r.end_reason ? { endReason: r.end_reason } : {}),
    ...(r.end_detail ? { endDetail: r.end_detail } : {}),
    stdoutBytes: r.stdout_bytes ?? 0,
    stderrBytes: r.stderr_bytes ?? 0,
    stdoutTotalBytes: r.stdout_total_bytes ?? r.stdout_bytes ?? 0,
    stderrTotalBytes: r.stderr_total_bytes ?? r.stderr_bytes ?? 0,
    stdoutTruncated: r.stdout_truncated ?? false,
    stderrTruncated: r.stderr_truncated ?? false,
  };
}

/** JSON size of a string (what it costs in the host's one-line answer). */
const jsonSize = (s: string) => Buffer.byteLength(JSON.stringify(s));

export class CommandRunner {
  private readonly running = new Map<string, Running>();
  private readonly termGraceMs: number;

  constructor(private readonly o: CommandRunnerOptions) {
    this.termGraceMs = o.termGraceMs ?? 10_000;
  }

  private key(sandboxId: string, commandId: string): string {
    return `${sandboxId}/${commandId}`;
  }

  /** Commands this daemon runs now. */
  get size(): number {
    return this.running.size;
  }

  /**
   * Starts the command (once, however often its start is delivered) and
   * answers when it ended within `answerWithinMs`, or then as it stands.
   */
  async run(req: { sandboxId: string; commandId: string; answerWithinMs: number }): Promise<RunResult> {
    const key = this.key(req.sandboxId, req.commandId);
    let current = this.running.get(key);
    if (!current) {
      const outcome = await this.start(req.sandboxId, req.commandId);
      if (!('running' in outcome)) return { command: snapshot(outcome.record) };
      current = outcome.running;
    }
    return this.answer(current, req.answerWithinMs);
  }

  private async answer(c: Running, withinMs: number): Promise<RunResult> {
    let timer: NodeJS.Timeout | undefined;
    const ended = await Promise.race([c.done, new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), withinMs)))]);
    clearTimeout(timer);
    if (!ended) return { command: { ...snapshot(c.record), status: 'running' } };
    return { command: snapshot(ended), ...(await this.inlineOutput(c, ended)) };
  }

  /** The whole output in the answer when it is small (saves the API reading it back from S3). */
  private async inlineOutput(c: Running, r: CommandRecord): Promise<Pick<RunResult, 'output'>> {
    const small = (r.stdout_bytes ?? 0) + (r.stderr_bytes ?? 0) <= runOutputBudgetChars && !r.stdout_truncated && !r.stderr_truncated;
    const captured = (c as Running & { captured?: { stdout: Buffer[]; stderr: Buffer[] } }).captured;
    if (!small || !captured) return {};
    const stdout = Buffer.concat(captured.stdout).toString('utf8');
    const stderr = Buffer.concat(captured.stderr).toString('utf8');
    if (jsonSize(stdout) + jsonSize(stderr) > runOutputBudgetChars) return {};
    return { output: { stdout, stderr } };
  }

  /**
   * Claims the record (pending -> running, which also reads it), then starts
   * the exec; when another delivery claimed it first, or it is no longer
   * pending, answers the record as it is.
   */
  private async start(sandboxId: string, commandId: string): Promise<{ running: Running } | { record: CommandRecord }> {
    const key = this.key(sandboxId, commandId);
    let record: CommandRecord;
    let claimed: CommandRecord;
    try {
      ({ before: record, after: claimed } = await span('runner.claim', () =>
        claimCommandStart(sandboxId, commandId, { runnerId: this.o.runnerId, startedAt: new Date().toISOString() }),
      ));
    } catch (err) {
      if (!(err instanceof CommandConflictError)) throw err;
      // A concurrent delivery of the same start may be running it here.
      const raced = this.running.get(key);
      if (raced) return { running: raced };
      if (!err.current) throw new HostAgentError('not_found', `command ${commandId} of sandbox ${sandboxId} does not exist`);
      return { record: err.current };
    }
    const env = record.env ?? {};
    const stdin = record.stdin ?? '';
    if (record.command.includes('\0') || Buffer.byteLength(record.command) > maxCommandBytes) {
      return {
        record: await this.settle(claimed, {
          status: 'lost',
          exitCode: null,
          endedAt: new Date().toISOString(),
          endReason: 'not_started',
          endDetail: 'the command is not valid for bash (NUL byte or over 1 MiB)',
        }),
      };
    }

    const nonce = randomBytes(16).toString('hex');
    const ioDir = sandboxPaths(this.o.hostConfig, sandboxId).io;
    let stdio: FifoStdio | undefined;
    let proc: CommandProcess;
    try {
      stdio = await makeFifoStdio(ioDir, commandId);
      proc = await this.launch(sandboxId, commandId, ioDir, record.user, {
        argv: execArgv(nonce, record.cwd, record.command, record.cwd_fallback ?? '', `${sandboxIoMount}/${commandId}`),
        // A claimed pool container's sandbox env first (a cold container has it in its config); the command's wins.
        env: [...sandboxEnv(this.o.hostConfig, sandboxId), ...Object.entries(env).map(([name, value]) => `${name}=${value}`)],
      });
      // Into its own cgroup before it may start anything: the wrapper waits for the "go" line.
      proc.cgroup.create();
      proc.cgroup.adopt(proc.pid);
    } catch (error) {
      await stdio?.close().catch(() => undefined);
      const detail =
        error instanceof DockerApiError && (error.statusCode === 404 || error.statusCode === 409)
          ? `sandbox ${sandboxId} has no running container on this host`
          : `the host could not start it: ${(error as Error).message}`;
      return {
        record: await this.settle(claimed, { status: 'lost', exitCode: null, endedAt: new Date().toISOString(), endReason: 'not_started', endDetail: detail }),
      };
    }
    const io = stdio;

    const captured = { stdout: [] as Buffer[], stderr: [] as Buffer[], bytes: 0 };
    const output = new OutputStore({
      s3: this.o.s3,
      bucket: this.o.bucket,
      prefix: commandOutputPrefix(record.tenant_id, sandboxId, commandId),
      maxBytesPerStream: this.o.outputMaxBytes,
      onStored: (p) =>
        recordCommandProgress(sandboxId, commandId, {
          stdoutBytes: p.stdout.stored,
          stderrBytes: p.stderr.stored,
          stdoutTotal: p.stdout.total,
          stderrTotal: p.stderr.total,
        }),
      // Too much waiting for S3: the command's writes block until it catches up.
      onBackpressure: (paused) => {
        for (const stream of [io.stdout, io.stderr]) {
          if (paused) stream.pause();
          else stream.resume();
        }
      },
      onError: (error) => logger.warn('command output: upload failed; retrying', { sandboxId, commandId, err: error }),
    });
    const keep = (stream: 'stdout' | 'stderr', chunk: Buffer) => {
      output.push(stream, chunk);
      // A small copy for the start answer: commands that end at once answer without a read from S3.
      if (captured.bytes + chunk.length <= runOutputBudgetChars) {
        captured[stream].push(Buffer.from(chunk));
        captured.bytes += chunk.length;
      } else captured.bytes = Number.POSITIVE_INFINITY;
    };

    let resolveDone!: (r: CommandRecord) => void;
    const c: Running & { captured: typeof captured } = {
      record: claimed,
      key,
      proc,
      stdio: io,
      output,
      startedMs: Date.now(),
      stdinChain: Promise.resolve(),
      stdinClosed: false,
      done: new Promise<CommandRecord>((r) => (resolveDone = r)),
      captured,
    };
    this.running.set(key, c);

    // The shell's last writes: a cwd record on stderr and an end record on stdout. With both read, its output is all in.
    let endRecords = 0;
    const stderrMarks = new CwdMarkerExtractor(
      cwdMarkerPrefix(nonce),
      (chunk) => keep('stderr', chunk),
      (cwd) => {
        c.finalCwd = cwd;
        if (++endRecords === 2) void watchExit();
      },
    );
    const stdoutMarks = new CwdMarkerExtractor(
      cwdMarkerPrefix(nonce),
      (chunk) => keep('stdout', chunk),
      (payload) => {
        // "go": the shell has its stdin open; closing ours now ends it after what was written (closed earlier, the FIFO would lose it).
        if (payload === 'go') {
          if (!record.stdin_open && !c.stdinClosed) {
            c.stdinClosed = true;
            io.stdin.end();
          }
          return;
        }
        if (/^\d{1,3}$/.test(payload)) c.reportedExit = Number(payload);
        if (++endRecords === 2) void watchExit();
      },
    );
    io.stdout.on('data', (chunk: Buffer) => stdoutMarks.push(chunk));
    io.stderr.on('data', (chunk: Buffer) => stderrMarks.push(chunk));
    for (const stream of [io.stdin, io.stdout, io.stderr]) stream.on('error', () => undefined);

    let finishing = false;
    const finish = (exitCode?: number | null) => {
      if (finishing) return;
      finishing = true;
      clearTimeout(timeoutTimer);
      clearTimeout(backstop);
      stdoutMarks.end();
      stderrMarks.end();
      void this.complete(c, exitCode).then(resolveDone, (err: unknown) => {
        logger.error('command: recording the end failed', { sandboxId, commandId, err });
        resolveDone(c.record);
      });
    };
    let watching = false;
    const watchExit = async () => {
      if (watching) return;
      watching = true;
      // The end records come just before the shell exits: wait for the exit itself (its code is the command's),
      // watching the process first (a signal 0, no engine call), then asking for its exit code.
      for (let waited = 0; !finishing && isAlive(proc.pid) && waited < 200; waited++) await new Promise((r) => setTimeout(r, 1));
      for (let attempt = 0; !finishing; attempt++) {
        const exitCode = await proc.exited();
        if (exitCode !== undefined) return finish(exitCode);
        await new Promise((r) => setTimeout(r, Math.min(50, 2 + attempt * 2)));
      }
    };
    // The shell is gone, so all it wrote is in the FIFOs: read it now, not when the event loop gets to it.
    const readRest = () => {
      for (const chunk of io.readNow('stdout')) stdoutMarks.push(chunk);
      for (const chunk of io.readNow('stderr')) stderrMarks.push(chunk);
    };
    // A shell that ended without its records (killed, out of memory) is noticed here. One that ended with
    // them but whose output the loop had not read yet is too: its records are read here and it ends as usual.
    let backstop: NodeJS.Timeout;
    const checkGone = (attempt: number) => {
      backstop = setTimeout(
        () => {
          if (finishing || watching) return;
          if (isAlive(proc.pid)) return checkGone(attempt + 1);
          readRest();
          if (watching) return;
          // What processes it left behind write meanwhile still counts.
          setTimeout(() => {
            if (finishing) return;
            readRest();
            finish();
          }, drainAfterExitMs);
        },
        Math.min(exitBackstopMs, 25 * (attempt + 1)),
      );
    };
    checkGone(0);
    const timeoutTimer = setTimeout(() => {
      if (!c.ending) this.end(c, 'timeout', 'KILL');
    }, record.timeout_s * 1000);

    // Go: the wrapper was waiting for this line; then the command's own stdin (closed once the shell says it started).
    io.stdin.write('go\n');
    if (stdin.length > 0) io.stdin.write(stdin);
    if (record.stdin_open && (record.stdin_offset ?? 0) > Buffer.byteLength(stdin)) {
      // Writes accepted while the command was pending.
      void this.deliverStdin(c);
    }
    return { running: c };
  }

  /**
   * Starts the command's shell: through the sandbox's exec server when it has a ready one for the command's
   * user, through a docker exec otherwise (or when the server fails to start it: it then started nothing).
   */
  private async launch(sandboxId: string, commandId: string, ioDir: string, user: string, what: { argv: string[]; env: string[] }): Promise<CommandProcess> {
    const server = user === execServerUser ? this.o.execServers?.ready(sandboxId, ioDir, sandboxIoMount) : undefined;
    if (server) {
      try {
        const p = await span('runner.serve', () => server.spawn(commandId, what.argv, what.env));
        return { pid: p.pid, cgroup: CommandCgroup.inContainerCgroup(server.containerCgroup, commandId), exited: p.exited };
      } catch (error) {
        if (!(error instanceof ExecServerError)) throw error;
        logger.warn('command: the exec server did not start it; starting it with docker exec', { sandboxId, commandId, err: error });
      }
    }
    const { Id: execId } = await this.o.docker.createExec(sandboxId, {
      Cmd: what.argv,
      User: user,
      Env: what.env,
      AttachStdin: false,
      AttachStdout: false,
      AttachStderr: false,
    });
    await this.o.docker.startExecDetached(execId);
    // The wrapper waits for "go" meanwhile.
    const pid = await this.o.docker.execPid(execId);
    return {
      pid,
      cgroup: CommandCgroup.forContainer(pid, commandId),
      exited: async () => {
        let info: ExecInspectInfo | undefined;
        try {
          info = await this.o.docker.inspectExec(execId);
        } catch (error) {
          // Gone with its container: nobody will know its code.
          return error instanceof DockerApiError && error.statusCode === 404 ? null : undefined;
        }
        if (info.Running) return undefined;
        return typeof info.ExitCode === 'number' ? info.ExitCode : null;
      },
    };
  }

  /** Stops the whole command from outside; its end is recorded once its cgroup is empty. */
  private end(c: Running, reason: CommandEndReason, signal: 'TERM' | 'KILL'): void {
    const escalating = c.ending?.signal === 'TERM' && signal === 'KILL';
    if (c.ending && !escalating) return;
    c.ending = { reason: c.ending?.reason ?? reason, signal };
    try {
      if (signal === 'KILL') c.proc.cgroup.kill();
      else {
        c.proc.cgroup.signal('SIGTERM');
        setTimeout(() => {
          if (!c.proc.cgroup.isEmpty()) this.end(c, reason, 'KILL');
        }, this.termGraceMs).unref();
      }
    } catch (err) {
      logger.error('command: could not signal its cgroup', { commandId: c.record.command_id, err });
    }
  }

  /** `exited`: the shell's exit code when the caller already has it (saves asking again). */
  private async complete(c: Running, exited?: number | null): Promise<CommandRecord> {
    const r = c.record;
    // The exit is reported a moment after the process is gone.
    let code = exited !== undefined ? exited : await c.proc.exited();
    for (let attempt = 0; code === undefined && attempt < 100; attempt++) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      code = await c.proc.exited();
    }
    let status: CommandEnd['status'] = 'exited';
    let detail: string | undefined;
    if (c.ending) {
      // Killed means every process it started is gone.
      if (!(await c.proc.cgroup.waitEmpty(c.ending.signal === 'TERM' ? this.termGraceMs + 2_000 : 5_000))) {
        c.proc.cgroup.kill();
        if (!(await c.proc.cgroup.waitEmpty(5_000))) detail = `processes ${c.proc.cgroup.pids().join(', ')} did not die`;
      }
      status = c.ending.reason === 'timeout' ? 'timed_out' : 'killed';
    }
    // The output ends here: what is left behind in the background writes into FIFOs nobody reads.
    await c.stdio.close();
    let exitCode: number | null = code ?? null;
    if (exitCode === null && c.ending) exitCode = killedExitCode;
    // What waited for the shell (an exec server's subshell: the sandbox's own processes can kill it) was gone
    // before it could report: the shell's own end record says what it exited with.
    if (exitCode === null && c.reportedExit !== undefined) exitCode = c.reportedExit;
    // Only a command nobody ended gets here (an ended one has its code above): nothing else is in `detail` yet.
    if (exitCode === null) detail = 'its exit code is unknown: its shell ended without its end record, and what waited for it reported none';
    const stored = await c.output.drain(30_000);
    if (stored.unstored > 0) {
      detail = [detail, `${stored.unstored} bytes of output could not be stored: ${(stored.error as Error)?.message ?? 'S3 failed'}`]
        .filter(Boolean)
        .join('; ');
    }
    const p = c.output.progress();
    const endedAt = new Date();
    const ended = await this.settle(r, {
      status,
      exitCode,
      endedAt: endedAt.toISOString(),
      durationMs: endedAt.getTime() - c.startedMs,
      ...(c.finalCwd ? { finalCwd: c.finalCwd } : {}),
      ...(c.ending ? { endReason: c.ending.reason } : {}),
      ...(detail ? { endDetail: detail } : {}),
      stdoutBytes: p.stdout.stored,
      stderrBytes: p.stderr.stored,
      stdoutTotal: p.stdout.total,
      stderrTotal: p.stderr.total,
      stdoutTruncated: p.stdout.truncated,
      stderrTruncated: p.stderr.truncated,
    });
    if (c.proc.cgroup.isEmpty()) c.proc.cgroup.remove();
    this.running.delete(c.key);
    if (r.stdin_open) await dropPendingStdin(r.sandbox_id, r.command_id).catch(() => undefined);
    return ended;
  }

  /** Records the end, and gives the sandbox its activity and sticky cwd back (one transaction). */
  private async settle(r: CommandRecord, end: CommandEnd): Promise<CommandRecord> {
    // The working directory sticks only for commands that did not name one.
    const cwd = r.cwd_fallback !== undefined ? end.finalCwd : undefined;
    let ended: CommandRecord;
    try {
      const out = await whileDependencyDown(
        () => span('runner.settle', () => finishCommandOnSandbox(r, end, { ...(cwd !== undefined ? { cwd } : {}), now: Date.now() })),
        {
          // The end is the one thing about a command that must land: keep trying while DynamoDB is away.
          forMs: 10 * 60_000,
          onRetry: (err) => logger.warn('command: recording its end failed; retrying', { commandId: r.command_id, err }),
        },
      );
      if (out.sandboxUpdated) return out.record;
      ended = out.record;
    } catch (err) {
      if (!(err instanceof CommandConflictError)) throw err;
      // Ended by someone else first (a kill of a pending command, the sandbox's end): theirs stands.
      ended = err.current ?? r;
    }
    // The sandbox is stopping or ending (a command that ran `sandbox complete` ends just then): its exec entry still goes,
    // or the reaper would wait for a command that is over.
    const sandbox = await getSandbox(r.sandbox_id).catch(() => undefined);
    if (sandbox?.execs?.[r.command_id] !== undefined) await endExec(sandbox, r.command_id, undefined, Date.now()).catch(() => undefined);
    return ended;
  }

  /** POST .../kill: a running command is stopped; a pending one never starts; leftovers of an ended one are stopped. */
  async kill(req: { sandboxId: string; commandId: string; signal: 'TERM' | 'KILL' }): Promise<{ command: CommandSnapshot }> {
    const c = this.running.get(this.key(req.sandboxId, req.commandId));
    if (c) {
      this.end(c, 'kill_requested', req.signal);
      return { command: { ...snapshot(c.record), status: 'running' } };
    }
    const record = await getCommand(req.sandboxId, req.commandId);
    if (!record) throw new HostAgentError('not_found', `command ${req.commandId} of sandbox ${req.sandboxId} does not exist`);
    if (record.status === 'pending') {
      try {
        const ended = await finishCommand(
          req.sandboxId,
          req.commandId,
          { status: 'killed', exitCode: null, endedAt: new Date().toISOString(), endReason: 'kill_requested' },
          ['pending'],
        );
        const sandbox = await getSandbox(req.sandboxId);
        if (sandbox) await endExec(sandbox, req.commandId, undefined, Date.now()).catch(() => undefined);
        return { command: snapshot(ended) };
      } catch (err) {
        if (!(err instanceof CommandConflictError)) throw err;
        // It started meanwhile: kill that.
        return this.kill(req);
      }
    }
    // Ended (or run by a daemon that is gone): whatever is left in its cgroup goes.
    await this.killLeftovers(req.sandboxId, req.commandId);
    return { command: snapshot(record) };
  }

  private async killLeftovers(sandboxId: string, commandId: string): Promise<void> {
    const info = await this.o.docker.inspectContainer(sandboxId);
    if (!info?.State.Running || !info.State.Pid) return;
    const cgroup = CommandCgroup.forContainer(info.State.Pid, commandId);
    cgroup.kill();
    if (await cgroup.waitEmpty(5_000)) cgroup.remove();
  }

  /** POST .../stdin: writes what the caller sent (in order, once) to the running command. */
  async stdin(req: { sandboxId: string; commandId: string }): Promise<{ delivered: number }> {
    const c = this.running.get(this.key(req.sandboxId, req.commandId));
    if (!c) {
      const record = await getCommand(req.sandboxId, req.commandId);
      if (!record) throw new HostAgentError('not_found', `command ${req.commandId} of sandbox ${req.sandboxId} does not exist`);
      if (record.status === 'pending') return { delivered: 0 }; // delivered when it starts
      throw new HostAgentError('bad_request', `command ${req.commandId} is ${record.status}; it takes no more input`);
    }
    await this.deliverStdin(c);
    return { delivered: (await getCommand(req.sandboxId, req.commandId))?.stdin_delivered ?? 0 };
  }

  private deliverStdin(c: Running): Promise<void> {
    c.stdinChain = c.stdinChain.then(async () => {
      if (c.stdinClosed) return;
      const r = c.record;
      const fresh = await getCommand(r.sandbox_id, r.command_id);
      let delivered = fresh?.stdin_delivered ?? 0;
      for (const chunk of await pendingStdin(r.sandbox_id, r.command_id)) {
        if (chunk.offset + chunk.bytes <= delivered) continue; // written by an earlier delivery
        if (chunk.offset !== delivered) break; // a gap: the rest waits for its turn
        await new Promise<void>((resolve, reject) => c.stdio.stdin.write(chunk.data, (err) => (err ? reject(err) : resolve())));
        await markStdinDelivered(r.sandbox_id, r.command_id, chunk);
        delivered = chunk.offset + chunk.bytes;
      }
      if (fresh?.stdin_eof && delivered >= (fresh.stdin_offset ?? 0)) {
        c.stdinClosed = true;
        c.stdio.stdin.end();
      }
    });
    const chained = c.stdinChain;
    // One failed delivery must not stop later ones: the next call retries what is still pending.
    c.stdinChain = chained.catch(() => undefined);
    return chained;
  }

  /** Ends every command of a sandbox (its end is near) and waits until each is recorded. */
  async endSandbox(sandboxId: string, reason: CommandEndReason = 'sandbox_ended'): Promise<void> {
    const mine = [...this.running.values()].filter((c) => c.record.sandbox_id === sandboxId);
    for (const c of mine) this.end(c, reason, 'KILL');
    await Promise.all(mine.map((c) => c.done));
    // Its container stops next.
    this.o.execServers?.forget(sandboxId);
  }

  /**
   * Closes what this daemon cannot finish: commands an earlier incarnation ran
   * (their processes are stopped, they are `lost`), and pending commands nobody
   * started in time. Their sandboxes keep running.
   */
  async reconcile(sandboxIds: readonly string[], now = Date.now()): Promise<{ lost: string[] }> {
    const lost: string[] = [];
    for (const sandboxId of sandboxIds) {
      for (const r of await openCommandsOfSandbox(sandboxId)) {
        if (this.running.has(this.key(sandboxId, r.command_id))) continue;
        const orphaned = r.status === 'running' && r.runner_id !== this.o.runnerId;
        const stale = r.status === 'pending' && now - Date.parse(r.created_at) > unstartedAfterMs;
        if (!orphaned && !stale) continue;
        if (orphaned) await this.killLeftovers(sandboxId, r.command_id).catch(() => undefined);
        try {
          await this.settle(r, {
            status: 'lost',
            exitCode: null,
            endedAt: new Date().toISOString(),
            endReason: orphaned ? 'host_daemon_restarted' : 'not_started',
            endDetail: orphaned
              ? 'the host daemon that ran it restarted; its processes were stopped and the output written until then is kept'
              : 'it was never started on its host',
          });
          lost.push(r.command_id);
        } catch (err) {
          logger.warn('reconcile: could not close a command', { sandboxId, commandId: r.command_id, err });
        }
      }
    }
    return { lost };
  }

  /** Daemon shutdown: stop following commands (their processes die with the daemon's supervision ending). */
  /** Commands this daemon is running now (the host's CommandsRunning figure). */
  get runningCount(): number {
    return this.running.size;
  }

  close(): void {
    for (const c of this.running.values()) void c.stdio.close();
    this.o.execServers?.close();
  }
}
