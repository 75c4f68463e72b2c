/**
 * A warm process in each sandbox that starts its commands: one `docker exec`
 * per sandbox instead of one per command. A Docker exec costs the engine an
 * HTTP round trip, a runc start and the engine's polls for its pid and exit
 * (70-150 ms here); the exec server starts a command with a fork and two execs.
 *
 * It is a bash program the host starts with `docker exec`, as the user commands
 * run as, so everything it starts has exactly what a `docker exec` of that user
 * gives: the same user and groups, capabilities (none), seccomp profile,
 * no_new_privs, limits and namespaces. Its environment is the one the engine
 * gave it (read back from /proc, before bash changed anything), and each command
 * gets that plus its own env, with every signal at its default and a session of
 * its own, as a docker exec gives it. It runs in a cgroup of its own inside the container's; each command
 * leaves it for the command's cgroup before it may start anything (the wrapper
 * waits for "go", exec-wrapper.ts), as with a docker exec.
 *
 * The host talks to it through two FIFOs in the sandbox's io directory (made by
 * the host; the sandbox sees them read-only and cannot make or replace files
 * there): `exec-server.req` carries command ids, a line each; `exec-server.res`
 * carries `<id> pid <pid>` (its pid in the sandbox), `<id> exit <code>` and
 * `<id> fail`. What a command runs (argv, env) never travels in a FIFO: the host
 * writes it to `<id>.spec` (NUL-separated, readable by the server's user alone)
 * and removes it once the command started.
 *
 * Nothing here gives the sandbox more than it has: the server runs as the
 * sandbox's own user, so a process of that user can stop it, read what it reads
 * or write to its FIFOs, all of which it could do to the commands themselves.
 * The host trusts it with nothing else: a pid it reports is looked up among the
 * server's own cgroup's members (never another process on the host), and a
 * command whose server went away still ends when its shell does (its exit code
 * then unknown). A server that does not answer in time is killed (its cgroup):
 * that command starts with docker exec, and the next one starts a new server.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { chown, rm, writeFile } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { logger } from '../../../lambdas/shared/logger';
import type { DockerClient } from '../docker';
import { isAlive, statFields } from '../process-tree';
import { cgroupOfPid, CommandCgroup } from './cgroup';
import { openFifo } from './fifo-stdio';

const run = promisify(execFile);

/** The user the server runs as: commands of another user go through docker exec. */
export const execServerUser = 'agent';

const requestFifo = 'exec-server.req';
const responseFifo = 'exec-server.res';
/** The cgroup the server and its waiting subshells live in, beside the containers' `cmd-*` cgroups. */
const serverCgroupName = 'exec-server';

/** A server that has not answered a start in this long is taken as gone. */
const spawnTimeoutMs = 5_000;
const readyTimeoutMs = 10_000;
/** A command whose shell is gone and whose exit the server did not report in this long has no known exit code. */
const exitReportGraceMs = 1_000;

/**
 * The server. `$1` is the io directory as the sandbox sees it. Each request is
 * served by a subshell of its own, which reports the command's pid, waits for it
 * and reports its exit code: requests never wait for each other. `env -i` gives
 * the command the server's initial environment and its own; `--default-signal`
 * undoes the SIGINT/SIGQUIT ignore bash gives background processes; `setsid`
 * (no fork: the process leads no group) makes it the leader of a session and
 * process group of its own, as a docker exec's process is (a `kill 0` in one
 * command reaches neither the server nor another command).
 */
const serverScript = [
  'io=$1',
  'env --default-signal true && setsid=$(type -P setsid) || exit 125',
  `exec 3<"$io/${requestFifo}" 4>"$io/${responseFifo}" </dev/null >/dev/null 2>&1 || exit 125`,
  "mapfile -d '' -t base </proc/$$/environ",
  'wd=$PWD',
  'serve() {',
  '  local id=$1 spec n',
  `  if ! mapfile -d '' -t spec <"$io/$id.spec" || [ "\${#spec[@]}" -lt 2 ]; then`,
  '    printf \'%s fail\\n\' "$id" >&4',
  '    return',
  '  fi',
  // biome-ignore lint/suspicious/noTemplateCurlyInString: bash's expansion, not a JS template
  '  n=${spec[0]}',
  // As a docker exec does: the container's working directory, looked up again (a pool container's home is mounted later).
  '  cd -- "$wd" || { printf \'%s fail\\n\' "$id" >&4; return; }',
  // biome-ignore lint/suspicious/noTemplateCurlyInString: bash's expansions, not a JS template
  '  env -i --default-signal -- "${base[@]}" "${spec[@]:1:n}" "$setsid" "${spec[@]:n+1}" 3<&- 4>&- &',
  '  printf \'%s pid %d\\n\' "$id" "$!" >&4',
  '  wait "$!"',
  '  printf \'%s exit %d\\n\' "$id" "$?" >&4',
  '}',
  "printf 'server ready\\n' >&4",
  'while IFS= read -r id <&3; do',
  '  [[ $id =~ ^[A-Za-z0-9_-]{1,64}$ ]] && serve "$id" &',
  'done',
].join('\n');

/** A command the server started. */
export interface ServedProcess {
  /** Its pid on the host. */
  pid: number;
  /** Its exit code once it ended (null: it ended and nobody knows its code); undefined while it runs. */
  exited(): Promise<number | null | undefined>;
}

interface Waiting {
  pid?: (pid: number) => void;
  fail: (why: string) => void;
  exitCode?: number;
}

/** The host pid of the member of `cgroupDir` whose pid in its own namespace is `nsPid`. */
function hostPidOf(cgroupDir: string, nsPid: number): number | undefined {
  for (const pid of new CommandCgroup(cgroupDir).pids()) {
    try {
      const line = readFileSync(`/proc/${pid}/status`, 'utf8')
        .split('\n')
        .find((l) => l.startsWith('NSpid:'));
      const ids = line?.slice(6).trim().split(/\s+/).map(Number) ?? [];
      if (ids.at(-1) === nsPid) return pid;
    } catch {
      // Gone meanwhile.
    }
  }
  return undefined;
}

export class ExecServerError extends Error {}

export class ExecServer {
  private readonly waiting = new Map<string, Waiting>();
  private buffered = '';
  private broken = false;

  private constructor(
    /** The server's pid on the host. */
    readonly pid: number,
    /** The cgroup of its container (commands' cgroups go there, beside the server's). */
    readonly containerCgroup: string,
    private readonly ioDir: string,
    private readonly req: Socket,
    private readonly res: Socket,
    private readonly uid: number,
    private readonly gid: number,
  ) {
    res.setEncoding('utf8');
    res.on('data', (chunk: string) => this.onData(chunk));
    for (const s of [req, res]) s.on('error', (err) => this.fail(`its FIFO failed: ${err.message}`));
  }

  private get cgroupDir(): string {
    return join(this.containerCgroup, serverCgroupName);
  }

  /**
   * Starts a server in a running container: `ioDir` is the container's io
   * directory on the host, `ioMount` where the container sees it. A server an
   * earlier daemon started there is killed first (its cgroup).
   */
  static async start(o: { docker: DockerClient; container: string; ioDir: string; ioMount: string }): Promise<ExecServer> {
    const paths = [join(o.ioDir, requestFifo), join(o.ioDir, responseFifo)];
    await Promise.all(paths.map((p) => rm(p, { force: true })));
    await run('mkfifo', ['-m', '0666', ...paths]);
    const [{ socket: req }, { socket: res }] = await Promise.all([openFifo(paths[0]!, false), openFifo(paths[1]!, true)]);
    let cgroup: CommandCgroup | undefined;
    try {
      const { Id } = await o.docker.createExec(o.container, {
        Cmd: ['/bin/bash', '--noprofile', '--norc', '-c', serverScript, 'sandbox-exec-server', o.ioMount],
        User: execServerUser,
        AttachStdin: false,
        AttachStdout: false,
        AttachStderr: false,
      });
      await o.docker.startExecDetached(Id);
      const pid = await o.docker.execPid(Id);
      const containerCgroup = cgroupOfPid(pid);
      cgroup = new CommandCgroup(join(containerCgroup, serverCgroupName));
      if (!cgroup.isEmpty()) {
        cgroup.kill();
        await cgroup.waitEmpty(5_000);
      }
      cgroup.create();
      cgroup.adopt(pid);
      const status = readFileSync(`/proc/${pid}/status`, 'utf8');
      const [uid, gid] = ['Uid:', 'Gid:'].map((k) =>
        Number(
          status
            .split('\n')
            .find((l) => l.startsWith(k))
            ?.split(/\s+/)[1],
        ),
      );
      const server = new ExecServer(pid, containerCgroup, o.ioDir, req, res, uid!, gid!);
      await server.ready();
      return server;
    } catch (error) {
      req.destroy();
      res.destroy();
      // Nothing of it stays behind.
      cgroup?.kill();
      throw error;
    }
  }

  /** Resolves once the server said it is ready; rejects when it did not in time, or exited (an image without what it needs). */
  private ready(): Promise<void> {
    return new Promise((resolve, reject) => {
      const started = Date.now();
      const check = setInterval(() => {
        if (!this.stillServes()) return fail('it exited');
        if (Date.now() - started > readyTimeoutMs) fail(`it did not start within ${readyTimeoutMs} ms`);
      }, 25);
      const fail = (why: string) => {
        clearInterval(check);
        this.waiting.delete('server');
        this.fail(why);
        reject(new ExecServerError(`the exec server did not start: ${why}`));
      };
      this.waiting.set('server', { fail });
      this.onReady = () => {
        clearInterval(check);
        this.waiting.delete('server');
        resolve();
      };
    });
  }

  private onReady: () => void = () => undefined;

  private onData(chunk: string): void {
    this.buffered += chunk;
    for (let nl = this.buffered.indexOf('\n'); nl >= 0; nl = this.buffered.indexOf('\n')) {
      const [id = '', what, value] = this.buffered.slice(0, nl).split(' ');
      this.buffered = this.buffered.slice(nl + 1);
      if (id === 'server' && what === 'ready') {
        this.onReady();
        continue;
      }
      const w = this.waiting.get(id);
      if (!w) continue;
      if (what === 'pid') w.pid?.(Number(value));
      else if (what === 'exit') w.exitCode = Number(value);
      else if (what === 'fail') w.fail('it could not read the command');
    }
    // A line longer than any the server writes is not from it.
    if (this.buffered.length > 4096) this.buffered = '';
  }

  /**
   * Whether it still serves: its process lives (not a zombie), in its cgroup.
   * One found gone is closed here, at once: what waits on it fails now, not at its timeout.
   */
  stillServes(): boolean {
    if (this.broken) return false;
    try {
      const state = statFields(this.pid)[0];
      if (state !== 'Z' && state !== 'X' && cgroupOfPid(this.pid).endsWith(`/${serverCgroupName}`)) return true;
    } catch {
      // Gone.
    }
    this.close();
    return false;
  }

  /**
   * Starts `argv` with `env` (`NAME=value`, after the server's own) and answers
   * its host pid; the process waits for its "go" (exec-wrapper.ts). Throws
   * ExecServerError when the server does not start it: then nothing was started
   * (the server's cgroup is killed first), and it is closed for good.
   */
  async spawn(commandId: string, argv: readonly string[], env: readonly string[]): Promise<ServedProcess> {
    if (!this.stillServes()) throw new ExecServerError('the exec server is gone');
    const spec = join(this.ioDir, `${commandId}.spec`);
    const w: Waiting = { fail: () => undefined };
    try {
      const text = `${[String(env.length), ...env, ...argv].join('\0')}\0`;
      await writeFile(spec, text, { mode: 0o600, flag: 'w' });
      await chown(spec, this.uid, this.gid);
      const nsPid = await new Promise<number>((resolve, reject) => {
        const timer = setTimeout(() => reject(new ExecServerError(`the exec server did not start it within ${spawnTimeoutMs} ms`)), spawnTimeoutMs);
        w.pid = (pid) => {
          clearTimeout(timer);
          resolve(pid);
        };
        w.fail = (why) => {
          clearTimeout(timer);
          reject(new ExecServerError(`the exec server did not start it: ${why}`));
        };
        this.waiting.set(commandId, w);
        this.req.write(`${commandId}\n`);
      });
      const pid = hostPidOf(this.cgroupDir, nsPid);
      if (pid === undefined) throw new ExecServerError(`the exec server reported pid ${nsPid}, which is none of its own`);
      let goneSince: number | undefined;
      return {
        pid,
        exited: async () => {
          if (w.exitCode !== undefined) {
            this.settled(commandId);
            return w.exitCode;
          }
          if (isAlive(pid)) return undefined;
          goneSince ??= Date.now();
          if (Date.now() - goneSince < exitReportGraceMs) return undefined;
          this.settled(commandId);
          return null;
        },
      };
    } catch (error) {
      this.settled(commandId);
      if (error instanceof ExecServerError) await this.stop(error.message);
      throw error;
    } finally {
      await rm(spec, { force: true }).catch(() => undefined);
    }
  }

  private fail(why: string): void {
    if (this.broken) return;
    this.broken = true;
    // Those still starting fail (and go); started ones keep waiting for their exit.
    for (const w of this.waiting.values()) w.fail(why);
  }

  /** Kills the server and all it started that is still in its cgroup (commands left it for their own). */
  async stop(why: string): Promise<void> {
    logger.warn('exec server: stopped; the sandbox runs its commands through docker exec', { pid: this.pid, why });
    this.close();
    const cgroup = new CommandCgroup(this.cgroupDir);
    cgroup.kill();
    await cgroup.waitEmpty(5_000);
  }

  /** A started command's exit is known (or never will be). */
  private settled(commandId: string): void {
    this.waiting.delete(commandId);
    if (this.broken && this.waiting.size === 0) this.res.destroy();
  }

  /**
   * Stops using it for new commands (its process ends with its container, or stays idle). The exits of
   * commands it started are still read: their waiting subshells outlive the server's own process.
   */
  close(): void {
    this.fail('it was closed');
    this.req.destroy();
    if (this.waiting.size === 0) this.res.destroy();
  }
}

/**
 * The servers of this daemon, by container name (a claimed pool container's
 * moves to its sandbox's name). A sandbox without one gets one started the
 * first time it is asked for; until it is ready its commands go through docker
 * exec, and one whose server failed to start does not try again.
 */
export class ExecServers {
  private readonly servers = new Map<string, ExecServer>();
  private readonly starting = new Map<string, Promise<ExecServer | undefined>>();
  private readonly failed = new Set<string>();

  constructor(private readonly docker: DockerClient) {}

  /**
   * Starts one for `container` (the daemon made or started it just now, or a command found none); answers it or
   * undefined. A container whose server runs keeps it: never two servers on one pair of FIFOs.
   */
  start(container: string, ioDir: string, ioMount: string): Promise<ExecServer | undefined> {
    const running = this.starting.get(container);
    if (running) return running;
    const current = this.servers.get(container);
    if (current?.stillServes()) return Promise.resolve(current);
    const started = ExecServer.start({ docker: this.docker, container, ioDir, ioMount })
      .then(
        (server) => {
          // Its sandbox may have ended meanwhile.
          if (this.starting.get(container) !== started) {
            server.close();
            return undefined;
          }
          this.servers.set(container, server);
          return server;
        },
        (err: unknown) => {
          if (this.starting.get(container) === started) this.failed.add(container);
          logger.warn('exec server: could not start one; the sandbox runs its commands through docker exec', { container, err });
          return undefined;
        },
      )
      .finally(() => {
        if (this.starting.get(container) === started) this.starting.delete(container);
      });
    this.starting.set(container, started);
    return started;
  }

  /** The ready server of `container`, or undefined (one is started for next time, unless one failed there). */
  ready(container: string, ioDir: string, ioMount: string): ExecServer | undefined {
    const server = this.servers.get(container);
    if (server?.stillServes()) return server;
    if (server) this.servers.delete(container);
    if (!this.failed.has(container)) void this.start(container, ioDir, ioMount);
    return undefined;
  }

  /** A pool container became a sandbox: its server goes with it. */
  rename(from: string, to: string): void {
    const server = this.servers.get(from);
    this.servers.delete(from);
    if (server) this.servers.set(to, server);
  }

  /** Its container stopped or is gone. */
  forget(container: string): void {
    this.servers.get(container)?.close();
    this.servers.delete(container);
    this.starting.delete(container);
    this.failed.delete(container);
  }

  close(): void {
    for (const name of [...this.servers.keys()]) this.forget(name);
  }
}
