/**
 * Shared setup of the host-agent tests: the agent bundled the way it ships
 * (one ESM file), a sandbox image, and runs of the real CLI against the real
 * Docker engine, each test file on its own network and state directory.
 */
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { build } from 'esbuild';
import { hostAgentBuildOptions } from '../../lib/bundling';
import { repoRoot } from '../../lib/paths';
import Docker from 'dockerode';
import { userLabelPrefix } from '../../host-agent/src/create';
import { encodeInline, type HostEnvelope, type HostVerb } from '../../contract/host-protocol';
import { newSandboxId } from '../../contract/ids';

const run = promisify(execFile);
export const docker = new Docker();

/** Every container a test run makes carries this request label (stored under userLabelPrefix). */
export const runLabel = 'test-run';

/**
 * Bundles host-agent/src/cli.ts with the production build's options (one
 * minified ESM file, ssh2 swapped for its stand-in).
 */
export async function bundleAgent(outDir: string): Promise<string> {
  const outfile = join(outDir, 'host-agent.mjs');
  await build({
    ...hostAgentBuildOptions(outfile),
    entryPoints: [join(repoRoot, 'host-agent', 'src', 'cli.ts')],
    sourcemap: false,
    logLevel: 'error',
  });
  return outfile;
}

const testImage = 'ephemeral-sandbox-test:host-agent';

/**
 * The real sandbox image when it exists (unless HOST_AGENT_TEST_MINIMAL_IMAGE=1),
 * else (or with `minimal`) a minimal Debian with bash and an `agent` user (uid 1000).
 */
export async function sandboxImage(o: { minimal?: boolean } = {}): Promise<string> {
  const candidates = o.minimal || process.env.HOST_AGENT_TEST_MINIMAL_IMAGE === '1' ? [testImage] : ['ephemeral-sandbox:latest', testImage];
  for (const candidate of candidates) {
    try {
      await docker.getImage(candidate).inspect();
      return candidate;
    } catch {
      // not present; try the next or build
    }
  }
  const dockerfile = [
    'FROM local/debian:bookworm',
    'RUN useradd --uid 1000 --user-group --create-home --shell /bin/bash agent && mkdir -p /data/cold',
    'USER 1000:1000',
    'WORKDIR /home/agent',
  ].join('\n');
  await new Promise<void>((resolve, reject) => {
    const child = spawn('docker', ['build', '-q', '-t', testImage, '-'], { stdio: ['pipe', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`docker build failed: ${stderr}`))));
    child.stdin.end(dockerfile);
  });
  return testImage;
}

export interface AgentRun<V extends HostVerb> {
  exitCode: number;
  envelope: HostEnvelope<V>;
  /** The raw stdout: must be exactly one JSON line. */
  stdout: string;
  stderr: string;
}

/** One test file's host: its bundle, network, state directory and run id. */
export class TestHost {
  readonly runId = randomBytes(4).toString('hex');
  readonly network = `sbx-test-${this.runId}`;
  stateDir = '';
  bundle = '';
  image = '';
  private workDir = '';
  /** Extra environment for every agent run (e.g. EGRESS_ALLOW). */
  env: Record<string, string> = {};

  async start(): Promise<void> {
    this.workDir = await mkdtemp(join(tmpdir(), 'host-agent-test-'));
    this.stateDir = join(this.workDir, 'state');
    [this.bundle, this.image] = await Promise.all([bundleAgent(this.workDir), sandboxImage()]);
  }

  agentEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
    return {
      PATH: process.env.PATH,
      HOST_AGENT_ENV_FILE: '',
      STATE_DIR: this.stateDir,
      SANDBOX_NETWORK: this.network,
      ...this.env,
      ...extra,
    };
  }

  /** Runs `node host-agent.mjs <verb> b64:<request>` and parses its one line. */
  async run<V extends HostVerb>(verb: V, request: unknown, extraEnv: Record<string, string> = {}, arg?: string): Promise<AgentRun<V>> {
    return new Promise((resolve, reject) => {
      const child = spawn(process.execPath, [this.bundle, verb, arg ?? encodeInline(request)], {
        env: this.agentEnv(extraEnv),
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d) => (stdout += d));
      child.stderr.on('data', (d) => (stderr += d));
      child.on('error', reject);
      child.on('exit', (code) => {
        try {
          resolve({ exitCode: code ?? -1, envelope: JSON.parse(stdout), stdout, stderr });
        } catch {
          reject(new Error(`host-agent ${verb} printed no JSON (exit ${code}): stdout=${stdout.slice(0, 500)} stderr=${stderr.slice(0, 2000)}`));
        }
      });
    });
  }

  /** Runs a verb that must succeed and returns its result. */
  async ok<V extends HostVerb>(verb: V, request: unknown, extraEnv: Record<string, string> = {}) {
    const answer = await this.run(verb, request, extraEnv);
    if (!answer.envelope.ok) throw new Error(`host-agent ${verb} failed: ${JSON.stringify(answer.envelope.error)} stderr=${answer.stderr.slice(0, 2000)}`);
    return answer.envelope.result;
  }

  createRequest(overrides: Record<string, unknown> = {}) {
    return {
      sandboxId: newSandboxId(),
      tenantId: 'tenant-test',
      userId: 'user-test',
      image: this.image,
      cpu: 1,
      memoryMb: 256,
      pidsLimit: 256,
      labels: { [runLabel]: this.runId },
      ...overrides,
    };
  }

  /** Creates a sandbox and returns its id. */
  async createSandbox(overrides: Record<string, unknown> = {}): Promise<string> {
    const request = this.createRequest(overrides);
    await this.ok('create', request);
    return request.sandboxId as string;
  }

  /**
   * Looks inside a sandbox: `bash -lc` as the sandbox user through plain
   * `docker exec` (commands through the API are the commands tests' subject;
   * the host-agent tests only need to see what the container holds).
   */
  exec(sandboxId: string, command: string, overrides: { cwd?: string; timeoutSeconds?: number; user?: string } = {}): Promise<ShellResult> {
    return shell(sandboxId, command, overrides);
  }

  /** Removes every container of this run, the network and its firewall chains, and the state directory. */
  async close(): Promise<void> {
    const containers = await docker.listContainers({ all: true, filters: { label: [`${userLabelPrefix}${runLabel}=${this.runId}`] } });
    await Promise.all(containers.map((c) => docker.getContainer(c.Id).remove({ force: true, v: true })));
    const { removeSandboxNetwork } = await import('../../host-agent/src/network');
    const { loadHostConfig } = await import('../../host-agent/src/config');
    await removeSandboxNetwork(loadHostConfig(this.agentEnv()));
    if (!this.workDir) return;
    // Homes are file systems of their own: unmount what is still mounted before removing the directory.
    const mounts = (await readFile('/proc/self/mounts', 'utf8'))
      .split('\n')
      .map((line) => line.split(' ')[1] ?? '')
      .filter((point) => point.startsWith(this.workDir + '/'))
      .sort((a, b) => b.length - a.length);
    for (const point of mounts) await run('umount', ['-l', point]).catch(() => run('fusermount', ['-uz', point]));
    await rm(this.workDir, { recursive: true, force: true });
  }
}

export interface ShellResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** `docker exec -u <user: agent> -w <cwd> <id> bash -lc <command>` (a test's own look inside a sandbox). */
export function shell(sandboxId: string, command: string, o: { cwd?: string; timeoutSeconds?: number; user?: string } = {}): Promise<ShellResult> {
  return new Promise((resolve, reject) => {
    const user = o.user === undefined || o.user === 'agent' ? '1000:1000' : o.user;
    const child = spawn('docker', ['exec', '-u', user, '-w', o.cwd ?? '/home/agent', sandboxId, 'bash', '-lc', command], {
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: (o.timeoutSeconds ?? 60) * 1000,
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ exitCode: code ?? -1, stdout, stderr }));
  });
}

/** Host-side shell command (test assertions only; never fed agent input). */
export async function hostCommand(file: string, args: string[]): Promise<string> {
  return (await run(file, args)).stdout;
}
