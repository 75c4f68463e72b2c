/**
 * Issue 13: the launch-ready check user data runs before it completes the
 * launch lifecycle hook (CONTINUE only when it passes), run as on a host,
 * through bin/host-agent and the bundled CLI, against a real local host:
 * its supervised daemon, the real Docker engine, the sandbox image.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { startLocalStack, type LocalStack } from '../../lib/local/stack';
import { repoRoot } from '../../lib/paths';
import { docker } from '../support/docker';

const run = promisify(execFile);
const emptyImage = 'ephemeral-sandbox-test:launch-ready-empty';

let stack: LocalStack;

before(async () => {
  stack = await startLocalStack({ port: 0, reaperIntervalMs: 0 });
  // An image with no files at all: it exists, so the check gets past the pull, and no sandbox can run in it.
  await run('bash', ['-c', `tar -c -T /dev/null | docker import - ${emptyImage}`]);
});
after(async () => {
  await stack?.close();
  await docker
    .getImage(emptyImage)
    .remove()
    .catch(() => undefined);
});

interface CheckRun {
  exitCode: number;
  envelope: { ok: boolean; result?: { launchReady: { step: string; ms: number; detail: string }[] }; error?: { code: string; message: string } };
}

/** `host-agent launch-ready`, as the lifecycle-ready script runs it: the wrapper, which hands it to the CLI bundle. */
function launchReady(env: Record<string, string> = {}, args: string[] = []): Promise<CheckRun> {
  const host = stack.hosts()[0]!;
  return new Promise((resolve, reject) => {
    const child = spawn(join(repoRoot, 'host-agent', 'bin', 'host-agent'), ['launch-ready', ...args], {
      env: {
        ...process.env,
        ...host.env,
        HOST_AGENT_ENV_FILE: '',
        NODE_BINARY: process.execPath,
        HOST_AGENT_BUNDLE: join(repoRoot, 'dist', 'host-agent.mjs'),
        ...env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('exit', (code) => {
      try {
        resolve({ exitCode: code ?? -1, envelope: JSON.parse(stdout) });
      } catch {
        reject(new Error(`launch-ready printed no JSON (exit ${code}): ${stdout.slice(0, 500)} ${stderr.slice(0, 2000)}`));
      }
    });
  });
}

/** The check leaves nothing behind, whether it passed or not. */
async function assertNoProbeLeft(): Promise<void> {
  const probes = await docker.listContainers({ all: true, filters: { name: ['launch-ready-'] } });
  assert.deepEqual(
    probes.map((c) => c.Names),
    [],
  );
  const dir = join(stack.hosts()[0]!.stateDir, 'launch-ready');
  assert.deepEqual(existsSync(dir) ? readdirSync(dir) : [], []);
}

describe('the launch-ready check', () => {
  it('passes on a host whose daemon answers, with the image present and a hardened container that runs a command', async () => {
    const check = await launchReady();
    assert.equal(check.exitCode, 0, JSON.stringify(check.envelope));
    assert.deepEqual(
      check.envelope.result?.launchReady.map((s) => s.step),
      ['daemon', 'image', 'container'],
    );
    assert.match(check.envelope.result!.launchReady[2]!.detail, /ran as uid 1000, removed/);
    await assertNoProbeLeft();
  });

  it('fails at the image step, naming the image, when the image is missing and cannot be pulled', async () => {
    const missing = `127.0.0.1:9/ephemeral-sandbox-missing@sha256:${'0'.repeat(64)}`;
    const check = await launchReady({ SANDBOX_IMAGE: missing });
    assert.equal(check.exitCode, 1);
    assert.equal(check.envelope.ok, false);
    assert.match(
      check.envelope.error!.message,
      /^launch-ready check failed at image: image 127\.0\.0\.1:9\/ephemeral-sandbox-missing@sha256:0+ is not on this host and could not be pulled/,
    );
    await assertNoProbeLeft();
  });

  it('fails at the container step when a sandbox cannot run in the image, and removes what it made', async () => {
    const check = await launchReady({ SANDBOX_IMAGE: emptyImage });
    assert.equal(check.exitCode, 1);
    assert.match(
      check.envelope.error!.message,
      /^launch-ready check failed at container: a sandbox container of ephemeral-sandbox-test:launch-ready-empty cannot run here: /,
    );
    await assertNoProbeLeft();
  });

  it('with --warm-pool, checks the image and a container but not the daemon (it starts when the host leaves the pool)', async () => {
    await stack.stopDaemon();
    try {
      const check = await launchReady({}, ['--warm-pool']);
      assert.equal(check.exitCode, 0, JSON.stringify(check.envelope));
      assert.deepEqual(
        check.envelope.result?.launchReady.map((s) => s.step),
        ['image', 'container'],
      );

      // And without it, a daemon that does not answer fails the check once the wait is over.
      const started = Date.now();
      const down = await launchReady({ LAUNCH_READY_WAIT_SECONDS: '2' });
      assert.equal(down.exitCode, 1);
      assert.match(down.envelope.error!.message, /^launch-ready check failed at daemon: the host daemon does not answer on .*agent\.sock/);
      assert.ok(Date.now() - started >= 2000, 'it waited for the daemon before giving up');
    } finally {
      stack.startDaemon();
    }
  });
});
