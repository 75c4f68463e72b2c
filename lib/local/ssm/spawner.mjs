// The local SSM agent's process starter: a small Node process that starts the
// agent's scripts for the process the endpoint lives in (lib/local/ssm/agent.ts),
// and hands back their pid, output and exit over its IPC channel.
//
// Why a process of its own: starting a process forks its parent. The endpoint
// runs in the local stack's process, which holds the gateway and every warm
// Lambda environment (hundreds of MB, dozens of threads); forking it cost 20 ms
// idle and over 100 ms on a loaded machine, with that process's event loop
// stopped meanwhile (a CPU profile of 20 concurrent execs: a third of its busy
// time in ChildProcess.spawn). The real agent is a separate small program on
// the host; so is this.
//
// Plain JavaScript (no loader, no build): `node spawner.mjs`, with an IPC channel.
// Messages in: {t:'run', id, file, args, cwd, env}. Out: {t:'spawn', id, pid},
// {t:'out', id, fd: 1|2, data}, {t:'exit', id, code, signal}, {t:'close', id},
// {t:'error', id, message}. It ends when its parent goes (the channel closes).
import { spawn } from 'node:child_process';

// Ctrl-C reaches the whole foreground process group: the parent decides when this ends.
process.on('SIGINT', () => undefined);
process.on('disconnect', () => process.exit(0));

function send(message) {
  if (process.connected) process.send(message);
}

process.on('message', (m) => {
  if (m?.t !== 'run') return;
  const { id } = m;
  let child;
  try {
    // Its own process group (detached), so the agent can kill the script with everything it started.
    child = spawn(m.file, m.args, { cwd: m.cwd, env: m.env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    send({ t: 'error', id, message: err.message });
    return;
  }
  // Its pid at once, not on the 'spawn' event a tick later: the script already runs, and this process may
  // die any moment (the agent kills what it started by that pid).
  if (child.pid !== undefined) send({ t: 'spawn', id, pid: child.pid });
  child.on('error', (err) => send({ t: 'error', id, message: err.message }));
  child.stdout.on('data', (data) => send({ t: 'out', id, fd: 1, data }));
  child.stderr.on('data', (data) => send({ t: 'out', id, fd: 2, data }));
  child.on('exit', (code, signal) => send({ t: 'exit', id, code, signal }));
  child.on('close', () => send({ t: 'close', id }));
});
