/**
 * Commands: run one and wait, or start one in the background and follow it.
 * Output is followed by byte offsets (GET .../commands/{id}?stdout_offset=&wait=20),
 * never by one request held open, so a command may run for hours while no call
 * lasts longer than the API's 29 s; a dropped connection repeats the same read
 * at the same offsets, so no byte is lost or delivered twice.
 */
import { randomBytes } from 'node:crypto';
import { ConflictError, SandboxApiError } from './errors.js';
import type { ApiClient } from './http.js';
import type { CommandInfo, CommandOutputPage, CommandStatus } from './types.js';

export interface RunOptions {
  /** Working directory (absolute). Default: the sandbox's sticky cwd. */
  cwd?: string;
  env?: Record<string, string>;
  /** Non-root user to run as. Default: agent. */
  user?: string;
  /** The command is killed after this long. Default: 3600 s. */
  timeoutMs?: number;
  onStdout?: (chunk: string) => void;
  onStderr?: (chunk: string) => void;
  /** Text written to stdin first. */
  stdin?: string;
  /** Keep stdin open for handle.sendStdin() (background commands). */
  stdinOpen?: boolean;
  /** Your own command id (letters, digits, _ and -): a retry never runs the command twice. Default: a random one. */
  commandId?: string;
  /** Aborting stops waiting; for a foreground run it kills the command too. */
  signal?: AbortSignal;
}

export interface CommandResult {
  commandId: string;
  /** Null when the command did not exit by itself (killed, timed out, lost). */
  exitCode: number | null;
  status: CommandStatus;
  stdout: string;
  stderr: string;
  /** Whether the API kept less than the stream held (past COMMAND_OUTPUT_MAX_BYTES). */
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
}

const finalStatuses: readonly CommandStatus[] = ['exited', 'timed_out', 'killed', 'lost'];

/** A command id like the API's own: `sdk-` and 20 random characters. */
export function newCommandId(): string {
  return `sdk-${randomBytes(15)
    .toString('base64url')
    .replace(/[^A-Za-z0-9]/g, '0')
    .slice(0, 20)}`;
}

/** A command started in the background: follow its output, wait for it, kill it, write its stdin. */
export class CommandHandle {
  readonly id: string;
  /** Byte offsets of the output read so far: a handle made with them resumes there. */
  stdoutOffset: number;
  stderrOffset: number;
  /** The last record read. */
  info: CommandInfo | undefined;
  onStdout: ((chunk: string) => void) | undefined;
  onStderr: ((chunk: string) => void) | undefined;
  private stdout: string[] = [];
  private stderr: string[] = [];
  private stdinOffset: number;
  private waiting: Promise<CommandResult> | undefined;

  constructor(
    private readonly client: ApiClient,
    readonly sandboxId: string,
    commandId: string,
    o: { stdoutOffset?: number; stderrOffset?: number; stdinOffset?: number; onStdout?: (c: string) => void; onStderr?: (c: string) => void } = {},
  ) {
    this.id = commandId;
    this.stdoutOffset = o.stdoutOffset ?? 0;
    this.stderrOffset = o.stderrOffset ?? 0;
    this.stdinOffset = o.stdinOffset ?? 0;
    this.onStdout = o.onStdout;
    this.onStderr = o.onStderr;
  }

  private get path(): string {
    return `/sandboxes/${this.sandboxId}/commands/${encodeURIComponent(this.id)}`;
  }

  /** Takes one page of output: it must start at the offsets asked, and moves them. */
  absorb(page: CommandOutputPage): boolean {
    const progressed = page.stdout_offset_next > this.stdoutOffset || page.stderr_offset_next > this.stderrOffset;
    if (page.stdout) {
      this.stdout.push(page.stdout);
      this.onStdout?.(page.stdout);
    }
    if (page.stderr) {
      this.stderr.push(page.stderr);
      this.onStderr?.(page.stderr);
    }
    this.stdoutOffset = page.stdout_offset_next;
    this.stderrOffset = page.stderr_offset_next;
    const { stdout: _o, stderr: _e, stdout_offset_next: _so, stderr_offset_next: _se, ...info } = page;
    this.info = info;
    this.stdinOffset = Math.max(this.stdinOffset, info.stdin_offset);
    return progressed;
  }

  /** One read from the current offsets, waiting up to `waitSeconds` for something new. */
  async poll(waitSeconds = 20, signal?: AbortSignal): Promise<{ ended: boolean; progressed: boolean }> {
    const page = await this.client.json<CommandOutputPage>('GET', this.path, {
      query: { stdout_offset: this.stdoutOffset, stderr_offset: this.stderrOffset, wait: waitSeconds },
      signal,
    });
    const progressed = this.absorb(page);
    return { ended: finalStatuses.includes(page.status), progressed };
  }

  /** Follows the command to its end and answers its result (all output this handle read). */
  wait(o: { signal?: AbortSignal } = {}): Promise<CommandResult> {
    this.waiting ??= this.follow(o.signal).finally(() => {
      this.waiting = undefined;
    });
    return this.waiting;
  }

  private async follow(signal?: AbortSignal): Promise<CommandResult> {
    for (;;) {
      const info = this.info;
      // Ended and every kept byte read (past a truncation the offsets stop short of the counts: one read with nothing new ends it too).
      if (info && finalStatuses.includes(info.status) && this.stdoutOffset >= info.stdout_bytes && this.stderrOffset >= info.stderr_bytes) break;
      const { ended, progressed } = await this.poll(20, signal);
      if (
        ended &&
        !progressed &&
        this.info &&
        (this.stdoutOffset >= this.info.stdout_bytes || this.info.stdout_truncated) &&
        (this.stderrOffset >= this.info.stderr_bytes || this.info.stderr_truncated)
      )
        break;
    }
    const info = this.info as CommandInfo;
    return {
      commandId: this.id,
      exitCode: info.exit_code,
      status: info.status,
      stdout: this.stdout.join(''),
      stderr: this.stderr.join(''),
      stdoutTruncated: info.stdout_truncated,
      stderrTruncated: info.stderr_truncated,
    };
  }

  /** Kills the command and every process it started (KILL, or TERM then KILL after 10 s). */
  async kill(o: { signal?: 'TERM' | 'KILL'; abortSignal?: AbortSignal } = {}): Promise<CommandInfo> {
    const info = await this.client.json<CommandInfo>('POST', `${this.path}/kill`, {
      body: { signal: o.signal ?? 'KILL' },
      idempotent: true,
      signal: o.abortSignal,
    });
    return info;
  }

  /**
   * Writes to stdin (the command was started with `stdinOpen: true`). Each write
   * names its byte offset, so a write repeated after a lost answer is never applied twice.
   */
  async sendStdin(data: string, o: { eof?: boolean; signal?: AbortSignal } = {}): Promise<void> {
    const offset = this.stdinOffset;
    const next = offset + Buffer.byteLength(data, 'utf8');
    try {
      const answer = await this.client.json<{ offset_next: number }>('POST', `${this.path}/stdin`, {
        body: { data, offset, eof: o.eof ?? false },
        idempotent: true,
        signal: o.signal,
      });
      this.stdinOffset = answer.offset_next;
    } catch (err) {
      // Our own earlier attempt landed and its answer was lost: the API expects exactly what follows it.
      if (err instanceof ConflictError && err.code === 'offset_mismatch' && err.details.expected_offset === next) {
        this.stdinOffset = next;
        return;
      }
      throw err;
    }
  }

  /** Closes stdin. */
  closeStdin(o: { signal?: AbortSignal } = {}): Promise<void> {
    return this.sendStdin('', { eof: true, signal: o.signal });
  }
}

export class Commands {
  constructor(
    private readonly client: ApiClient,
    private readonly sandboxId: () => Promise<string>,
  ) {}

  /**
   * Runs a command (bash -lc in the sandbox). Foreground: waits and answers
   * `{ exitCode, stdout, stderr, commandId }`. With `background: true`: answers a
   * CommandHandle as soon as the command started.
   *
   * @example
   * const { stdout } = await sbx.commands.run('ls -la', { cwd: '/home/agent' });
   * const h = await sbx.commands.run('npm run build', { background: true, onStdout: (s) => process.stdout.write(s) });
   * await h.wait();
   */
  run(cmd: string, o: RunOptions & { background: true }): Promise<CommandHandle>;
  run(cmd: string, o?: RunOptions & { background?: false }): Promise<CommandResult>;
  async run(cmd: string, o: RunOptions & { background?: boolean } = {}): Promise<CommandHandle | CommandResult> {
    const id = await this.sandboxId();
    const commandId = o.commandId ?? newCommandId();
    const body = {
      command: cmd,
      command_id: commandId,
      ...(o.cwd ? { cwd: o.cwd } : {}),
      ...(o.env ? { env: o.env } : {}),
      ...(o.user ? { user: o.user } : {}),
      ...(o.timeoutMs ? { timeout: Math.max(1, Math.ceil(o.timeoutMs / 1000)) } : {}),
      ...(o.stdin !== undefined ? { stdin: o.stdin } : {}),
      ...(o.stdinOpen ? { stdin_open: true } : {}),
      // In the foreground, let the start itself wait a little: a short command answers in one call.
      wait: o.background ? 0 : 10,
    };
    const handle = new CommandHandle(this.client, id, commandId, { onStdout: o.onStdout, onStderr: o.onStderr });
    try {
      // The command id makes the start idempotent: a retried start answers the same command.
      handle.absorb(await this.client.json<CommandOutputPage>('POST', `/sandboxes/${id}/commands`, { body, idempotent: true, signal: o.signal }));
      if (o.background) return handle;
      return await handle.wait({ signal: o.signal });
    } catch (err) {
      // A foreground command belongs to its call: given up on, it goes (even when the start's answer never came).
      if (o.signal?.aborted && !o.background) await killSoon(handle);
      throw err;
    }
  }

  /**
   * A handle on a command started earlier (by this process or another): it
   * follows the output from the given byte offsets (default: the beginning).
   */
  async connect(
    commandId: string,
    o: { stdoutOffset?: number; stderrOffset?: number; onStdout?: (c: string) => void; onStderr?: (c: string) => void; signal?: AbortSignal } = {},
  ): Promise<CommandHandle> {
    const id = await this.sandboxId();
    const handle = new CommandHandle(this.client, id, commandId, o);
    await handle.poll(0, o.signal);
    return handle;
  }

  /** The sandbox's commands, newest first (all pages, at most `limit`). */
  async list(o: { limit?: number; signal?: AbortSignal } = {}): Promise<CommandInfo[]> {
    const id = await this.sandboxId();
    const out: CommandInfo[] = [];
    let token: string | undefined;
    const limit = o.limit ?? 1000;
    do {
      const page = await this.client.json<{ commands: CommandInfo[]; next_token?: string }>('GET', `/sandboxes/${id}/commands`, {
        query: { limit: Math.min(100, limit - out.length), next_token: token },
        signal: o.signal,
      });
      out.push(...page.commands);
      token = page.next_token;
    } while (token && out.length < limit);
    return out;
  }

  /** Kills a command by id. */
  async kill(commandId: string, o: { signal?: 'TERM' | 'KILL' } = {}): Promise<CommandInfo> {
    const id = await this.sandboxId();
    return new CommandHandle(this.client, id, commandId).kill(o);
  }
}

/** Kills a command whose start may still be on its way to being recorded (404 for a moment). */
async function killSoon(handle: CommandHandle): Promise<void> {
  for (let attempt = 0; attempt < 10; attempt++) {
    try {
      await handle.kill();
      return;
    } catch (err) {
      if (!(err instanceof SandboxApiError && err.code === 'not_found')) return;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}
