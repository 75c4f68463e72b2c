/**
 * The SSM agent's side of the local endpoint: delivers invocations to their
 * instance, runs each script for real as its own process group, keeps at most
 * `workersLimit` running per instance (the rest wait, Pending, in arrival
 * order, as the agent's CommandWorkersLimit does) and ends them on exit,
 * timeout, cancel or the instance going away. The only module here that
 * starts (through starter.ts) or kills processes.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { recordSpan } from '../../../lambdas/shared/timing';
import { createScriptStarter } from './starter';
import { cancelled, exitOutcome, failed, isTerminal, undeliverable, type Invocation, type KillReason, type Outcome } from './invocation';

/** After a kill, stop waiting for pipes held open by escaped grandchildren. */
const pipeDrainGraceMs = 2_000;

export interface AgentOptions {
  /** Where each invocation's script is written (one folder per invocation, removed when it ends). */
  scriptRoot: string;
  /** Scripts run at once per instance. */
  workersLimit: number;
  /** The environment an instance's scripts run with. */
  envFor(instanceId: string): NodeJS.ProcessEnv;
}

export interface Agent {
  /** Queues a Pending invocation for its instance; it starts once a worker is free. */
  deliver(inv: Invocation): void;
  /** CancelCommand: a waiting invocation ends Cancelled at once, a running one goes Cancelling and is killed. */
  cancel(inv: Invocation): void;
  /** Its instance is gone: a waiting invocation ends Undeliverable at once, a running one is killed and then does. */
  abandon(inv: Invocation): void;
  /** Stops the process that starts scripts (after the caller ended its invocations). */
  close(): void;
}

/** Kills a script with everything it started: it runs as its own process group leader. Gone already is fine. */
function killScriptGroup(pid: number): void {
  try {
    process.kill(-pid, 'SIGKILL');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
}

/**
 * The shells running `scriptPath`, found by their command line (`/bin/sh <scriptPath>`, unique per
 * invocation): for a script whose pid never came back. Each leads its own process group.
 */
function scriptsRunning(scriptPath: string): number[] {
  const found: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const [file, script] = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      if (file === '/bin/sh' && script === scriptPath) found.push(Number(entry));
    } catch {
      // Gone meanwhile.
    }
  }
  return found;
}

export function createAgent(o: AgentOptions): Agent {
  /** Per instance: invocations running now, and those waiting for a worker. */
  const running = new Map<string, number>();
  const queued = new Map<string, Invocation[]>();
  const starter = createScriptStarter();

  function settle(inv: Invocation, outcome: Outcome): void {
    if (isTerminal(inv.status)) return;
    if (inv.timer) clearTimeout(inv.timer);
    inv.status = outcome.status;
    inv.statusDetails = outcome.details;
    inv.responseCode = outcome.responseCode;
    inv.endedAt = Date.now();
    inv.child = undefined;
    inv.afterKill = undefined;
    inv.finish();
    if (inv.holdsWorker) {
      inv.holdsWorker = false;
      running.set(inv.instanceId, (running.get(inv.instanceId) ?? 1) - 1);
      startQueued(inv.instanceId);
    }
  }

  /** Starts waiting invocations of an instance while it has free workers, oldest first. */
  function startQueued(instanceId: string): void {
    const waiting = queued.get(instanceId) ?? [];
    while (waiting.length > 0 && (running.get(instanceId) ?? 0) < o.workersLimit) {
      const inv = waiting.shift()!;
      if (inv.status !== 'Pending') continue; // cancelled while it waited
      running.set(instanceId, (running.get(instanceId) ?? 0) + 1);
      inv.holdsWorker = true;
      run(inv).catch((err: Error) => {
        inv.stderr.append(`local SSM endpoint failed to run the command: ${err.message}`);
        settle(inv, failed(-1));
      });
    }
  }

  function killGroup(inv: Invocation, reason: KillReason): void {
    const child = inv.child;
    inv.killReason ??= reason;
    // Not running yet: it is killed as soon as it is (its 'spawn').
    if (!child?.pid) return;
    killScriptGroup(child.pid);
    inv.afterKill?.();
  }

  async function run(inv: Invocation): Promise<void> {
    if (inv.status !== 'Pending') return; // cancelled before it started
    inv.status = 'InProgress';
    inv.statusDetails = 'InProgress';
    inv.startedAt = Date.now();
    const dir = join(o.scriptRoot, `${inv.commandId}-${inv.instanceId}`);
    const cwd = inv.workingDirectory === '' ? dir : inv.workingDirectory;
    try {
      await mkdir(dir, { recursive: true });
      await writeFile(join(dir, '_script.sh'), inv.commands.join('\n') + '\n', { mode: 0o700 });
      if (!statSync(cwd, { throwIfNoEntry: false })?.isDirectory()) {
        inv.stderr.append(`Working directory ${cwd} doesn't exist\nfailed to run commands: working directory not found`);
        settle(inv, failed(1));
        return;
      }
    } catch (err) {
      inv.stderr.append(`failed to prepare the script: ${(err as Error).message}`);
      settle(inv, failed(1));
      return;
    }
    if (isTerminal(inv.status)) {
      // Cancelled while preparing.
      await rm(dir, { recursive: true, force: true });
      return;
    }

    const spawnedAt = performance.now();
    const child = starter.start('/bin/sh', [join(dir, '_script.sh')], { cwd, env: o.envFor(inv.instanceId) });
    inv.child = child;
    child.on('spawn', () => {
      if (inv.killReason) killGroup(inv, inv.killReason);
    });
    child.stdout.on('data', (chunk: Buffer) => inv.stdout.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => inv.stderr.push(chunk));
    inv.timer = setTimeout(() => killGroup(inv, 'timeout'), inv.executionTimeoutSeconds * 1000);

    let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
    const finishFromExit = () => {
      // What the host spends on the script (shell, host-agent wrapper, the daemon's work), for the bench's breakdown.
      recordSpan('ssm-agent.script', performance.now() - spawnedAt);
      inv.stdout.end();
      inv.stderr.end();
      const outcome = exitOutcome(inv.killReason, exit?.code ?? null, inv.stderr.text);
      if (outcome.stderrLine !== undefined) inv.stderr.append(outcome.stderrLine);
      settle(inv, outcome);
      void rm(dir, { recursive: true, force: true });
    };
    child.on('error', (err) => {
      // It did not start, or its end can no longer be told (the starter died): nothing of it may run on unseen,
      // not even a script whose pid the starter died before telling.
      if (child.pid) killScriptGroup(child.pid);
      else for (const pid of scriptsRunning(join(dir, '_script.sh'))) killScriptGroup(pid);
      inv.stderr.append(`failed to run commands: ${err.message}`);
      settle(inv, failed(-1));
      void rm(dir, { recursive: true, force: true });
    });
    inv.afterKill = () => {
      setTimeout(() => {
        if (isTerminal(inv.status) || !exit) return;
        child.stdout.destroy();
        child.stderr.destroy();
        finishFromExit();
      }, pipeDrainGraceMs).unref();
    };
    child.on('exit', (code, signal) => {
      exit = { code, signal };
      // Like the agent, wait for stdout/stderr to close; but not forever once killed.
      if (inv.killReason) inv.afterKill?.();
    });
    child.on('close', () => {
      if (!isTerminal(inv.status)) finishFromExit();
    });
  }

  return {
    deliver(inv) {
      const waiting = queued.get(inv.instanceId) ?? [];
      waiting.push(inv);
      queued.set(inv.instanceId, waiting);
      setImmediate(() => startQueued(inv.instanceId));
    },
    cancel(inv) {
      if (isTerminal(inv.status)) return;
      if (inv.status === 'Pending' || !inv.child) {
        // Not started (or still preparing): nothing to kill.
        inv.killReason ??= 'cancel';
        settle(inv, cancelled);
        return;
      }
      inv.status = 'Cancelling';
      inv.statusDetails = 'Cancelling';
      killGroup(inv, 'cancel');
    },
    abandon(inv) {
      if (isTerminal(inv.status)) return;
      if (inv.status === 'Pending' || !inv.child) settle(inv, undeliverable);
      else killGroup(inv, 'gone');
    },
    close() {
      starter.close();
    },
  };
}
