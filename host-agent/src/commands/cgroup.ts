/**
 * One cgroup per command, inside its sandbox's container cgroup, so "every
 * process the command started" is a set the kernel keeps: children that
 * double-fork, setsid or nohup stay members (a process cannot leave a cgroup
 * without writing to cgroup files, which a sandbox mounts read-only and has no
 * capability to change). Killing the command kills the cgroup; the command is
 * over when the cgroup is empty.
 *
 * Uses the unified (v2) hierarchy: /sys/fs/cgroup on cgroup v2 hosts (Amazon
 * Linux 2023), /sys/fs/cgroup/unified on hybrid v1 hosts (this development
 * machine). The command cgroup has no controllers of its own: limits stay
 * with the container's cgroup, which contains it.
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { HostAgentError } from '../errors';

/** Where the cgroup2 file system is mounted, from /proc/self/mountinfo. */
export function cgroup2Root(): string {
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    // ... <mount point> ... - <fs type> <source> <options>
    const [left, right] = line.split(' - ');
    if (!left || !right || right.split(' ')[0] !== 'cgroup2') continue;
    return left.split(' ')[4]!;
  }
  throw new HostAgentError('internal_error', 'no cgroup2 file system is mounted on this host; commands need one (cgroup v2 or the hybrid unified hierarchy)');
}

let root: string | undefined;

/** The cgroup2 directory of the process `pid` (from /proc/<pid>/cgroup, line `0::<path>`). */
export function cgroupOfPid(pid: number): string {
  root ??= cgroup2Root();
  const line = readFileSync(`/proc/${pid}/cgroup`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith('0::'));
  if (!line) throw new HostAgentError('internal_error', `process ${pid} has no cgroup v2 membership`);
  return join(root, line.slice(3));
}

function pidsIn(dir: string): number[] {
  try {
    return readFileSync(join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
}

function signalAll(pids: number[], signal: NodeJS.Signals): void {
  for (const pid of pids) {
    try {
      process.kill(pid, signal);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error;
    }
  }
}

/** A command's cgroup. Its name is derived from the command, so a restarted daemon finds it again. */
export class CommandCgroup {
  constructor(readonly dir: string) {}

  /** The command cgroup of `commandKey` inside the cgroup of the container whose init is `containerPid`. */
  static forContainer(containerPid: number, commandKey: string): CommandCgroup {
    return CommandCgroup.inContainerCgroup(cgroupOfPid(containerPid), commandKey);
  }

  /** The command cgroup of `commandKey` inside the container cgroup `containerCgroup` (a directory). */
  static inContainerCgroup(containerCgroup: string, commandKey: string): CommandCgroup {
    if (!/^[A-Za-z0-9_-]{1,100}$/.test(commandKey)) throw new HostAgentError('bad_request', `bad command cgroup name ${commandKey}`);
    return new CommandCgroup(join(containerCgroup, `cmd-${commandKey}`));
  }

  /** Every command cgroup under the container of `containerPid` (for reconciliation). */
  static allOfContainer(containerPid: number): CommandCgroup[] {
    const base = cgroupOfPid(containerPid);
    return readdirSync(base, { withFileTypes: true })
      .filter((e) => e.isDirectory() && e.name.startsWith('cmd-'))
      .map((e) => new CommandCgroup(join(base, e.name)));
  }

  get key(): string {
    return this.dir.slice(this.dir.lastIndexOf('/') + 5);
  }

  create(): void {
    mkdirSync(this.dir, { recursive: true });
  }

  /** Moves a process (and so everything it starts from now on) into this cgroup. */
  adopt(pid: number): void {
    writeFileSync(join(this.dir, 'cgroup.procs'), String(pid));
  }

  pids(): number[] {
    return pidsIn(this.dir);
  }

  isEmpty(): boolean {
    return this.pids().length === 0;
  }

  /** Sends `signal` to every member (no freeze: TERM lets them clean up). */
  signal(signal: NodeJS.Signals): void {
    signalAll(this.pids(), signal);
  }

  /**
   * SIGKILLs every member: with cgroup.kill (Linux 5.14+) in one step the
   * kernel makes race-free; otherwise freeze, kill every member, thaw.
   */
  kill(): void {
    if (!existsSync(this.dir)) return;
    if (existsSync(join(this.dir, 'cgroup.kill'))) {
      writeFileSync(join(this.dir, 'cgroup.kill'), '1');
      return;
    }
    const freeze = join(this.dir, 'cgroup.freeze');
    writeFileSync(freeze, '1');
    try {
      signalAll(this.pids(), 'SIGKILL');
    } finally {
      writeFileSync(freeze, '0');
    }
  }

  /** Resolves once the cgroup has no process left, or false after `timeoutMs`. */
  async waitEmpty(timeoutMs: number): Promise<boolean> {
    const until = Date.now() + timeoutMs;
    for (let delay = 5; ; delay = Math.min(100, delay * 2)) {
      if (this.isEmpty()) return true;
      if (Date.now() >= until) return false;
      await new Promise((r) => setTimeout(r, delay));
    }
  }

  /** Removes the (empty) cgroup; a cgroup that still has members or is gone is left as it is. */
  remove(): boolean {
    try {
      rmdirSync(this.dir);
      return true;
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return true;
      if (code === 'EBUSY') return false;
      throw error;
    }
  }
}
