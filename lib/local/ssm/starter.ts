/**
 * The agent's side of spawner.mjs: starts scripts through that small process
 * (forking the stack's own large process cost 20-150 ms a script, its event
 * loop stopped meanwhile; spawner.mjs says more) and gives back, per script,
 * what the agent reads from a child process: its pid once it runs, its stdout
 * and stderr in order, then exit and close, or an error.
 *
 * @example
 *   const starter = createScriptStarter();
 *   const script = starter.start('/bin/sh', ['run.sh'], { cwd, env });
 *   script.stdout.on('data', (chunk) => ...); script.on('close', () => ...);
 */
import { fork, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { fileURLToPath } from 'node:url';

/** A script's output stream: 'data' events, in order, delivered before the script's 'close'. */
class ScriptOutput extends EventEmitter {
  destroyed = false;
  /** Stops listening: what the script writes from now on is dropped. */
  destroy(): void {
    this.destroyed = true;
    this.removeAllListeners('data');
  }
}

/**
 * A started script. Events: 'spawn' (pid set), 'exit' (code, signal), 'close' (both
 * streams done; after exit), 'error' (it could not start, or the starter died).
 */
export class Script extends EventEmitter {
  /** Set once the script runs ('spawn'). */
  pid?: number;
  readonly stdout = new ScriptOutput();
  readonly stderr = new ScriptOutput();
}

export interface ScriptStarter {
  /** Starts `file args` as its own process group leader, stdin closed. */
  start(file: string, args: string[], o: { cwd: string; env: NodeJS.ProcessEnv }): Script;
  /** Ends the starter process (scripts still running keep running: the caller ends them first). */
  close(): void;
}

type FromSpawner =
  | { t: 'spawn'; id: number; pid: number }
  | { t: 'out'; id: number; fd: 1 | 2; data: Uint8Array }
  | { t: 'exit'; id: number; code: number | null; signal: NodeJS.Signals | null }
  | { t: 'close'; id: number }
  | { t: 'error'; id: number; message: string };

const spawnerPath = fileURLToPath(new URL('./spawner.mjs', import.meta.url));

export function createScriptStarter(): ScriptStarter {
  let spawner: ChildProcess | undefined;
  const scripts = new Map<number, Script>();
  let nextId = 0;

  function onMessage(m: FromSpawner): void {
    const script = scripts.get(m.id);
    if (!script) return;
    switch (m.t) {
      case 'spawn':
        script.pid = m.pid;
        script.emit('spawn');
        break;
      case 'out': {
        const stream = m.fd === 1 ? script.stdout : script.stderr;
        if (!stream.destroyed) stream.emit('data', Buffer.isBuffer(m.data) ? m.data : Buffer.from(m.data));
        break;
      }
      case 'exit':
        script.emit('exit', m.code, m.signal);
        break;
      case 'close':
        scripts.delete(m.id);
        script.emit('close');
        break;
      case 'error':
        script.emit('error', new Error(m.message));
        break;
    }
  }

  function running(): ChildProcess {
    if (spawner?.connected) return spawner;
    const started = fork(spawnerPath, [], { execArgv: [], serialization: 'advanced', stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
    started.on('message', (m) => onMessage(m as FromSpawner));
    started.on('exit', (code, signal) => {
      if (spawner === started) spawner = undefined;
      // Its scripts' ends will never be told: each fails (the agent ends its invocation and kills the script by
      // its pid). What it sent before it died is read first: a script's pid may be in it, and its channel
      // closes ('disconnect') only after the last message ('exit' can come before them).
      const failAll = () => {
        for (const [id, script] of scripts) {
          scripts.delete(id);
          script.emit('error', new Error(`the local SSM agent's process starter exited (${signal ?? `code ${code}`})`));
        }
      };
      if (started.connected) started.once('disconnect', failAll);
      else failAll();
    });
    // Running scripts keep the stack alive through their invocations' timers; the starter alone must not.
    started.unref();
    started.channel?.unref();
    spawner = started;
    return started;
  }

  return {
    start(file, args, o) {
      const script = new Script();
      const id = nextId++;
      scripts.set(id, script);
      try {
        running().send({ t: 'run', id, file, args, cwd: o.cwd, env: o.env });
      } catch (err) {
        // Told after the caller has its listeners on, as a child process tells a failed start.
        scripts.delete(id);
        setImmediate(() => script.emit('error', err));
      }
      return script;
    },
    close() {
      if (spawner?.connected) spawner.disconnect();
      spawner = undefined;
    },
  };
}
