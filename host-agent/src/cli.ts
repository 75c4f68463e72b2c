/**
 * host-agent: what SSM Run Command runs on a host.
 *
 *   host-agent <verb> b64:<base64url JSON> | s3:<key>
 *
 * Prints exactly one JSON line (a HostEnvelope) on stdout and exits 0 when
 * ok, 1 on error.
 */
import { logToStderrOnly } from '../../lambdas/shared/logger';
import { envelopeLine, runHostAgent } from './invocation';

async function main(): Promise<void> {
  // stdout carries exactly one JSON line: our logger and anything a library logs go to stderr.
  logToStderrOnly();
  console.log = console.error;
  console.info = console.error;
  console.debug = console.error;
  const envelope = await runHostAgent(process.argv.slice(2));
  const code = envelope.ok ? 0 : 1;
  // Exit once the line is flushed, without waiting for idle sockets or timers.
  process.stdout.write(envelopeLine(envelope) + '\n', () => process.exit(code));
}

await main();
