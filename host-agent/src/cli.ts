/**
 * host-agent: what SSM Run Command runs on a host.
 *
 *   host-agent <verb> b64:<base64url JSON> | s3:<key>
 *   host-agent launch-ready [--warm-pool]
 *
 * Prints exactly one JSON line (a HostEnvelope) on stdout and exits 0 when
 * ok, 1 on error.
 */
import { envelopeLine, runHostAgent } from './invocation';
import type { LaunchReadyStep } from './launch-ready';

type LaunchReadyEnvelope = { ok: true; result: { launchReady: LaunchReadyStep[] } } | { ok: false; error: { code: 'unavailable'; message: string } };

/**
 * `host-agent launch-ready`: the check that decides the launch lifecycle
 * action (not an SSM verb: user data's lifecycle-ready script runs it on the
 * host). Its result lists the steps; an error names the step that failed.
 */
async function runLaunchReady(warmPool: boolean): Promise<LaunchReadyEnvelope> {
  const { applyEnvFile, loadHostConfig } = await import('./config');
  const { DockerClient } = await import('./docker');
  const { checkLaunchReady, LaunchReadyError } = await import('./launch-ready');
  try {
    applyEnvFile();
    const config = loadHostConfig();
    const wait = Number(process.env.LAUNCH_READY_WAIT_SECONDS || 120);
    const steps = await checkLaunchReady({
      config,
      docker: new DockerClient(config.dockerSocket),
      agentSocket: process.env.AGENT_SOCKET || '/run/ephemeral-sandbox/agent.sock',
      image: process.env.SANDBOX_IMAGE || 'ephemeral-sandbox:latest',
      daemonWaitMs: Number.isFinite(wait) && wait >= 0 ? wait * 1000 : 120_000,
      // A host launched into the warm pool is stopped with its daemon not started: that step runs when it goes in service.
      checkDaemon: !warmPool,
    });
    return { ok: true, result: { launchReady: steps } };
  } catch (error) {
    const step = error instanceof LaunchReadyError ? `${error.step}: ` : '';
    return { ok: false, error: { code: 'unavailable', message: `launch-ready check failed at ${step}${(error as Error).message}` } };
  }
}

async function main(): Promise<void> {
  // stdout carries exactly one JSON line: anything else written (library output, the
  // logger's lines, metrics' EMF lines, which all write to the stdout stream) goes to stderr.
  const answer = process.stdout.write.bind(process.stdout);
  process.stdout.write = process.stderr.write.bind(process.stderr) as typeof process.stdout.write;
  console.log = console.error;
  console.info = console.error;
  console.debug = console.error;
  const argv = process.argv.slice(2);
  let line: string;
  let ok: boolean;
  if (argv[0] === 'launch-ready' && (argv.length === 1 || (argv.length === 2 && argv[1] === '--warm-pool'))) {
    const envelope = await runLaunchReady(argv[1] === '--warm-pool');
    [line, ok] = [JSON.stringify(envelope), envelope.ok];
  } else {
    const envelope = await runHostAgent(argv);
    [line, ok] = [envelopeLine(envelope), envelope.ok];
  }
  // Exit once the line is flushed, without waiting for idle sockets or timers.
  answer(line + '\n', () => process.exit(ok ? 0 : 1));
}

await main();
