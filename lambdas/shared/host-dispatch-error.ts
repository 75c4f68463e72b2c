/**
 * What can go wrong running a verb on a host through SSM, as one error type
 * handlers map to HTTP statuses, and how SSM's own failures map onto it: pure,
 * so the send and poll loops and their tests agree on which SSM errors are
 * worth retrying and which mean the host is out of reach.
 */
import type { HostErrorCode } from '../../contract/host-protocol';

export type HostDispatchErrorCode =
  /** The host-agent answered `ok: false`; see `hostCode`. */
  | 'host_error'
  /** The command outran its execution timeout, or no answer came before the deadline. */
  | 'host_timeout'
  /**
   * The caller's wait ran out while the host still works on it: the command
   * keeps running (it is not cancelled) and finishes on its own.
   */
  | 'still_running'
  /** Someone cancelled the command. */
  | 'host_cancelled'
  /** The host-agent failed without printing an answer. */
  | 'host_failed'
  /** SSM could not deliver the command to the instance. */
  | 'host_unreachable'
  /** The answer was longer than SSM returns (24,000 characters of stdout) and got cut. */
  | 'output_too_large'
  /** SSM kept throttling past the retry budget. */
  | 'throttled'
  /** A large request could not be staged in S3. */
  | 'staging_failed'
  /** SSM refused or failed a call for another reason. */
  | 'ssm_error'
  /** The dispatch itself was invalid (verb, instance id, timeout, request). */
  | 'invalid_dispatch'
  /** Operator configuration is unusable (host-agent command, missing bucket). */
  | 'config_error';

export class HostDispatchError extends Error {
  override readonly name = 'HostDispatchError';
  readonly code: HostDispatchErrorCode;
  /** Set when `code` is `host_error`: what the host-agent answered. */
  readonly hostCode?: HostErrorCode;
  /** The SSM command, once it was sent. */
  readonly commandId?: string;

  constructor(code: HostDispatchErrorCode, message: string, opts: { hostCode?: HostErrorCode; cause?: unknown; commandId?: string } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.code = code;
    if (opts.hostCode !== undefined) this.hostCode = opts.hostCode;
    if (opts.commandId !== undefined) this.commandId = opts.commandId;
  }

  /** True when the host surely did not act on the request (it was never delivered, or refused as invalid). */
  get notDelivered(): boolean {
    return (
      ['host_unreachable', 'throttled', 'staging_failed', 'invalid_dispatch', 'config_error'].includes(this.code) ||
      (this.code === 'ssm_error' && this.commandId === undefined)
    );
  }
}

/** The SDK error's name (its SSM error code), if it has one. */
export function errorName(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'name' in err ? String((err as { name: unknown }).name) : undefined;
}

export function isThrottling(err: unknown): boolean {
  const name = errorName(err);
  if (name === 'ThrottlingException' || name === 'TooManyRequestsException' || name === 'RequestLimitExceeded') return true;
  const retryable = (err as { $retryable?: { throttling?: boolean } } | null)?.$retryable;
  return retryable?.throttling === true;
}

/** Errors worth asking again about a command already sent: throttling, 5xx, a dropped connection. */
export function isTransient(err: unknown): boolean {
  if (isThrottling(err)) return true;
  const e = err as { name?: string; code?: string; $metadata?: { httpStatusCode?: number } } | null;
  if (e?.name === 'InternalServerError' || e?.name === 'TimeoutError') return true;
  if ((e?.$metadata?.httpStatusCode ?? 0) >= 500) return true;
  return ['ECONNRESET', 'ECONNREFUSED', 'ETIMEDOUT', 'EPIPE', 'EAI_AGAIN'].includes(e?.code ?? '');
}

/** An SSM call's failure as a HostDispatchError: an unknown instance is out of reach, anything else an SSM error. */
export function ssmFailure(operation: string, instanceId: string, err: unknown): HostDispatchError {
  if (err instanceof HostDispatchError) return err;
  const name = errorName(err);
  const message = (err as Error | undefined)?.message ?? String(err);
  if (name === 'InvalidInstanceId') {
    return new HostDispatchError('host_unreachable', `SSM cannot reach instance ${instanceId}: ${message}`, { cause: err });
  }
  return new HostDispatchError('ssm_error', `SSM ${operation} failed (${name ?? 'error'}): ${message}`, { cause: err });
}
