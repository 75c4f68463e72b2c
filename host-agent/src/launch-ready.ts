/**
 * The launch-ready check: proves this host can run a sandbox before Auto
 * Scaling puts it in service (the launch lifecycle hook's CONTINUE). User data's
 * lifecycle-ready script runs it as `host-agent launch-ready` and abandons the
 * host when it fails. Each step is the real path a create takes:
 *   1. the host daemon answers a verb on its socket (SSM's creates go through it);
 *   2. the configured sandbox image is on the host (pulled, with ECR credentials);
 *   3. a container built by containerSpec (every hardening flag) starts, runs a
 *      command as the sandbox user through exec, and is removed.
 */
import { randomBytes } from 'node:crypto';
import { request as httpRequest } from 'node:http';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { HostConfig } from './config';
import { containerSpec, type CreateInput } from './create';
import { DockerStreamDemuxer, type DockerClient } from './docker';
import { encodeInline } from '../../contract/host-protocol';
import { ensureImagePresent, type RegistryAuth } from './image-rollout';

export interface LaunchReadyOptions {
  config: HostConfig;
  docker: DockerClient;
  /** The host daemon's unix socket (AGENT_SOCKET). */
  agentSocket: string;
  /** The image creates run (SANDBOX_IMAGE). */
  image: string;
  /** How long to wait for the daemon to listen: at first boot it starts moments before this check. */
  daemonWaitMs: number;
  /** False for a host going into the warm pool (its daemon starts when it leaves it). @default true */
  checkDaemon?: boolean;
  /** Credentials for the image's registry (ECR), when it needs any. */
  registryAuth?: RegistryAuth | undefined;
}

export interface LaunchReadyStep {
  step: 'daemon' | 'image' | 'container';
  ms: number;
  detail: string;
}

/** A failed step, named, with what an operator reads in the instance's console output. */
export class LaunchReadyError extends Error {
  constructor(
    readonly step: LaunchReadyStep['step'],
    message: string,
  ) {
    super(message);
    this.name = 'LaunchReadyError';
  }
}

/** Asks the daemon for the host's status over its unix socket: it answers verbs, so SSM's creates will be served. */
function askDaemonStatus(socketPath: string): Promise<string> {
  const body = encodeInline({});
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      { socketPath, method: 'POST', path: '/v1/status', headers: { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) }, timeout: 10_000 },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (text += d));
        res.on('end', () => {
          let envelope: { ok?: boolean; error?: { message?: string } } | undefined;
          try {
            envelope = JSON.parse(text) as typeof envelope;
          } catch {
            envelope = undefined;
          }
          if (res.statusCode === 200 && envelope?.ok === true) resolve('the host daemon answered status');
          else reject(new Error(`the host daemon answered HTTP ${res.statusCode}: ${envelope?.error?.message ?? text.trim().slice(0, 200)}`));
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error('the host daemon did not answer within 10 s')));
    req.on('error', reject);
    req.end(body);
  });
}

async function daemonAnswers(socketPath: string, waitMs: number): Promise<string> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    try {
      return await askDaemonStatus(socketPath);
    } catch (error) {
      if (Date.now() >= deadline) throw new LaunchReadyError('daemon', `the host daemon does not answer on ${socketPath}: ${(error as Error).message}`);
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

/** Reads an exec's output and exit code (stdout kept, a few KB at most for the probe). */
async function runInContainer(
  docker: DockerClient,
  containerId: string,
  cmd: string[],
  user: string,
): Promise<{ exitCode: number; stdout: string; stderr: string }> {
  const { Id } = await docker.createExec(containerId, { Cmd: cmd, User: user, AttachStdout: true, AttachStderr: true });
  const stream = await docker.startExec(Id);
  let stdout = '';
  let stderr = '';
  const demuxer = new DockerStreamDemuxer(
    (c) => (stdout += c.toString('utf8')),
    (c) => (stderr += c.toString('utf8')),
  );
  for await (const chunk of stream) demuxer.push(chunk as Buffer);
  demuxer.end();
  const info = await docker.inspectExec(Id);
  return { exitCode: info.ExitCode ?? -1, stdout, stderr };
}

/** The probe: a sandbox-shaped container (network none: the check must not touch the sandboxes' firewall). */
async function probeContainer(o: LaunchReadyOptions): Promise<string> {
  const name = `launch-ready-${randomBytes(6).toString('hex')}`;
  const dir = join(o.config.stateDir, 'launch-ready', name);
  const paths = { home: join(dir, 'home'), cold: join(dir, 'cold'), io: join(dir, 'io') };
  const request: CreateInput = {
    sandboxId: name,
    tenantId: 'launch-ready',
    userId: 'launch-ready',
    image: o.image,
    cpu: 0.5,
    memoryMb: 128,
    pidsLimit: 64,
    network: 'none',
    egress: 'allow_all',
    env: {},
    labels: {},
  };
  await Promise.all(Object.values(paths).map((p) => mkdir(p, { recursive: true, mode: 0o755 })));
  let containerId: string | undefined;
  try {
    ({ Id: containerId } = await o.docker.createContainer(name, containerSpec(request, o.config, paths, { name: 'none' })));
    await o.docker.startContainer(containerId);
    const user = `${o.config.sandboxUid}:${o.config.sandboxGid}`;
    const ran = await runInContainer(o.docker, containerId, ['id', '-u'], user);
    if (ran.exitCode !== 0) throw new Error(`a command in it exited ${ran.exitCode}: ${(ran.stderr || ran.stdout).trim().slice(0, 300)}`);
    if (ran.stdout.trim() !== String(o.config.sandboxUid))
      throw new Error(`a command in it ran as uid ${ran.stdout.trim()}, not the sandbox user ${o.config.sandboxUid}`);
    return `container ${name} started, ran as uid ${o.config.sandboxUid}, removed`;
  } catch (error) {
    throw new LaunchReadyError('container', `a sandbox container of ${o.image} cannot run here: ${(error as Error).message}`);
  } finally {
    // Removed whatever happened: a host that fails the check is abandoned, one that passes keeps no trace of it.
    if (containerId) await o.docker.removeContainer(containerId, true).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  }
}

async function timed(step: LaunchReadyStep['step'], work: () => Promise<string>): Promise<LaunchReadyStep> {
  const started = Date.now();
  const detail = await work();
  return { step, ms: Date.now() - started, detail };
}

/**
 * Runs the three steps in order; throws a LaunchReadyError naming the first
 * that failed.
 *
 * @example
 *   const steps = await checkLaunchReady({ config, docker, agentSocket: '/run/ephemeral-sandbox/agent.sock', image, daemonWaitMs: 120_000 });
 */
export async function checkLaunchReady(o: LaunchReadyOptions): Promise<LaunchReadyStep[]> {
  const steps: LaunchReadyStep[] = [];
  if (o.checkDaemon ?? true) steps.push(await timed('daemon', () => daemonAnswers(o.agentSocket, o.daemonWaitMs)));
  steps.push(
    await timed('image', async () => {
      try {
        const present = await ensureImagePresent(o.docker, o.image, o.registryAuth);
        return `${o.image} is on this host (${present.digestRef ?? present.id})`;
      } catch (error) {
        throw new LaunchReadyError('image', (error as Error).message);
      }
    }),
  );
  steps.push(await timed('container', () => probeContainer(o)));
  return steps;
}
