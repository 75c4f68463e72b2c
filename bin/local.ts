/**
 * `npm start`: the whole control plane on this machine, on loopback, until Ctrl-C.
 * Checks (and where it can, installs and starts) the Docker engine, builds the
 * sandbox image if missing, then starts the local stack and prints the API URL and key.
 *
 * Ctrl-C (SIGINT to the whole foreground process group) or SIGTERM, at any point,
 * leaves nothing behind: the stack's engines run in process groups of their own so
 * they outlive the signal until the stack has removed its sandboxes, mounts, network
 * and firewall chains; a start still in progress is aborted and undone. The Docker
 * engine, when setup-host.sh starts it, runs in a session of its own and stays up.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { localHostSettings, startLocalStack, type LocalStack } from '../lib/local/stack';
import { repoRoot } from '../lib/paths';

function step(script: string): void {
  const out = spawnSync('bash', [join(repoRoot, 'scripts', script)], { stdio: 'inherit' });
  if (out.status !== 0) {
    console.error(`npm start: scripts/${script} failed (${out.signal ?? `exit ${out.status}`}); see its message above`);
    process.exit(1);
  }
}

const abort = new AbortController();
let started: Promise<LocalStack> | undefined;
let stopping = false;

const stop = async (signal: string) => {
  if (stopping) {
    console.log(`${signal}: still stopping the local stack (removing its sandboxes)...`);
    return;
  }
  stopping = true;
  console.log(`\n${signal}: stopping the local stack...`);
  abort.abort(new Error(`${signal} while the local stack was starting`));
  // A start in progress undoes itself when aborted; a started stack is closed here.
  const stack = await started?.catch(() => undefined);
  await stack?.close();
  process.exit(0);
};
// Before anything is made, so no signal finds the process without them.
process.on('SIGINT', () => void stop('SIGINT'));
process.on('SIGTERM', () => void stop('SIGTERM'));

step('setup-host.sh');
step('build-image.sh');

const port = Number(process.env.PORT ?? 8000);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`npm start: PORT must be a port number, got "${process.env.PORT}"`);
  process.exit(1);
}

const stateFile = join(repoRoot, '.local', 'stack.json');
started = startLocalStack({
  port,
  apiKey: process.env.SANDBOX_API_KEY || undefined,
  stateFile,
  signal: abort.signal,
  // The deployed shape: each host keeps the dev environment's warm containers ready.
  warmContainers: Number(process.env.WARM_CONTAINERS_PER_HOST ?? localHostSettings().warmContainers),
});
let stack: LocalStack;
try {
  stack = await started;
} catch (err) {
  // Aborted by a signal: stop() finishes (the start has undone itself).
  if (stopping) await new Promise(() => undefined);
  console.error(`npm start: the local stack did not start: ${(err as Error).message}`);
  process.exit(1);
}
const key = stack.apiKey;
console.log(`
Ephemeral Sandbox is running (local stack).

  API URL:  ${stack.url}
  API key:  ${key}${process.env.SANDBOX_API_KEY ? '  (from SANDBOX_API_KEY)' : '  (generated; set SANDBOX_API_KEY to choose one)'}
  Host:     ${stack.hostId} (this machine, via the local SSM endpoint)
  Admin:    npm run keys -- create --tenant acme   (reads ${stateFile})

Try:
  curl -s -X POST ${stack.url}/sandboxes -H "X-API-Key: ${key}" -H 'Content-Type: application/json' -d '{"user_id":"test-user"}'

Ctrl-C stops it and removes its sandboxes.
`);
