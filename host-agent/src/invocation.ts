/**
 * One host-agent invocation: decode and validate the request, run the verb,
 * and build the envelope. The exec path loads only what exec needs; the other
 * verbs' modules (and the S3 client) are imported on demand.
 */
import { logger } from '../../lambdas/shared/logger';
import { applyEnvFile, loadHostConfig, type HostConfig } from './config';
import { DockerClient } from './docker';
import { HostAgentError, toHostError } from './errors';
import type { CommandRunner } from './commands/runner';
import type { WarmPool } from './warm-pool';
import { span } from '../../lambdas/shared/timing';
import {
  daemonOnlyVerbs,
  decodeArgument,
  hostVerbs,
  ssmStdoutCap,
  type HostEnvelope,
  type HostResults,
  type HostVerb,
  type ResumeRequest,
} from '../../contract/host-protocol';
import { requestSchemas } from '../../contract/host-requests';
import type { SandboxFiles } from './files/sandbox-files';

/** What the long-lived host daemon lends an invocation it serves (absent in the CLI fallback). */
export interface DaemonRuntime {
  runner: CommandRunner;
  /** File operations and the transfers that outlive their SSM call. */
  files: SandboxFiles;
  /** Runs lifecycle work on one sandbox after any still running on it (one at a time per sandbox). */
  serialize<T>(sandboxId: string, work: () => Promise<T>): Promise<T>;
  /** Runs a create when its turn comes (a few at a time: limited.ts); absent: at once. */
  creates?<T>(work: () => Promise<T>): Promise<T>;
  /** Ready containers a create may claim (warm-pool.ts); absent: every create is cold. */
  pool?: WarmPool;
  /** Starts draining the host (once); answers at once. */
  drain?(request: { reason: string; deadlineSeconds: number }): Promise<HostResults['drain']>;
}

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
  else raw = await span('host.staged-fetch', async () => (await import('./staged-request')).fetchStagedRequest(config, decoded.s3Key));
  const parsed = requestSchemas[verb].safeParse(raw);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((issue) => `${issue.path.join('.') || '(request)'}: ${issue.message}`);
    throw new HostAgentError('bad_request', `invalid ${verb} request: ${issues.join('; ')}`);
  }
  return parsed.data;
}

async function dispatch(verb: HostVerb, request: unknown, config: HostConfig, runtime: DaemonRuntime | undefined): Promise<unknown> {
  const docker = new DockerClient(config.dockerSocket);
  if (daemonOnlyVerbs.includes(verb) && !runtime) {
    throw new HostAgentError(
      'unavailable',
      `the host daemon is not running on this host; "${verb}" needs it (it is restarted by its service manager): retry shortly`,
    );
  }
  const serial = <T>(sandboxId: string, work: () => Promise<T>) => (runtime ? runtime.serialize(sandboxId, work) : work());
  switch (verb) {
    case 'run':
      return runtime!.runner.run(request as never);
    case 'kill':
      return runtime!.runner.kill(request as never);
    case 'stdin':
      return runtime!.runner.stdin(request as never);
    case 'drain':
      if (!runtime!.drain) throw new HostAgentError('unavailable', 'this host daemon cannot drain (no drain configured)');
      return runtime!.drain(request as never);
    case 'files':
      return runtime!.files.handle(request as never);
    case 'create': {
      const r = request as { sandboxId: string };
      const inTurn = <T>(work: () => Promise<T>) => (runtime?.creates ? runtime.creates(work) : work());
      return serial(r.sandboxId, () =>
        inTurn(async () => {
          try {
            const created = await (await import('./create')).createSandbox(request as never, config, docker, runtime?.pool);
            await records(async (rec) => rec.recordCreated(r.sandboxId, created.containerId));
            return created;
          } catch (error) {
            // Leave nothing of a failed create behind (mounts, home), and say so on the record.
            await (await import('./lifecycle')).destroySandbox({ sandboxId: r.sandboxId, graceful: false }, config, docker).catch(() => undefined);
            await records(async (rec) => rec.recordCreateFailed(r.sandboxId, (error as Error).message));
            throw error;
          }
        }),
      );
    }
    case 'destroy': {
      const r = request as { sandboxId: string };
      return serial(r.sandboxId, async () => {
        await runtime?.runner.endSandbox(r.sandboxId, 'sandbox_ended');
        await runtime?.files.endSandbox(r.sandboxId);
        const result = await (await import('./lifecycle')).destroySandbox(request as never, config, docker);
        await records(async (rec) =>
          rec.recordDestroyed(r.sandboxId, result.keptHome ? `the home could not be synced and is kept on the host (${result.keptHome.reason})` : undefined),
        );
        return result;
      });
    }
    case 'pause': {
      const r = request as { sandboxId: string };
      return serial(r.sandboxId, async () => {
        await runtime?.runner.endSandbox(r.sandboxId, 'sandbox_paused');
        await runtime?.files.endSandbox(r.sandboxId);
        try {
          const result = await (await import('./lifecycle')).pauseSandbox(request as never, config, docker);
          await records(async (rec) => rec.recordPaused(r.sandboxId, { ok: true, tmpNotKept: result.tmp?.warnings ?? [] }));
          return result;
        } catch (error) {
          await records(async (rec) => rec.recordPaused(r.sandboxId, { ok: false, detail: (error as Error).message }));
          throw error;
        }
      });
    }
    case 'resume': {
      const r = request as { sandboxId: string };
      return serial(r.sandboxId, async () => {
        try {
          // A sandbox moved off a drained host while stopped is made here from its staged state.
          const result = (request as ResumeRequest).relocate
            ? await (await import('./relocate')).resumeRelocated(request as never, config, docker)
            : await (await import('./lifecycle')).resumeSandbox(request as never, config, docker);
          (await import('./create')).startExecServer(runtime?.pool, config, r.sandboxId);
          await records(async (rec) => rec.recordResumed(r.sandboxId, { ok: true, tmpNotRestored: result.tmp?.warnings ?? [] }));
          return result;
        } catch (error) {
          await records(async (rec) => rec.recordResumed(r.sandboxId, { ok: false, detail: (error as Error).message }));
          throw error;
        }
      });
    }
    case 'sync':
      return (await import('./lifecycle')).syncSandbox(request as never, config, docker);
    case 'status':
      return (await import('./lifecycle')).hostStatus(config, docker);
    case 'network':
      return (await import('./egress/sandbox-egress')).setSandboxEgress(request as never, config, docker);
  }
}

/**
 * Moves the sandbox's record on after the host acted (see records.ts), when
 * this host is wired to a control plane (its tables configured). A failure to
 * record is logged, not thrown: the request that asked records the same
 * outcome when it is still waiting, and the reaper when it is not.
 */
async function records(write: (rec: typeof import('./records')) => Promise<void>): Promise<void> {
  if (!process.env.SANDBOXES_TABLE) return;
  try {
    await span('host.record', async () => write(await import('./records')));
  } catch (error) {
    logger.error('host-agent: could not record the outcome on the sandbox record; the caller or the reaper records it', { err: error });
  }
}

/** Runs one invocation and returns the envelope to print. */
export async function runHostAgent(argv: string[], runtime?: DaemonRuntime): Promise<HostEnvelope<HostVerb>> {
  try {
    const [verb, arg, ...extra] = argv;
    if (!isVerb(verb) || arg === undefined || extra.length > 0) {
      throw new HostAgentError('bad_request', `usage: host-agent <${hostVerbs.join('|')}> <b64:...|s3:...>; got ${JSON.stringify(argv)}`);
    }
    applyEnvFile();
    const config = loadHostConfig();
    const request = await readRequest(verb, arg, config);
    return { ok: true, result: (await dispatch(verb, request, config, runtime)) as never };
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
