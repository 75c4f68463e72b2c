/**
 * One host-agent invocation: decode and validate the request, run the verb,
 * and build the envelope. The exec path loads only what exec needs; the other
 * verbs' modules (and the S3 client) are imported on demand.
 */
import { applyEnvFile, loadHostConfig, type HostConfig } from './config';
import { DockerClient } from './docker';
import { HostAgentError, toHostError } from './errors';
import { decodeArgument, hostVerbs, requestSchemas, ssmStdoutCap, type HostEnvelope, type HostVerb } from './protocol';

function isVerb(value: string | undefined): value is HostVerb {
  return (hostVerbs as readonly string[]).includes(value ?? '');
}

async function readRequest(verb: HostVerb, arg: string, config: HostConfig): Promise<unknown> {
  let decoded: ReturnType<typeof decodeArgument>;
  try {
    decoded = decodeArgument(arg);
  } catch (error) {
    throw new HostAgentError('bad_request', `cannot decode the ${verb} request: ${(error as Error).message}`);
  }
  let raw: unknown;
  if ('inline' in decoded) raw = decoded.inline;
  else raw = await (await import('./staged-request')).fetchStagedRequest(config, decoded.s3Key);
  const parsed = requestSchemas[verb].safeParse(raw);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((issue) => `${issue.path.join('.') || '(request)'}: ${issue.message}`);
    throw new HostAgentError('bad_request', `invalid ${verb} request: ${issues.join('; ')}`);
  }
  return parsed.data;
}

async function dispatch(verb: HostVerb, request: unknown, config: HostConfig): Promise<unknown> {
  const docker = new DockerClient(config.dockerSocket);
  switch (verb) {
    case 'exec':
      return (await import('./exec')).runExec(request as never, docker);
    case 'create':
      return (await import('./create')).createSandbox(request as never, config, docker);
    case 'destroy':
      return (await import('./lifecycle')).destroySandbox(request as never, config, docker);
    case 'pause':
      return (await import('./lifecycle')).pauseSandbox(request as never, config, docker);
    case 'resume':
      return (await import('./lifecycle')).resumeSandbox(request as never, config, docker);
    case 'sync':
      return (await import('./lifecycle')).syncSandbox(request as never, config, docker);
    case 'status':
      return (await import('./lifecycle')).hostStatus(config, docker);
    case 'network':
      return (await import('./egress/sandbox-egress')).setSandboxEgress(request as never, config, docker);
  }
}

/** Runs one invocation and returns the envelope to print. */
export async function runHostAgent(argv: string[]): Promise<HostEnvelope<HostVerb>> {
  try {
    const [verb, arg, ...extra] = argv;
    if (!isVerb(verb) || arg === undefined || extra.length > 0) {
      throw new HostAgentError('bad_request', `usage: host-agent <${hostVerbs.join('|')}> <b64:...|s3:...>; got ${JSON.stringify(argv)}`);
    }
    applyEnvFile();
    const config = loadHostConfig();
    const request = await readRequest(verb, arg, config);
    return { ok: true, result: (await dispatch(verb, request, config)) as never };
  } catch (error) {
    return { ok: false, error: toHostError(error) };
  }
}

/** The one line we print; refuses (as an error envelope) anything SSM would cut. */
export function envelopeLine(envelope: HostEnvelope<HostVerb>): string {
  const line = JSON.stringify(envelope);
  if (Buffer.byteLength(line) <= ssmStdoutCap - 1) return line;
  return JSON.stringify({
    ok: false,
    error: { code: 'internal_error', message: `answer of ${Buffer.byteLength(line)} bytes exceeds SSM's ${ssmStdoutCap}-character stdout limit` },
  });
}
