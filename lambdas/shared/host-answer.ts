/**
 * Reads what SSM says of a host-agent command into the host's result or a
 * HostDispatchError: pure, so which SSM status and details mean a timeout,
 * an unreachable host, a cut answer or a host's own refusal is decided in one
 * place and tested without SSM.
 */
import type { GetCommandInvocationCommandOutput } from '@aws-sdk/client-ssm';
import { hostErrorCodes, ssmStdoutCap, type HostErrorCode, type HostResults, type HostVerb } from '../../contract/host-protocol';
import { HostDispatchError } from './host-dispatch-error';

/** How much of a failed command's output an error message quotes. */
const excerptChars = 500;

export type ParsedEnvelope = { ok: true; result: unknown } | { ok: false; error: { code: HostErrorCode; message: string } };

/** The host-agent's answer: the last non-empty line of stdout, if it is an envelope. */
export function parseHostEnvelope(stdout: string): ParsedEnvelope | undefined {
  const lines = stdout.split('\n');
  let line: string | undefined;
  for (let i = lines.length - 1; i >= 0; i--) {
    const candidate = lines[i]?.trim();
    if (candidate) {
      line = candidate;
      break;
    }
  }
  if (line === undefined) return undefined;
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return undefined;
  }
  if (typeof value !== 'object' || value === null) return undefined;
  const env = value as { ok?: unknown; result?: unknown; error?: unknown };
  if (env.ok === true && 'result' in env) return { ok: true, result: env.result };
  if (env.ok === false && typeof env.error === 'object' && env.error !== null) {
    const { code, message } = env.error as { code?: unknown; message?: unknown };
    if (typeof code !== 'string' || typeof message !== 'string') return undefined;
    const known = (hostErrorCodes as readonly string[]).includes(code);
    return {
      ok: false,
      error: known ? { code: code as HostErrorCode, message } : { code: 'internal_error', message: `host answered unknown error code "${code}": ${message}` },
    };
  }
  return undefined;
}

function excerpt(text: string | undefined): string {
  const t = (text ?? '').trim();
  if (t === '') return '(empty)';
  return t.length > excerptChars ? '…' + t.slice(-excerptChars) : t;
}

export type InvocationReading<V extends HostVerb> = { done: false } | { done: true; result: HostResults[V] };

/** Not done while the invocation runs; done with the host's result; or throws what went wrong. */
export function readInvocation<V extends HostVerb>(
  instanceId: string,
  verb: V,
  inv: Pick<GetCommandInvocationCommandOutput, 'CommandId' | 'Status' | 'StatusDetails' | 'StandardOutputContent' | 'StandardErrorContent' | 'ResponseCode'>,
): InvocationReading<V> {
  const status = inv.Status;
  const details = inv.StatusDetails ?? '';
  const where = `host-agent ${verb} on ${instanceId} (command ${inv.CommandId})`;
  if (status === 'Pending' || status === 'InProgress' || status === 'Delayed' || status === 'Cancelling') return { done: false };
  if (details === 'ExecutionTimedOut' || (status === 'TimedOut' && details !== 'DeliveryTimedOut')) {
    throw new HostDispatchError('host_timeout', `${where} ran past its execution timeout and was stopped`);
  }
  if (['DeliveryTimedOut', 'Undeliverable', 'Terminated', 'InvalidPlatform', 'AccessDenied'].includes(details)) {
    throw new HostDispatchError('host_unreachable', `SSM could not run ${where}: ${details}`);
  }
  if (status === 'Cancelled') throw new HostDispatchError('host_cancelled', `${where} was cancelled`);
  if (status !== 'Success' && status !== 'Failed') {
    throw new HostDispatchError('host_failed', `${where} ended with unexpected SSM status ${status ?? '(none)'} / ${details}`);
  }

  // The host-agent's envelope is authoritative whichever way the script exited.
  const stdout = inv.StandardOutputContent ?? '';
  const envelope = parseHostEnvelope(stdout);
  if (envelope?.ok === true) return { done: true, result: envelope.result as HostResults[V] };
  if (envelope?.ok === false) {
    throw new HostDispatchError('host_error', envelope.error.message, { hostCode: envelope.error.code });
  }
  if (stdout.length >= ssmStdoutCap) {
    throw new HostDispatchError(
      'output_too_large',
      `${where} printed more than the ${ssmStdoutCap} characters of stdout SSM returns, so its answer was cut off and cannot be read`,
    );
  }
  if (status === 'Failed') {
    throw new HostDispatchError(
      'host_failed',
      `${where} failed with exit code ${inv.ResponseCode ?? '?'} and no answer; stderr: ${excerpt(inv.StandardErrorContent)}`,
    );
  }
  throw new HostDispatchError('host_failed', `${where} exited 0 without printing an answer; stdout: ${excerpt(stdout)}`);
}
