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
 * @example
 *   const hosts = createHostDispatcher({ ssm: ssm(), s3: s3(), bucket, hostAgentCommand });
 *   const result = await hosts.dispatch('i-0abc...', 'exec', request, { timeoutSeconds: 60 });
 */
import { randomUUID } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import {
  CancelCommandCommand,
  GetCommandInvocationCommand,
  SendCommandCommand,
  type GetCommandInvocationCommandOutput,
  type SSMClient,
} from '@aws-sdk/client-ssm';
import { DeleteObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import {
  encodeInline,
  hostErrorCodes,
  hostVerbs,
  maxInlineRequestChars,
  ssmStdoutCap,
  stagedVerbs,
  stagedRequestPrefix,
  type HostErrorCode,
  type HostResults,
  type HostVerb,
} from '../../host-agent/src/protocol';
import { logger } from './logger';
import { span } from './timing';

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
    return ['host_unreachable', 'throttled', 'staging_failed', 'invalid_dispatch', 'config_error'].includes(this.code) ||
      (this.code === 'ssm_error' && this.commandId === undefined);
  }
}

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
  dispatch<V extends HostVerb>(
    instanceId: string,
    verb: V,
    request: unknown,
    opts: { timeoutSeconds: number; waitSeconds?: number },
  ): Promise<HostResults[V]>;
}

/** SSM's delivery timeout floor: the command waits at most this long for an offline agent. */
const deliveryTimeoutSeconds = 30;
const maxExecutionTimeoutSeconds = 172_800;
const hostAgentCommandPattern = /^[A-Za-z0-9_./=-]+(?: [A-Za-z0-9_./=-]+)*$/;
const instanceIdPattern = /^(?:i|mi)-[0-9a-f]{8,17}$/;
const excerptChars = 500;

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

/** Refuses a host-agent command that is anything but plain words (paths, flags, KEY=value). */
export function assertHostAgentCommand(command: string): void {
  if (command.length === 0 || command.length > 1024 || !hostAgentCommandPattern.test(command)) {
    throw new HostDispatchError(
      'config_error',
      `host-agent command ${JSON.stringify(command)} is not allowed: use words of letters, digits and ._/-= separated by single spaces`,
    );
  }
}

/** `<hostAgentCommand> <verb> <arg>`; arg is `b64:...` or `s3:...`, both inert in a shell. */
export function buildHostCommandLine(hostAgentCommand: string, verb: HostVerb, arg: string): string {
  assertHostAgentCommand(hostAgentCommand);
  if (!(hostVerbs as readonly string[]).includes(verb)) throw new HostDispatchError('invalid_dispatch', `unknown host verb "${verb}"`);
  if (!/^(?:b64:[A-Za-z0-9_-]*|s3:[A-Za-z0-9_\-/.]{1,512})$/.test(arg)) {
    throw new HostDispatchError('invalid_dispatch', 'host request argument must be b64:<base64url> or s3:<key>');
  }
  return `${hostAgentCommand} ${verb} ${arg}`;
}

export type ParsedEnvelope =
  | { ok: true; result: unknown }
  | { ok: false; error: { code: HostErrorCode; message: string } };

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
      error: known
        ? { code: code as HostErrorCode, message }
        : { code: 'internal_error', message: `host answered unknown error code "${code}": ${message}` },
    };
  }
  return undefined;
}

function errorName(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'name' in err ? String((err as { name: unknown }).name) : undefined;
}

function isThrottling(err: unknown): boolean {
  const name = errorName(err);
  if (name === 'ThrottlingException' || name === 'TooManyRequestsException' || name === 'RequestLimitExceeded') return true;
  const retryable = (err as { $retryable?: { throttling?: boolean } } | null)?.$retryable;
  return retryable?.throttling === true;
}

/** Errors worth asking again about a command already sent: throttling, 5xx, a dropped connection. */
function isTransient(err: unknown): boolean {
  if (isThrottling(err)) return true;
  const e = err as { name?: string; code?: string; $metadata?: { httpStatusCode?: number } } | null;
  if (e?.name === 'InternalServerError' || e?.name === 'TimeoutError') return true;
  if ((e?.$metadata?.httpStatusCode ?? 0) >= 500) return true;
  return ['ECONNRESET', 'ECONNREFUSED', 'ETIMEDOUT', 'EPIPE', 'EAI_AGAIN'].includes(e?.code ?? '');
}

function excerpt(text: string | undefined): string {
  const t = (text ?? '').trim();
  if (t === '') return '(empty)';
  return t.length > excerptChars ? '…' + t.slice(-excerptChars) : t;
}

/** Where a request travels: inline in the command line, or staged in S3 by key. */
interface EncodedRequest {
  arg: string;
  stagedKey?: string;
}

export function createHostDispatcher(opts: HostDispatcherOptions): HostDispatcher {
  assertHostAgentCommand(opts.hostAgentCommand);
  const { ssm, s3, bucket, hostAgentCommand } = opts;
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

  async function encodeRequest(verb: HostVerb, request: unknown): Promise<EncodedRequest> {
    if (request === undefined) throw new HostDispatchError('invalid_dispatch', 'host request is missing');
    let inline: string;
    try {
      inline = encodeInline(request);
    } catch (err) {
      throw new HostDispatchError('invalid_dispatch', `host request is not serializable as JSON: ${(err as Error).message}`);
    }
    // Requests with a caller's secrets never go inline: SSM keeps command text (ListCommands, the agent's disk).
    if (inline.length <= maxInlineRequestChars && !stagedVerbs.includes(verb)) return { arg: inline };
    if (!s3 || !bucket) {
      throw new HostDispatchError(
        'config_error',
        `host ${verb} request must be staged in S3 (it is ${inline.length} characters encoded, or carries secrets); configure an S3 client and bucket`,
      );
    }
    const key = `${stagedRequestPrefix}${randomUUID()}.json`;
    try {
      await s3.send(
        new PutObjectCommand({ Bucket: bucket, Key: key, Body: JSON.stringify(request), ContentType: 'application/json' }),
      );
    } catch (err) {
      throw new HostDispatchError('staging_failed', `could not stage the host request at s3://${bucket}/${key}: ${(err as Error).message}`, {
        cause: err,
      });
    }
    return { arg: `s3:${key}`, stagedKey: key };
  }

  /** The host-agent deletes what it fetched; this covers commands that never ran. Idempotent. */
  async function removeStaged(key: string): Promise<void> {
    try {
      await s3?.send(new DeleteObjectCommand({ Bucket: bucket, Key: key }));
    } catch (err) {
      logger.warn('staged host request not removed', { bucket, key, error: err });
    }
  }

  function ssmFailure(operation: string, instanceId: string, err: unknown): HostDispatchError {
    if (err instanceof HostDispatchError) return err;
    const name = errorName(err);
    const message = (err as Error | undefined)?.message ?? String(err);
    if (name === 'InvalidInstanceId') {
      return new HostDispatchError('host_unreachable', `SSM cannot reach instance ${instanceId}: ${message}`, { cause: err });
    }
    return new HostDispatchError('ssm_error', `SSM ${operation} failed (${name ?? 'error'}): ${message}`, { cause: err });
  }

  async function cancel(commandId: string): Promise<string> {
    try {
      await withThrottleRetry('CancelCommand', () => ssm.send(new CancelCommandCommand({ CommandId: commandId })));
      return 'the command was cancelled';
    } catch (err) {
      return `cancelling the command failed too: ${(err as Error).message}`;
    }
  }

  /** Not done while the invocation runs; done with the host's result; or throws what went wrong. */
  function interpret<V extends HostVerb>(
    instanceId: string,
    verb: V,
    inv: GetCommandInvocationCommandOutput,
  ): { done: false } | { done: true; result: HostResults[V] } {
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

  async function dispatch<V extends HostVerb>(
    instanceId: string,
    verb: V,
    request: unknown,
    { timeoutSeconds, waitSeconds }: { timeoutSeconds: number; waitSeconds?: number },
  ): Promise<HostResults[V]> {
    if (!instanceIdPattern.test(instanceId)) throw new HostDispatchError('invalid_dispatch', `"${instanceId}" is not an instance id`);
    if (!(hostVerbs as readonly string[]).includes(verb)) throw new HostDispatchError('invalid_dispatch', `unknown host verb "${verb}"`);
    const executionTimeout = Math.ceil(timeoutSeconds) + executionMarginSeconds;
    if (!Number.isFinite(timeoutSeconds) || timeoutSeconds <= 0 || executionTimeout > maxExecutionTimeoutSeconds) {
      throw new HostDispatchError(
        'invalid_dispatch',
        `timeoutSeconds must be positive and at most ${maxExecutionTimeoutSeconds - executionMarginSeconds}, got ${timeoutSeconds}`,
      );
    }
    const deadline = now() + (executionTimeout + deadlineSlackSeconds) * 1000;
    const waitUntil = waitSeconds === undefined ? deadline : Math.min(deadline, now() + waitSeconds * 1000);

    const { arg, stagedKey } = await encodeRequest(verb, request);
    /** True once the command was sent and is left running past the caller's wait: the host still needs the staged request. */
    let leftRunning = false;
    /** True once the host answered: it fetched the staged request, and deleted it, before anything else. */
    let answered = false;
    try {
      const commandLine = buildHostCommandLine(hostAgentCommand, verb, arg);
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
          leftRunning = true;
          throw new HostDispatchError('still_running', `host-agent ${verb} on ${instanceId}: SSM did not confirm the command within this request's time; the host may be at it`);
        }
        throw ssmFailure('SendCommand', instanceId, err);
      }
      if (!commandId) throw new HostDispatchError('ssm_error', 'SSM SendCommand answered without a CommandId');

      let polls = 0;
      /** Consecutive throttled or transient poll failures. */
      let throttles = 0;
      for (;;) {
        if (waitUntil < deadline && now() >= waitUntil) {
          leftRunning = true;
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
          throw ssmFailure('GetCommandInvocation', instanceId, err);
        }
        const outcome = interpret(instanceId, verb, inv);
        if (outcome.done) {
          answered = true;
          return outcome.result;
        }
      }
    } finally {
      // A command left running fetches (and deletes) its staged request itself, as one that answered did; the bucket's
      // lifecycle rule expires any left over. Only a command that never got that far leaves it for us.
      if (stagedKey && !leftRunning && !answered) await removeStaged(stagedKey);
    }
  }

  return {
    dispatch: (instanceId, verb, request, o) => span(`ssm.dispatch.${verb}`, () => dispatch(instanceId, verb, request, o)),
  };
}
