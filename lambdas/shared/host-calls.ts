/**
 * The process-wide host dispatcher (SSM Run Command -> host-agent), and the
 * mapping of host failures to API errors.
 */
import { config } from './config';
import { ApiError } from './errors';
import { ssm } from './clients/ssm';
import { s3 } from './clients/s3';
import { createHostDispatcher, HostDispatchError, type HostDispatcher } from './host-dispatch';
import { emitMetrics } from './metrics';

let dispatcher: HostDispatcher | undefined;

export function hosts(): HostDispatcher {
  dispatcher ??= counted(
    createHostDispatcher({
      ssm: ssm(),
      s3: s3(),
      bucket: config().bucket,
      hostAgentCommand: config().hostAgentCommand,
      // Interactive exec: notice a finished command within tens of ms.
      pollInitialMs: 10,
      pollMaxMs: 250,
      onThrottle: () => emitMetrics({}, { SsmThrottled: 1 }),
    }),
  );
  return dispatcher;
}

/** Every host call counted by verb and outcome (ok, or the dispatch error's code: still_running, host_timeout...). */
function counted(inner: HostDispatcher): HostDispatcher {
  return {
    async dispatch(instanceId, verb, request, opts) {
      try {
        const result = await inner.dispatch(instanceId, verb, request, opts);
        emitMetrics({ Verb: verb, Outcome: 'ok' }, { HostDispatch: 1 });
        return result;
      } catch (err) {
        emitMetrics({ Verb: verb, Outcome: err instanceof HostDispatchError ? err.code : 'error' }, { HostDispatch: 1 });
        throw err;
      }
    },
  };
}

/** Test and local-stack hook: forget the dispatcher so config changes apply. */
export function resetHosts(): void {
  dispatcher = undefined;
}

/**
 * Test hook: this process's host calls go through `wrap` until resetHosts(),
 * so a test can order a call against another (SSM delivering one late).
 */
export function wrapHosts(wrap: (inner: HostDispatcher) => HostDispatcher): void {
  dispatcher = wrap(hosts());
}

/** Turns a failed host call into the API error a caller can act on. */
export function hostFailure(err: unknown, action: string): ApiError {
  if (err instanceof ApiError) return err;
  if (err instanceof HostDispatchError) {
    switch (err.code) {
      case 'host_timeout':
        return new ApiError(504, 'host_timeout', `${action}: the sandbox host did not answer in time`);
      case 'output_too_large':
        return new ApiError(502, 'output_too_large', `${action}: the host's answer exceeded SSM's 24,000-character output cap`);
      case 'host_error':
        if (err.hostCode === 'quota_exceeded') return new ApiError(409, 'quota_exceeded', `${action}: ${err.message}`);
        // The host's daemon is down for a moment (its service manager restarts it): the same call goes through shortly.
        if (err.hostCode === 'unavailable') return new ApiError(503, 'host_unavailable', `${action}: ${err.message}`, { 'Retry-After': '2' });
        return new ApiError(502, 'host_error', `${action}: ${err.message}`);
      case 'throttled':
        // SSM itself said slow down: a retry shortly will go through.
        return new ApiError(503, 'host_unavailable', `${action}: the host channel is busy; retry shortly`, { 'Retry-After': '2' });
      case 'host_unreachable':
        return new ApiError(503, 'host_unavailable', `${action}: the sandbox's host cannot be reached right now: ${err.message}`, {
          'Retry-After': '10',
        });
      default:
        return new ApiError(502, 'host_error', `${action}: ${err.message}`);
    }
  }
  return new ApiError(502, 'host_error', `${action}: ${(err as Error)?.message ?? String(err)}`);
}
