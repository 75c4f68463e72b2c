/**
 * The local stack's stand-in for systemd: runs a host's daemon as a service
 * (lib/constructs/host-user-data.ts writes the real unit), in a cgroup of its
 * own, restarted `restartSeconds` after it exits, and on every exit (or stop)
 * everything left in that cgroup is killed, as systemd's KillMode=control-group
 * does. So a process the daemon started inside its service (what cold mounts
 * used to be) dies with a daemon restart here exactly as it would on a host,
 * and one started in a scope of its own (host-agent/src/process-scope.ts) lives on.
 */
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cgroup2Root } from '../../host-agent/src/commands/cgroup';
import { hostDaemonService } from '../../host-agent/src/service';
import { logger } from '../../lambdas/shared/logger';

export interface ServiceOptions {
  /** For messages. */
  name: string;
  file: string;
  args: string[];
  env: NodeJS.ProcessEnv;
  /** The service's cgroup (created; removed at stop). */
  cgroupDir: string;
  /** @default hostDaemonService.restartSeconds */
  restartSeconds?: number;
  /** @default hostDaemonService.stopTimeoutSeconds */
  stopTimeoutSeconds?: number;
  stdio?: StdioOptions;
  /** Called with each start's process (to read piped output). */
  onStart?: (child: ChildProcess) => void;
}

export interface SupervisedService {
  /** The main process now (undefined between a death and its restart, and once stopped). */
  process(): ChildProcess | undefined;
  /** How many times it was started. */
  starts(): number;
  /** Resolves with the next start's process (after a crash: once restarted). */
  nextStart(): Promise<ChildProcess>;
  /** Kills the main process with `signal` as a crash would; the supervisor restarts it. */
  crash(signal?: NodeJS.Signals): void;
  /** Stops it for good: SIGTERM, SIGKILL after the stop timeout, then everything in its cgroup. */
  stop(): Promise<void>;
  /** Starts it again after stop(). */
  start(): void;
}

/** The parent of the local stack's service and mount cgroups. */
export function localCgroupRoot(): string {
  return join(cgroup2Root(), 'ephemeral-sandbox-local');
}

/** Kills every process in a cgroup (and its children) and waits until it is empty. */
export async function killCgroup(dir: string, timeoutMs = 5_000): Promise<void> {
  if (!existsSync(dir)) return;
  if (existsSync(join(dir, 'cgroup.kill'))) writeFileSync(join(dir, 'cgroup.kill'), '1');
  else for (const pid of procsOf(dir)) process.kill(pid, 'SIGKILL');
  const until = Date.now() + timeoutMs;
  while (procsOf(dir).length > 0) {
    if (Date.now() > until) throw new Error(`cgroup ${dir} still has processes ${procsOf(dir).join(', ')} after SIGKILL`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function procsOf(dir: string): number[] {
  try {
    return readFileSync(join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
}

export function superviseService(o: ServiceOptions): SupervisedService {
  const restartMs = (o.restartSeconds ?? hostDaemonService.restartSeconds) * 1000;
  const stopTimeoutMs = (o.stopTimeoutSeconds ?? hostDaemonService.stopTimeoutSeconds) * 1000;
  let child: ChildProcess | undefined;
  let started = 0;
  let stopping = false;
  let restartTimer: NodeJS.Timeout | undefined;
  let waiters: ((c: ChildProcess) => void)[] = [];

  const launch = () => {
    mkdirSync(o.cgroupDir, { recursive: true });
    // The shell joins the service's cgroup, then becomes the daemon: nothing of it runs outside.
    const c = spawn('/bin/sh', ['-c', 'echo $$ > "$0" && exec "$@"', join(o.cgroupDir, 'cgroup.procs'), o.file, ...o.args], {
      env: o.env,
      stdio: o.stdio ?? ['ignore', 'inherit', 'inherit'],
    });
    child = c;
    started++;
    o.onStart?.(c);
    const ready = waiters;
    waiters = [];
    for (const w of ready) w(c);
    c.on('exit', (code, signal) => {
      if (child === c) child = undefined;
      // What the main process left in its service goes with it (KillMode=control-group).
      void killCgroup(o.cgroupDir)
        .catch((err) => logger.error('supervisor: could not empty the service cgroup', { service: o.name, err }))
        .then(() => {
          if (stopping) return;
          logger.warn('supervisor: service exited; restarting', { service: o.name, code, signal, restartSeconds: restartMs / 1000 });
          restartTimer = setTimeout(launch, restartMs);
        });
    });
  };
  launch();

  return {
    process: () => child,
    starts: () => started,
    nextStart: () => new Promise((resolve) => waiters.push(resolve)),
    crash(signal = 'SIGKILL') {
      if (child?.pid) process.kill(child.pid, signal);
    },
    async stop() {
      stopping = true;
      clearTimeout(restartTimer);
      const c = child;
      if (c && c.exitCode === null && c.signalCode === null) {
        const exited = new Promise((r) => c.once('exit', r));
        c.kill('SIGTERM');
        const timer = setTimeout(() => c.kill('SIGKILL'), stopTimeoutMs);
        await exited;
        clearTimeout(timer);
      }
      await killCgroup(o.cgroupDir);
      try {
        rmdirSync(o.cgroupDir);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
      }
    },
    start() {
      if (child) return;
      stopping = false;
      launch();
    },
  };
}
