/**
 * `npm start`: the whole control plane on this machine, on loopback, until Ctrl-C.
 * Checks (and where it can, installs and starts) the Docker engine, builds the
 * sandbox image if missing, then starts the local stack and prints the API URL and key.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { repoRoot, startLocalStack } from '../lib/local/stack';

function step(script: string): void {
  const out = spawnSync('bash', [join(repoRoot, 'scripts', script)], { stdio: 'inherit' });
  if (out.status !== 0) {
    console.error(`npm start: scripts/${script} failed (exit ${out.status}); see its message above`);
    process.exit(1);
  }
}

step('setup-host.sh');
step('build-image.sh');

const port = Number(process.env.PORT ?? 8000);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`npm start: PORT must be a port number, got "${process.env.PORT}"`);
  process.exit(1);
}

const stateFile = join(repoRoot, '.local', 'stack.json');
const stack = await startLocalStack({ port, apiKey: process.env.SANDBOX_API_KEY || undefined, stateFile });
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

let stopping = false;
const stop = async (signal: string) => {
  if (stopping) return;
  stopping = true;
  console.log(`\n${signal}: stopping the local stack...`);
  await stack.close();
  process.exit(0);
};
process.on('SIGINT', () => void stop('SIGINT'));
process.on('SIGTERM', () => void stop('SIGTERM'));
