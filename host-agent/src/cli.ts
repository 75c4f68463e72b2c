/**
 * host-agent: what SSM Run Command runs on a host.
 *
 *   host-agent <verb> b64:<base64url JSON> | s3:<key>
 *
 * Prints exactly one JSON line (a HostEnvelope) on stdout and exits 0 when
 * ok, 1 on error.
 */
import { envelopeLine, runHostAgent } from './invocation';

async function main(): Promise<void> {
  // stdout carries exactly one JSON line: anything else written (library output, the
  // logger's lines, metrics' EMF lines, which all write to the stdout stream) goes to stderr.
  const answer = process.stdout.write.bind(process.stdout);
  process.stdout.write = process.stderr.write.bind(process.stderr) as typeof process.stdout.write;
  console.log = console.error;
  console.info = console.error;
  console.debug = console.error;
  const envelope = await runHostAgent(process.argv.slice(2));
  const code = envelope.ok ? 0 : 1;
  // Exit once the line is flushed, without waiting for idle sockets or timers.
  answer(envelopeLine(envelope) + '\n', () => process.exit(code));
}

await main();
