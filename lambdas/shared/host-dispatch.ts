/**
 * Runs one host-agent verb on one host through SSM Run Command and returns
 * the host's answer, or throws a HostDispatchError with a code handlers map
 * to HTTP statuses.
 *
 * The command line is operator config + a verb from a fixed list + the
 * request encoded as base64url (or an S3 key for large requests): no caller
 * text ever reaches the host's shell. Results are polled with short delays
 * (SSM's SDK waiter polls every 5 s at least, too slow for interactive exec).
 *
 * The pieces: host-request.ts builds the command line and stages large
 * requests, host-answer.ts reads SSM's invocation into a result or an error,
 * host-dispatch-error.ts maps SSM's failures; this module sends and polls.
 *
 * @example
 *   const hosts = createHostDispatcher({ ssm: ssm(), s3: s3(), bucket, hostAgentCommand });
 *   const result = await hosts.dispatch('i-0abc...', 'exec', request, { timeoutSeconds: 60 });
 */
import { setTimeout as delay } from 'node:timers/promises';
import {
  CancelCommandCommand,
  GetCommandInvocationCommand,
  SendCommandCommand,
  type GetCommandInvocationCommandOutput,
  type SSMClient,
} from '@aws-sdk/client-ssm';
import type { S3Client } from '@aws-sdk/client-s3';
import type { HostResults, HostVerb } from '../../contract/host-protocol';
import { ssmInstanceIdPattern } from '../../contract/ids';
import { readInvocation } from './host-answer';
import { errorName, HostDispatchError, isThrottling, isTransient, ssmFailure } from './host-dispatch-error';
import { assertHostAgentCommand, assertHostVerb, buildHostCommandLine, requestStaging } from './host-request';
import { span } from './timing';

// The dispatcher's callers and tests reach the pieces through this module.
export { HostDispatchError } from './host-dispatch-error';
export { parseHostEnvelope } from './host-answer';
export { assertHostAgentCommand, buildHostCommandLine } from './host-request';

export interface HostDispatcherOptions {
  ssm: SSMClient;
  /** Needed only for requests above maxInlineRequestChars, which are staged in S3. */
  s3?: S3Client;
  bucket?: string;
  /** Operator config, e.g. `/opt/ephemeral-sandbox/bin/host-agent`. Letters, digits, `._/-=`, single spaces. */
  hostAgentCommand: string;
  /** First poll delay; grows x1.5 per poll. @default 25 */
  pollInitialMs?: number;
  /** Poll delay cap. @default 400 */
  pollMaxMs?: number;
  /** Added to timeoutSeconds for SSM's executionTimeout (a backstop behind the host-agent's own timeout). @default 5 */
  executionMarginSeconds?: number;
  /** Added on top of that for the dispatcher's own deadline (delivery, polling). @default 10 */
  deadlineSlackSeconds?: number;
  /** Throttled SendCommand/CancelCommand calls are retried this many times. @default 6 */
  maxThrottleRetries?: number;
  /** Told of every throttled SSM call (the metric behind the SSM throttling alarm). */
  onThrottle?: (operation: string) => void;
  sleep?: (ms: number) => Promise<void>;
  now?: () => number;
  /** In [0, 1): jitter source. */
  random?: () => number;
}

export interface HostDispatcher {
  /**
   * Runs `verb` on the host and answers its result. `timeoutSeconds` bounds
   * the host's work (SSM's execution timeout); `waitSeconds`, when given,
   * bounds how long this call waits for it: past that it throws `still_running`
   * and the host carries on (what the API answers 202 for).
   */
  dispatch<V extends HostVerb>(instanceId: string, verb: V, request: unknown, opts: { timeoutSeconds: number; waitSeconds?: number }): Promise<HostResults[V]>;
}

/** SSM's delivery timeout floor: the command waits at most this long for an offline agent. */
const deliveryTimeoutSeconds = 30;
const maxExecutionTimeoutSeconds = 172_800;

/**
 * Delay before poll number `attempt` (0-based): initialMs, growing by stepMs a
 * poll, capped at maxMs. Linear, not geometric: most answers come within a few
 * hundred ms, and a geometric series would notice them up to half a delay late.
 */
export function pollDelayMs(attempt: number, initialMs = 10, maxMs = 250, stepMs = 3): number {
  return Math.min(maxMs, initialMs + attempt * stepMs);
}

/**
 * Backoff after the `attempt`-th consecutive throttle (0-based): exponential
 * from baseMs, capped at maxMs, with equal jitter so it is never zero.
 */
export function throttleBackoffMs(attempt: number, random: () => number = Math.random, baseMs = 50, maxMs = 2_000): number {
  const ceiling = Math.min(maxMs, baseMs * 2 ** attempt);
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}

export function createHostDispatcher(opts: HostDispatcherOptions): HostDispatcher {
  assertHostAgentCommand(opts.hostAgentCommand);
  const { ssm, hostAgentCommand } = opts;
  const staging = requestStaging(opts.s3, opts.bucket);
  const pollInitialMs = opts.pollInitialMs ?? 25;
  const pollMaxMs = opts.pollMaxMs ?? 400;
  const executionMarginSeconds = opts.executionMarginSeconds ?? 5;
  const deadlineSlackSeconds = opts.deadlineSlackSeconds ?? 10;
  const maxThrottleRetries = opts.maxThrottleRetries ?? 6;
  const sleep = opts.sleep ?? ((ms: number) => delay(ms));
  const now = opts.now ?? Date.now;
  const random = opts.random ?? Math.random;

  async function withThrottleRetry<T>(operation: string, call: () => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await call();
      } catch (err) {
        if (!isThrottling(err)) throw err;
        opts.onThrottle?.(operation);
        if (attempt >= maxThrottleRetries) {
          throw new HostDispatchError('throttled', `SSM ${operation} was throttled ${attempt + 1} times in a row; retry shortly`, {
            cause: err,
          });
        }
        await sleep(throttleBackoffMs(attempt, random));
      }
    }
  }

  async function cancel(commandId: string): Promise<string> {
    try {
      await withThrottleRetry('CancelCommand', () => ssm.send(new CancelCommandCommand({ CommandId: commandId })));
      return 'the command was cancelled';
    } catch (err) {
      return `cancelling the command failed too: ${(err as Error).message}`;
    }
  }

  /** Sends the command line to the instance and answers the command's id. */
  async function send(instanceId: string, verb: HostVerb, commandLine: string, executionTimeout: number): Promise<string> {
    let commandId: string | undefined;
    try {
      const sent = await withThrottleRetry('SendCommand', () =>
        ssm.send(
          new SendCommandCommand({
            DocumentName: 'AWS-RunShellScript',
            InstanceIds: [instanceId],
            Parameters: { commands: [commandLine], executionTimeout: [String(executionTimeout)] },
            TimeoutSeconds: deliveryTimeoutSeconds,
            Comment: `host-agent ${verb}`,
          }),
        ),
      );
      commandId = sent.Command?.CommandId;
    } catch (err) {
      if (errorName(err) === 'DeadlineExceeded') {
        // Cut at the request's deadline with the send in flight: SSM may have taken it, and then the host is at it
        // (it needs the staged request). The caller answers with the record as it stands; the host records the
        // outcome, or, if the command never went out, the reaper ends what it left waiting.
        throw new HostDispatchError(
          'still_running',
          `host-agent ${verb} on ${instanceId}: SSM did not confirm the command within this request's time; the host may be at it`,
        );
      }
      throw ssmFailure('SendCommand', instanceId, err);
    }
    if (!commandId) throw new HostDispatchError('ssm_error', 'SSM SendCommand answered without a CommandId');
    return commandId;
  }

  /**
   * Asks after the command until the host answers: past `waitUntil` (before the deadline) it is left running
   * (`still_running`); past the deadline it is cancelled (`host_timeout`).
   */
  async function poll<V extends HostVerb>(
    instanceId: string,
    verb: V,
    commandId: string,
    { deadline, waitUntil, executionTimeout }: { deadline: number; waitUntil: number; executionTimeout: number },
  ): Promise<HostResults[V]> {
    let polls = 0;
    /** Consecutive throttled or transient poll failures. */
    let throttles = 0;
    for (;;) {
      if (waitUntil < deadline && now() >= waitUntil) {
        throw new HostDispatchError('still_running', `host-agent ${verb} on ${instanceId} is still running (command ${commandId}); it finishes on its own`, {
          commandId,
        });
      }
      const remaining = (waitUntil < deadline ? waitUntil : deadline) - now();
      if (remaining <= 0) {
        const cancelled = await cancel(commandId);
        throw new HostDispatchError(
          'host_timeout',
          `no answer from host-agent ${verb} on ${instanceId} within ${executionTimeout + deadlineSlackSeconds} s; ${cancelled}`,
        );
      }
      const wait = throttles > 0 ? throttleBackoffMs(throttles - 1, random) : pollDelayMs(polls++, pollInitialMs, pollMaxMs);
      await span('ssm.poll-wait', () => sleep(Math.min(wait, remaining)));
      let inv: GetCommandInvocationCommandOutput;
      try {
        inv = await ssm.send(new GetCommandInvocationCommand({ CommandId: commandId, InstanceId: instanceId }));
        throttles = 0;
      } catch (err) {
        // Once sent, the command runs regardless: keep asking until the deadline.
        // (SendCommand itself is retried only when throttled: other failures may mean it was sent.)
        if (isTransient(err)) {
          throttles++;
          continue;
        }
        // Eventual consistency: the invocation shows up shortly after SendCommand.
        if (errorName(err) === 'InvocationDoesNotExist') continue;
        if (errorName(err) === 'DeadlineExceeded') {
          // The request's time ran out while asking: the command was sent and runs on regardless, so it is
          // left running (the host records its outcome), not taken for a failure of the host.
          throw new HostDispatchError(
            'still_running',
            `host-agent ${verb} on ${instanceId} is still running (command ${commandId}); this request's time ran out`,
            { commandId },
          );
        }
        throw ssmFailure('GetCommandInvocation', instanceId, err);
      }
      const reading = readInvocation(instanceId, verb, inv);
      if (reading.done) return reading.result;
    }
  }

  async function dispatch<V extends HostVerb>(
    instanceId: string,
    verb: V,
    request: unknown,
    { timeoutSeconds, waitSeconds }: { timeoutSeconds: number; waitSeconds?: number },
  ): Promise<HostResults[V]> {
    if (!ssmInstanceIdPattern.test(instanceId)) throw new HostDispatchError('invalid_dispatch', `"${instanceId}" is not an instance id`);
    assertHostVerb(verb);
    const executionTimeout = Math.ceil(timeoutSeconds) + executionMarginSeconds;
    if (!Number.isFinite(timeoutSeconds) || timeoutSeconds <= 0 || executionTimeout > maxExecutionTimeoutSeconds) {
      throw new HostDispatchError(
        'invalid_dispatch',
        `timeoutSeconds must be positive and at most ${maxExecutionTimeoutSeconds - executionMarginSeconds}, got ${timeoutSeconds}`,
      );
    }
    const deadline = now() + (executionTimeout + deadlineSlackSeconds) * 1000;
    const waitUntil = waitSeconds === undefined ? deadline : Math.min(deadline, now() + waitSeconds * 1000);

    const { arg, stagedKey } = await staging.encode(verb, request);
    try {
      const commandId = await send(instanceId, verb, buildHostCommandLine(hostAgentCommand, verb, arg), executionTimeout);
      return await poll(instanceId, verb, commandId, { deadline, waitUntil, executionTimeout });
    } catch (err) {
      // A command left running fetches (and deletes) its staged request itself, as one that answered does; the bucket's
      // lifecycle rule expires any left over. Only a command that never got that far leaves it for us.
      const leftRunning = err instanceof HostDispatchError && err.code === 'still_running';
      if (stagedKey && !leftRunning) await staging.remove(stagedKey);
      throw err;
    }
  }

  return {
    dispatch: (instanceId, verb, request, o) => span(`ssm.dispatch.${verb}`, () => dispatch(instanceId, verb, request, o)),
  };
}
