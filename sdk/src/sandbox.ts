/**
 * A sandbox: create, connect, list, and what you do with one (commands,
 * files, timeouts, pause and resume, destroy). Also the simple form: `new
 * Sandbox({ apiKey })` creates its sandbox on first use.
 */
import { randomUUID } from 'node:crypto';
import { Commands, type CommandResult } from './commands.js';
import { SandboxError, TimeoutError } from './errors.js';
import { Files } from './files.js';
import { ApiClient, type ClientOptions } from './http.js';
import type { SandboxConfig, SandboxInfo, SandboxStatus } from './types.js';

export interface SandboxOptions extends ClientOptions {
  /** Whose sandbox it is (their home persists between sandboxes). Default: SANDBOX_USER_ID, else "default". */
  userId?: string;
  config?: SandboxConfig;
  /** How long create, pause and resume wait for the sandbox to settle. Default 180000 ms. */
  readyTimeoutMs?: number;
  signal?: AbortSignal;
}

const settling: readonly SandboxStatus[] = ['creating', 'pausing', 'resuming', 'shutting_down'];
const ended: readonly SandboxStatus[] = ['stopped', 'expired', 'failed'];

/** Quotes one argument for bash: safe words as they are, anything else in single quotes. */
export function shellQuote(arg: string): string {
  if (/^[A-Za-z0-9_/.,:=@%+-]+$/.test(arg)) return arg;
  return `'${arg.replace(/'/g, `'\\''`)}'`;
}

export class Sandbox {
  readonly commands: Commands;
  readonly files: Files;
  private readonly client: ApiClient;
  private readonly options: SandboxOptions;
  private id: string | undefined;
  private creating: Promise<string> | undefined;
  /** The last record read from the API. */
  info: SandboxInfo | undefined;

  /**
   * The simple form: nothing is created until the first call that needs a sandbox.
   *
   * @example
   * const sandbox = new Sandbox({ apiKey: process.env.SANDBOX_API_KEY });
   * await sandbox.writeFile('hello.js', "console.log('Hello!');");
   * console.log((await sandbox.runCommand('node', ['hello.js'])).stdout);
   * await sandbox.destroy();
   */
  constructor(options: SandboxOptions = {}, existing?: SandboxInfo) {
    this.options = options;
    this.client = new ApiClient(options);
    if (existing) {
      this.id = existing.sandbox_id;
      this.info = existing;
    }
    this.commands = new Commands(this.client, () => this.ensure());
    this.files = new Files(this.client, () => this.ensure());
  }

  /** Creates a sandbox and waits until it is ready (bounded by readyTimeoutMs). */
  static async create(options: SandboxOptions = {}): Promise<Sandbox> {
    const sbx = new Sandbox(options);
    await sbx.ensure();
    return sbx;
  }

  /** A sandbox that exists already, by id. */
  static async connect(sandboxId: string, options: ClientOptions & { signal?: AbortSignal } = {}): Promise<Sandbox> {
    const client = new ApiClient(options);
    const info = await client.json<SandboxInfo>('GET', `/sandboxes/${sandboxId}`, { signal: options.signal });
    return new Sandbox(options, info);
  }

  /** Sandboxes of this tenant (every page), newest first. */
  static async list(o: ClientOptions & { userId?: string; status?: SandboxStatus; signal?: AbortSignal } = {}): Promise<SandboxInfo[]> {
    const client = new ApiClient(o);
    const out: SandboxInfo[] = [];
    let token: string | undefined;
    do {
      const page = await client.json<{ sandboxes: SandboxInfo[]; next_token?: string }>('GET', '/sandboxes', {
        query: { user_id: o.userId, status: o.status, limit: 100, next_token: token },
        signal: o.signal,
      });
      out.push(...page.sandboxes);
      token = page.next_token;
    } while (token);
    return out;
  }

  /** The sandbox's id (a sandbox made with `new Sandbox()` has one after its first call). */
  get sandboxId(): string {
    if (!this.id) throw new SandboxError('this sandbox is created on first use and has not been used yet');
    return this.id;
  }

  /** The sandbox's id, creating it first when this is the simple form's first use. */
  private ensure(): Promise<string> {
    if (this.id) return Promise.resolve(this.id);
    this.creating ??= this.createNow().finally(() => {
      this.creating = undefined;
    });
    return this.creating;
  }

  private async createNow(): Promise<string> {
    const o = this.options;
    const userId = o.userId ?? process.env.SANDBOX_USER_ID ?? 'default';
    // A retried create answers the same sandbox, never a second one.
    const answer = await this.client.request<SandboxInfo>('POST', '/sandboxes', {
      body: { user_id: userId, ...(o.config ? { config: o.config } : {}) },
      headers: { 'Idempotency-Key': randomUUID() },
      idempotent: true,
      signal: o.signal,
    });
    this.info = answer.body;
    this.id = answer.body.sandbox_id;
    if (answer.body.status !== 'ready' && answer.body.status !== 'running') await this.settle(o.signal);
    if (this.info.status !== 'ready' && this.info.status !== 'running') {
      throw new SandboxError(`sandbox ${this.id} is ${this.info.status}${this.info.stop_detail ? `: ${this.info.stop_detail}` : ''}`);
    }
    return this.id;
  }

  /** Follows the sandbox (GET ?wait=20) until it leaves creating / pausing / resuming / shutting_down. */
  private async settle(signal?: AbortSignal): Promise<SandboxInfo> {
    const limit = this.options.readyTimeoutMs ?? 180_000;
    const until = Date.now() + limit;
    for (;;) {
      const info = await this.client.json<SandboxInfo>('GET', `/sandboxes/${this.sandboxId}`, { query: { wait: 20 }, signal });
      this.info = info;
      if (!settling.includes(info.status)) return info;
      if (Date.now() > until) throw new TimeoutError(`sandbox ${this.sandboxId} is still ${info.status} after ${limit} ms`);
    }
  }

  /** The sandbox as it stands now. */
  async getInfo(o: { signal?: AbortSignal } = {}): Promise<SandboxInfo> {
    const id = await this.ensure();
    this.info = await this.client.json<SandboxInfo>('GET', `/sandboxes/${id}`, { signal: o.signal });
    return this.info;
  }

  /** Whether the sandbox is ready or running. */
  async isRunning(o: { signal?: AbortSignal } = {}): Promise<boolean> {
    const info = await this.getInfo(o);
    return info.status === 'ready' || info.status === 'running';
  }

  /**
   * Refreshes the idle timer; a number sets the idle timeout (ms), or name
   * either timeout. The TTL never passes the deployment's cap.
   */
  async setTimeout(timeout: number | { idleTimeoutMs?: number; ttlMs?: number }, o: { signal?: AbortSignal } = {}): Promise<SandboxInfo> {
    const id = await this.ensure();
    const t = typeof timeout === 'number' ? { idleTimeoutMs: timeout } : timeout;
    const body = {
      ...(t.idleTimeoutMs !== undefined ? { idle_timeout_seconds: Math.ceil(t.idleTimeoutMs / 1000) } : {}),
      ...(t.ttlMs !== undefined ? { ttl_seconds: Math.ceil(t.ttlMs / 1000) } : {}),
    };
    this.info = await this.client.json<SandboxInfo>('POST', `/sandboxes/${id}/timeout`, { body, idempotent: true, signal: o.signal });
    return this.info;
  }

  /** Refreshes the idle timer (the first heartbeat moves ready to running). */
  async heartbeat(o: { signal?: AbortSignal } = {}): Promise<SandboxInfo> {
    const id = await this.ensure();
    const { acknowledged: _a, ...info } = await this.client.json<SandboxInfo & { acknowledged: true }>('POST', `/sandboxes/${id}/heartbeat`, {
      idempotent: true,
      signal: o.signal,
    });
    this.info = info;
    return info;
  }

  /** Pauses the sandbox: frees CPU and memory, keeps every file. Answers once it is paused. */
  async pause(o: { signal?: AbortSignal } = {}): Promise<SandboxInfo> {
    const id = await this.ensure();
    this.info = await this.client.json<SandboxInfo>('POST', `/sandboxes/${id}/pause`, { idempotent: true, signal: o.signal });
    return settling.includes(this.info.status) ? this.settle(o.signal) : this.info;
  }

  /** Resumes a paused sandbox with every file it had. Answers once it is ready. */
  async resume(o: { signal?: AbortSignal } = {}): Promise<SandboxInfo> {
    const id = await this.ensure();
    this.info = await this.client.json<SandboxInfo>('POST', `/sandboxes/${id}/resume`, { idempotent: true, signal: o.signal });
    return settling.includes(this.info.status) ? this.settle(o.signal) : this.info;
  }

  /**
   * Destroys (ends) the sandbox (graceful by default: the home is synced back
   * first) and waits for the end: its status becomes `stopped`. A sandbox of the simple form that was never used has nothing to end.
   */
  async destroy(o: { graceful?: boolean; signal?: AbortSignal } = {}): Promise<void> {
    if (!this.id && !this.creating) return;
    const id = await this.ensure();
    const answer = await this.client.request<SandboxInfo | undefined>('DELETE', `/sandboxes/${id}`, {
      query: { graceful: o.graceful ?? true },
      signal: o.signal,
    });
    if (answer.status === 202 && answer.body) {
      this.info = answer.body;
      await this.settle(o.signal);
    } else this.info = undefined;
  }

  /** Whether the sandbox has ended: `stopped` (destroyed, completed, agent error), `expired` or `failed`. */
  static isEnded(info: SandboxInfo): boolean {
    return ended.includes(info.status);
  }

  // The simple form (seed 002): files relative to /home/agent, commands as a program and its arguments.

  /** Writes a file (text or bytes). */
  async writeFile(path: string, content: string | Uint8Array): Promise<{ path: string; size: number }> {
    const written = await this.files.write(path, content, { mkdirs: true });
    return { path: written.path, size: written.size };
  }

  /** Reads a file as text. */
  async getFile(path: string): Promise<{ path: string; content: string }> {
    return { path, content: await this.files.read(path, { format: 'text' }) };
  }

  /** Runs a program with arguments (each quoted for the shell, never interpreted by it). */
  async runCommand(
    cmd: string,
    args: readonly string[] = [],
    o: { cwd?: string; env?: Record<string, string>; timeoutMs?: number; signal?: AbortSignal } = {},
  ): Promise<CommandResult> {
    return this.commands.run([cmd, ...args].map(shellQuote).join(' '), o);
  }
}
