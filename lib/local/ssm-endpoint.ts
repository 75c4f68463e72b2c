/**
 * A local SSM Run Command endpoint: speaks SSM's AWS JSON 1.1 protocol well
 * enough that the real `@aws-sdk/client-ssm` client (only `endpoint` changed)
 * works unchanged, and runs AWS-RunShellScript commands for real on this
 * machine for the instance ids registered with it.
 *
 * Operations: SendCommand, GetCommandInvocation, ListCommandInvocations,
 * ListCommands, CancelCommand. Behaviour follows SSM where it matters to
 * callers: output caps (24,000 chars of stdout, 8,000 of stderr, the beginning
 * kept), executionTimeout, cancellation, the agent's limit on commands running
 * at once per instance (`commandWorkersLimit`, the rest queue as Pending, as
 * the agent's CommandWorkersLimit does), eventual consistency right after
 * SendCommand (`invisibleMs`), throttling (`injectThrottling`) and slow
 * answers (`setLatency`).
 *
 * Standalone: `npx tsx lib/local/ssm-endpoint.ts --port 4583 --instance i-0123456789abcdef0`
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { StringDecoder } from 'node:string_decoder';
import { pathToFileURL } from 'node:url';
import { recordSpan } from '../../lambdas/shared/timing';
import { admitSigned, generateLocalCredentials, type LocalCredentials, type SigningPolicy } from './sigv4';

export interface SsmEndpointOptions {
  /** 0 (default) picks a free port. */
  port?: number;
  /** Loopback only. @default '127.0.0.1' */
  host?: string;
  /** Instance ids whose commands run on this machine. */
  instanceIds: string[];
  /** GetCommandInvocation answers InvocationDoesNotExist this long after SendCommand. @default 0 */
  invisibleMs?: number;
  /** Environment of the commands. @default process.env */
  env?: NodeJS.ProcessEnv;
  /** How long a finished command stays queryable. @default 600000 (10 min) */
  recordTtlMs?: number;
  /**
   * Commands run at once per instance; more wait, Pending, in arrival order.
   * The SSM agent's Mds.CommandWorkersLimit (5 unless the host configures it).
   * @default 5
   */
  commandWorkersLimit?: number;
  /** The only credentials whose SigV4 signatures are accepted. @default fresh random ones (see `credentials` on the endpoint) */
  credentials?: LocalCredentials;
}

export interface SsmEndpoint {
  /** e.g. http://127.0.0.1:4583 — pass as the SSMClient `endpoint`. */
  url: string;
  /** What clients must sign with: nothing else is answered, not even on loopback. */
  credentials: LocalCredentials;
  /**
   * Adds an instance whose commands run on this machine, with its own
   * environment (a host's HOST_ID, AGENT_SOCKET, STATE_DIR...) when given.
   */
  registerInstance(id: string, env?: NodeJS.ProcessEnv): void;
  /**
   * The instance is gone (terminated): new commands to it are refused
   * (InvalidInstanceId), and those it was running or holding end as
   * Undeliverable, their processes killed (the machine that ran them is gone).
   */
  deregisterInstance(id: string): void;
  /** The next `n` requests answer ThrottlingException. */
  injectThrottling(n: number): void;
  /** Every answer from now on waits `ms` first (a slow or distant SSM). */
  setLatency(ms: number): void;
  /** Kills running commands and stops the server. */
  close(): Promise<void>;
}

/** The only document this endpoint runs, and the plugin inside it. */
const runShellScript = 'AWS-RunShellScript';
const pluginName = 'aws:runShellScript';
const stdoutCap = 24_000;
const stderrCap = 8_000;
/** CommandPlugin.Output in ListCommandInvocations(Details) is shorter still. */
const pluginOutputCap = 2_500;
const maxRequestBytes = 1024 * 1024;
/** After a kill, stop waiting for pipes held open by escaped grandchildren. */
const pipeDrainGraceMs = 2_000;

const instanceIdPattern = /^(?:i|mi)-[0-9a-f]{8,17}$/;
const commandIdPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
/** AWS-RunShellScript's allowedPattern for executionTimeout: 1..172800. */
const executionTimeoutPattern = /^(?:[1-9][0-9]{0,4}|1[0-6][0-9]{4}|17[01][0-9]{3}|172[0-7][0-9]{2}|172800)$/;

type InvocationStatus = 'Pending' | 'InProgress' | 'Success' | 'Failed' | 'TimedOut' | 'Cancelling' | 'Cancelled';

/** Keeps the first `cap` characters of a stream, as SSM does, and drops the rest. */
class CappedText {
  text = '';
  private readonly decoder = new StringDecoder('utf8');
  constructor(private readonly cap: number) {}

  push(chunk: Buffer): void {
    if (this.text.length >= this.cap) return;
    this.append(this.decoder.write(chunk));
  }

  end(): void {
    if (this.text.length < this.cap) this.append(this.decoder.end());
  }

  append(s: string): void {
    const room = this.cap - this.text.length;
    if (room <= 0) return;
    let piece = s.length > room ? s.slice(0, room) : s;
    // Never end on half a surrogate pair.
    const last = piece.charCodeAt(piece.length - 1);
    if (s.length > room && last >= 0xd800 && last <= 0xdbff) piece = piece.slice(0, -1);
    this.text += piece;
  }
}

interface Invocation {
  commandId: string;
  instanceId: string;
  comment: string;
  documentVersion: string;
  requestedAt: number;
  visibleAt: number;
  status: InvocationStatus;
  statusDetails: string;
  responseCode: number;
  startedAt?: number;
  endedAt?: number;
  stdout: CappedText;
  stderr: CappedText;
  commands: string[];
  workingDirectory: string;
  executionTimeoutSeconds: number;
  child?: ChildProcess;
  killReason?: 'timeout' | 'cancel' | 'gone';
  timer?: NodeJS.Timeout;
  /** Set while the script runs: finishes the invocation even if escaped grandchildren hold the pipes. */
  afterKill?: () => void;
  /** Resolves once the invocation reached a terminal status. */
  finished: Promise<void>;
  /** True while it occupies one of its instance's workers. */
  holdsWorker?: boolean;
  finish: () => void;
}

class SsmError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly status = 400,
  ) {
    super(message);
  }
}

const epochSeconds = (ms: number) => ms / 1000;
const isoOrEmpty = (ms: number | undefined) => (ms === undefined ? '' : new Date(ms).toISOString());

function isTerminal(status: InvocationStatus): boolean {
  return status === 'Success' || status === 'Failed' || status === 'TimedOut' || status === 'Cancelled';
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

function assertInstanceId(id: string): void {
  if (!instanceIdPattern.test(id)) {
    throw new Error(`instance id "${id}" is not an EC2/managed instance id (expected i-<8 or 17 hex> or mi-<17 hex>)`);
  }
}

// --- request validation helpers -------------------------------------------------------

function validation(message: string): SsmError {
  return new SsmError('ValidationException', `1 validation error detected: ${message}`);
}

function optionalString(body: Record<string, unknown>, key: string): string | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw new SsmError('SerializationException', `${key} must be a string`);
  return v;
}

function requiredString(body: Record<string, unknown>, key: string): string {
  const v = optionalString(body, key);
  if (v === undefined) throw validation(`Value null at '${key}' failed to satisfy constraint: Member must not be null`);
  return v;
}

function optionalInteger(body: Record<string, unknown>, key: string): number | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v)) throw new SsmError('SerializationException', `${key} must be an integer`);
  return v;
}

function optionalStringArray(body: Record<string, unknown>, key: string): string[] | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) {
    throw new SsmError('SerializationException', `${key} must be a list of strings`);
  }
  return v as string[];
}

function checkCommandId(id: string): void {
  if (!commandIdPattern.test(id)) {
    throw new SsmError('InvalidCommandId', `Command id "${id}" is not a valid command id`);
  }
}

/** Options SSM has that this endpoint does not emulate: refused, not ignored. */
const unsupportedSendCommandFields = [
  'Targets',
  'DocumentHash',
  'DocumentHashType',
  'OutputS3Region',
  'OutputS3BucketName',
  'OutputS3KeyPrefix',
  'ServiceRoleArn',
  'NotificationConfig',
  'AlarmConfiguration',
];

export async function startSsmEndpoint(opts: SsmEndpointOptions): Promise<SsmEndpoint> {
  const host = opts.host ?? '127.0.0.1';
  if (!isLoopback(host)) throw new Error(`the local SSM endpoint listens on loopback only, not "${host}"`);
  const invisibleMs = opts.invisibleMs ?? 0;
  const recordTtlMs = opts.recordTtlMs ?? 10 * 60_000;
  const env = opts.env ?? process.env;
  // Commands run as root: only callers holding the stack's credentials may send or read them.
  const signing: SigningPolicy = { credentials: opts.credentials ?? generateLocalCredentials(), service: 'ssm', protocol: 'json', maxBodyBytes: maxRequestBytes };
  const instances = new Set<string>();
  /** Per-instance environments (several local hosts on one machine); the others run with `env`. */
  const instanceEnv = new Map<string, NodeJS.ProcessEnv>();
  for (const id of opts.instanceIds) {
    assertInstanceId(id);
    instances.add(id);
  }
  /** commandId -> invocations, one per instance. */
  const commands = new Map<string, Invocation[]>();
  const scriptRoot = mkdtempSync(join(tmpdir(), 'ssm-endpoint-'));
  const workersLimit = opts.commandWorkersLimit ?? 5;
  if (!Number.isInteger(workersLimit) || workersLimit < 1) throw new Error(`commandWorkersLimit must be a whole number >= 1, got ${workersLimit}`);
  /** Per instance: invocations running now, and those waiting for a worker. */
  const running = new Map<string, number>();
  const queued = new Map<string, Invocation[]>();
  let latencyMs = 0;
  let throttleNext = 0;
  let closing = false;

  let lastSweep = 0;
  function sweepExpired(): void {
    // Each request may sweep, but a long-lived stack with many records should not pay for it every time.
    if (Date.now() - lastSweep < Math.min(1_000, recordTtlMs)) return;
    lastSweep = Date.now();
    const cutoff = Date.now() - recordTtlMs;
    for (const [id, invocations] of commands) {
      if (invocations.every((inv) => isTerminal(inv.status) && (inv.endedAt ?? 0) < cutoff)) commands.delete(id);
    }
  }
  const sweeper = setInterval(sweepExpired, Math.min(60_000, recordTtlMs));
  sweeper.unref();

  // --- running commands -----------------------------------------------------------------

  function settle(inv: Invocation, status: InvocationStatus, details: string, responseCode: number): void {
    if (isTerminal(inv.status)) return;
    if (inv.timer) clearTimeout(inv.timer);
    inv.status = status;
    inv.statusDetails = details;
    inv.responseCode = responseCode;
    inv.endedAt = Date.now();
    inv.child = undefined;
    inv.afterKill = undefined;
    inv.finish();
    if (inv.holdsWorker) {
      inv.holdsWorker = false;
      running.set(inv.instanceId, (running.get(inv.instanceId) ?? 1) - 1);
      startQueued(inv.instanceId);
    }
  }

  /** Starts waiting invocations of an instance while it has free workers, oldest first. */
  function startQueued(instanceId: string): void {
    const waiting = queued.get(instanceId) ?? [];
    while (waiting.length > 0 && (running.get(instanceId) ?? 0) < workersLimit) {
      const inv = waiting.shift()!;
      if (inv.status !== 'Pending') continue; // cancelled while it waited
      running.set(instanceId, (running.get(instanceId) ?? 0) + 1);
      inv.holdsWorker = true;
      run(inv).catch((err: Error) => {
        inv.stderr.append(`local SSM endpoint failed to run the command: ${err.message}`);
        settle(inv, 'Failed', 'Failed', -1);
      });
    }
  }

  function killGroup(inv: Invocation, reason: 'timeout' | 'cancel' | 'gone'): void {
    const child = inv.child;
    inv.killReason ??= reason;
    if (!child?.pid) return;
    try {
      // The script runs as its own process group leader: take its children with it.
      process.kill(-child.pid, 'SIGKILL');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
    }
    inv.afterKill?.();
  }

  async function run(inv: Invocation): Promise<void> {
    if (inv.status !== 'Pending') return; // cancelled before it started
    inv.status = 'InProgress';
    inv.statusDetails = 'InProgress';
    inv.startedAt = Date.now();
    const dir = join(scriptRoot, `${inv.commandId}-${inv.instanceId}`);
    const cwd = inv.workingDirectory === '' ? dir : inv.workingDirectory;
    try {
      await mkdir(dir, { recursive: true });
      await writeFile(join(dir, '_script.sh'), inv.commands.join('\n') + '\n', { mode: 0o700 });
      if (!statSync(cwd, { throwIfNoEntry: false })?.isDirectory()) {
        inv.stderr.append(`Working directory ${cwd} doesn't exist\nfailed to run commands: working directory not found`);
        settle(inv, 'Failed', 'Failed', 1);
        return;
      }
    } catch (err) {
      inv.stderr.append(`failed to prepare the script: ${(err as Error).message}`);
      settle(inv, 'Failed', 'Failed', 1);
      return;
    }
    if (isTerminal(inv.status)) {
      // Cancelled while preparing.
      await rm(dir, { recursive: true, force: true });
      return;
    }

    const spawnedAt = performance.now();
    const child = spawn('/bin/sh', [join(dir, '_script.sh')], {
      cwd,
      env: instanceEnv.get(inv.instanceId) ?? env,
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    inv.child = child;
    child.stdout.on('data', (chunk: Buffer) => inv.stdout.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => inv.stderr.push(chunk));
    inv.timer = setTimeout(() => killGroup(inv, 'timeout'), inv.executionTimeoutSeconds * 1000);

    let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
    const finishFromExit = () => {
      // What the host spends on the script (shell, host-agent wrapper, the daemon's work), for the bench's breakdown.
      recordSpan('ssm-agent.script', performance.now() - spawnedAt);
      inv.stdout.end();
      inv.stderr.end();
      const code = exit?.code ?? null;
      if (inv.killReason === 'timeout') settle(inv, 'TimedOut', 'ExecutionTimedOut', -1);
      else if (inv.killReason === 'gone') settle(inv, 'Failed', 'Undeliverable', -1);
      else if (inv.killReason === 'cancel') settle(inv, 'Cancelled', 'Cancelled', -1);
      else if (code === 0) settle(inv, 'Success', 'Success', 0);
      else {
        // The SSM agent appends this line to stderr when a script fails.
        const sep = inv.stderr.text === '' || inv.stderr.text.endsWith('\n') ? '' : '\n';
        inv.stderr.append(`${sep}failed to run commands: exit status ${code ?? -1}`);
        settle(inv, 'Failed', 'Failed', code ?? -1);
      }
      void rm(dir, { recursive: true, force: true });
    };
    child.on('error', (err) => {
      inv.stderr.append(`failed to run commands: ${err.message}`);
      settle(inv, 'Failed', 'Failed', -1);
    });
    inv.afterKill = () => {
      setTimeout(() => {
        if (isTerminal(inv.status) || !exit) return;
        child.stdout.destroy();
        child.stderr.destroy();
        finishFromExit();
      }, pipeDrainGraceMs).unref();
    };
    child.on('exit', (code, signal) => {
      exit = { code, signal };
      // Like the agent, wait for stdout/stderr to close; but not forever once killed.
      if (inv.killReason) inv.afterKill?.();
    });
    child.on('close', () => {
      if (!isTerminal(inv.status)) finishFromExit();
    });
  }

  // --- operations -----------------------------------------------------------------------

  function lookupVisible(commandId: string, instanceId: string): Invocation | undefined {
    const inv = commands.get(commandId)?.find((i) => i.instanceId === instanceId);
    return inv && Date.now() >= inv.visibleAt ? inv : undefined;
  }

  function sendCommand(body: Record<string, unknown>): unknown {
    for (const field of unsupportedSendCommandFields) {
      if (body[field] !== undefined && body[field] !== null) {
        throw validation(`${field} is not supported by the local SSM endpoint; send to InstanceIds without it`);
      }
    }
    const cloudWatch = body.CloudWatchOutputConfig as { CloudWatchOutputEnabled?: boolean } | undefined;
    if (cloudWatch?.CloudWatchOutputEnabled) throw validation('CloudWatch output is not supported by the local SSM endpoint');

    const documentName = requiredString(body, 'DocumentName');
    if (documentName !== runShellScript) {
      throw new SsmError('InvalidDocument', `Document with name ${documentName} does not exist (the local SSM endpoint runs only ${runShellScript})`);
    }
    const documentVersion = optionalString(body, 'DocumentVersion') ?? '$DEFAULT';
    if (!['$DEFAULT', '$LATEST', '1'].includes(documentVersion)) {
      throw new SsmError('InvalidDocumentVersion', `Document version ${documentVersion} does not exist for ${runShellScript}`);
    }
    const instanceIds = optionalStringArray(body, 'InstanceIds');
    if (!instanceIds || instanceIds.length === 0) {
      throw validation("Value at 'instanceIds' failed to satisfy constraint: Member must have length greater than or equal to 1");
    }
    if (instanceIds.length > 50) {
      throw validation("Value at 'instanceIds' failed to satisfy constraint: Member must have length less than or equal to 50");
    }
    if (new Set(instanceIds).size !== instanceIds.length) throw new SsmError('DuplicateInstanceId', 'Instance Id is duplicated');
    for (const id of instanceIds) {
      if (!instances.has(id)) throw new SsmError('InvalidInstanceId', `Instances [[${id}]] not in a valid state for account`);
    }
    const timeoutSeconds = optionalInteger(body, 'TimeoutSeconds') ?? 3600;
    if (timeoutSeconds < 30 || timeoutSeconds > 2_592_000) {
      throw validation(`Value '${timeoutSeconds}' at 'timeoutSeconds' failed to satisfy constraint: Member must have value between 30 and 2592000`);
    }
    const comment = optionalString(body, 'Comment') ?? '';
    if (comment.length > 100) {
      throw validation("Value at 'comment' failed to satisfy constraint: Member must have length less than or equal to 100");
    }

    const rawParameters = body.Parameters ?? {};
    if (typeof rawParameters !== 'object' || rawParameters === null || Array.isArray(rawParameters)) {
      throw new SsmError('SerializationException', 'Parameters must be a map of string lists');
    }
    const parameters = rawParameters as Record<string, unknown>;
    for (const key of Object.keys(parameters)) {
      if (!['commands', 'workingDirectory', 'executionTimeout'].includes(key)) {
        throw new SsmError('InvalidParameters', `Parameter "${key}" is not defined in document ${runShellScript}`);
      }
    }
    const commandsParam = optionalStringArray(parameters, 'commands');
    if (!commandsParam || commandsParam.length === 0) {
      throw new SsmError('InvalidParameters', 'Parameter "commands" is required and must list at least one command');
    }
    const workingDirectory = optionalStringArray(parameters, 'workingDirectory') ?? [''];
    if (workingDirectory.length !== 1) {
      throw new SsmError('InvalidParameters', 'Parameter "workingDirectory" takes exactly one value');
    }
    const executionTimeout = optionalStringArray(parameters, 'executionTimeout') ?? ['3600'];
    if (executionTimeout.length !== 1 || !executionTimeoutPattern.test(executionTimeout[0] ?? '')) {
      throw new SsmError(
        'InvalidParameters',
        `Parameter "executionTimeout" must be one whole number of seconds between 1 and 172800, got ${JSON.stringify(executionTimeout)}`,
      );
    }

    const commandId = randomUUID();
    const requestedAt = Date.now();
    const invocations = instanceIds.map((instanceId): Invocation => {
      let finish!: () => void;
      const finished = new Promise<void>((resolve) => (finish = resolve));
      return {
        commandId,
        instanceId,
        comment,
        documentVersion,
        requestedAt,
        visibleAt: requestedAt + invisibleMs,
        status: 'Pending',
        statusDetails: 'Pending',
        responseCode: -1,
        stdout: new CappedText(stdoutCap),
        stderr: new CappedText(stderrCap),
        commands: commandsParam,
        workingDirectory: workingDirectory[0] ?? '',
        executionTimeoutSeconds: Number(executionTimeout[0]),
        finished,
        finish,
      };
    });
    commands.set(commandId, invocations);
    // Delivery is asynchronous, as with the agent: the answer says Pending, and a
    // command waits for one of its instance's workers.
    for (const inv of invocations) {
      const waiting = queued.get(inv.instanceId) ?? [];
      waiting.push(inv);
      queued.set(inv.instanceId, waiting);
      setImmediate(() => startQueued(inv.instanceId));
    }
    return {
      Command: {
        CommandId: commandId,
        DocumentName: documentName,
        DocumentVersion: documentVersion,
        Comment: comment,
        ExpiresAfter: epochSeconds(requestedAt + timeoutSeconds * 1000),
        Parameters: parameters,
        InstanceIds: instanceIds,
        Targets: [],
        RequestedDateTime: epochSeconds(requestedAt),
        Status: 'Pending',
        StatusDetails: 'Pending',
        OutputS3Region: '',
        OutputS3BucketName: '',
        OutputS3KeyPrefix: '',
        MaxConcurrency: optionalString(body, 'MaxConcurrency') ?? '50',
        MaxErrors: optionalString(body, 'MaxErrors') ?? '0',
        TargetCount: instanceIds.length,
        CompletedCount: 0,
        ErrorCount: 0,
        DeliveryTimedOutCount: 0,
        ServiceRole: '',
        NotificationConfig: { NotificationArn: '', NotificationEvents: [], NotificationType: '' },
        CloudWatchOutputConfig: { CloudWatchLogGroupName: '', CloudWatchOutputEnabled: false },
        TimeoutSeconds: timeoutSeconds,
      },
    };
  }

  function getCommandInvocation(body: Record<string, unknown>): unknown {
    const commandId = requiredString(body, 'CommandId');
    const instanceId = requiredString(body, 'InstanceId');
    checkCommandId(commandId);
    if (!instanceIdPattern.test(instanceId)) throw new SsmError('InvalidInstanceId', `Instance id ${instanceId} is not valid`);
    const plugin = optionalString(body, 'PluginName');
    if (plugin !== undefined && plugin !== pluginName) {
      throw new SsmError('InvalidPluginName', `Plugin ${plugin} is not part of ${runShellScript}`);
    }
    const inv = lookupVisible(commandId, instanceId);
    if (!inv) throw new SsmError('InvocationDoesNotExist', `No invocation of command ${commandId} on ${instanceId} (yet)`);
    const now = Date.now();
    const terminal = isTerminal(inv.status);
    const elapsedMs = inv.startedAt === undefined ? undefined : (inv.endedAt ?? now) - inv.startedAt;
    return {
      CommandId: inv.commandId,
      InstanceId: inv.instanceId,
      Comment: inv.comment,
      DocumentName: runShellScript,
      DocumentVersion: inv.documentVersion,
      PluginName: pluginName,
      ResponseCode: inv.responseCode,
      ExecutionStartDateTime: isoOrEmpty(inv.startedAt),
      ExecutionElapsedTime: elapsedMs === undefined ? '' : `PT${(elapsedMs / 1000).toFixed(3)}S`,
      ExecutionEndDateTime: isoOrEmpty(inv.endedAt),
      Status: inv.status,
      StatusDetails: inv.statusDetails,
      // SSM shows output once the invocation has finished.
      StandardOutputContent: terminal ? inv.stdout.text : '',
      StandardOutputUrl: '',
      StandardErrorContent: terminal ? inv.stderr.text : '',
      StandardErrorUrl: '',
      CloudWatchOutputConfig: { CloudWatchLogGroupName: '', CloudWatchOutputEnabled: false },
    };
  }

  function pluginOutput(inv: Invocation): string {
    let out = inv.stdout.text;
    if (inv.stderr.text) out += `\n----------ERROR-------\n${inv.stderr.text}`;
    const marker = '\n---Output truncated---';
    return out.length > pluginOutputCap ? out.slice(0, pluginOutputCap - marker.length) + marker : out;
  }

  function listCommandInvocations(body: Record<string, unknown>): unknown {
    if (body.Filters !== undefined && body.Filters !== null) {
      throw validation('Filters are not supported by the local SSM endpoint');
    }
    const commandId = optionalString(body, 'CommandId');
    const instanceId = optionalString(body, 'InstanceId');
    const details = body.Details === true;
    const maxResults = optionalInteger(body, 'MaxResults') ?? 50;
    if (maxResults < 1 || maxResults > 50) {
      throw validation(`Value '${maxResults}' at 'maxResults' failed to satisfy constraint: Member must have value between 1 and 50`);
    }
    const nextToken = optionalString(body, 'NextToken');
    let offset = 0;
    if (nextToken !== undefined) {
      offset = Number(Buffer.from(nextToken, 'base64url').toString('utf8'));
      if (!Number.isInteger(offset) || offset < 0) throw new SsmError('InvalidNextToken', 'The specified token is not valid');
    }
    if (commandId !== undefined) checkCommandId(commandId);
    if (instanceId !== undefined && !instanceIdPattern.test(instanceId)) {
      throw new SsmError('InvalidInstanceId', `Instance id ${instanceId} is not valid`);
    }
    const now = Date.now();
    const source = commandId !== undefined ? (commands.get(commandId) ?? []) : [...commands.values()].flat();
    const matching = source
      .filter((inv) => now >= inv.visibleAt && (instanceId === undefined || inv.instanceId === instanceId))
      .sort((a, b) => b.requestedAt - a.requestedAt);
    const page = matching.slice(offset, offset + maxResults);
    const next = offset + maxResults < matching.length ? Buffer.from(String(offset + maxResults)).toString('base64url') : undefined;
    return {
      CommandInvocations: page.map((inv) => ({
        CommandId: inv.commandId,
        InstanceId: inv.instanceId,
        InstanceName: '',
        Comment: inv.comment,
        DocumentName: runShellScript,
        DocumentVersion: inv.documentVersion,
        RequestedDateTime: epochSeconds(inv.requestedAt),
        Status: inv.status,
        StatusDetails: inv.statusDetails,
        TraceOutput: '',
        StandardOutputUrl: '',
        StandardErrorUrl: '',
        CommandPlugins: details
          ? [
              {
                Name: pluginName,
                // Plugin statuses have no Cancelling.
                Status: inv.status === 'Cancelling' ? 'InProgress' : inv.status,
                StatusDetails: inv.statusDetails,
                ResponseCode: inv.responseCode,
                ...(inv.startedAt !== undefined ? { ResponseStartDateTime: epochSeconds(inv.startedAt) } : {}),
                ...(inv.endedAt !== undefined ? { ResponseFinishDateTime: epochSeconds(inv.endedAt) } : {}),
                Output: isTerminal(inv.status) ? pluginOutput(inv) : '',
                StandardOutputUrl: '',
                StandardErrorUrl: '',
                OutputS3Region: '',
                OutputS3BucketName: '',
                OutputS3KeyPrefix: '',
              },
            ]
          : [],
        ServiceRole: '',
        NotificationConfig: { NotificationArn: '', NotificationEvents: [], NotificationType: '' },
        CloudWatchOutputConfig: { CloudWatchLogGroupName: '', CloudWatchOutputEnabled: false },
      })),
      ...(next !== undefined ? { NextToken: next } : {}),
    };
  }

  /** What anyone with ssm:ListCommands reads: every command's document parameters, text included. */
  function listCommands(body: Record<string, unknown>): unknown {
    if (body.Filters !== undefined && body.Filters !== null) throw validation('Filters are not supported by the local SSM endpoint');
    const commandId = optionalString(body, 'CommandId');
    const instanceId = optionalString(body, 'InstanceId');
    const maxResults = optionalInteger(body, 'MaxResults') ?? 50;
    if (maxResults < 1 || maxResults > 50) {
      throw validation(`Value '${maxResults}' at 'maxResults' failed to satisfy constraint: Member must have value between 1 and 50`);
    }
    const nextToken = optionalString(body, 'NextToken');
    let offset = 0;
    if (nextToken !== undefined) {
      offset = Number(Buffer.from(nextToken, 'base64url').toString('utf8'));
      if (!Number.isInteger(offset) || offset < 0) throw new SsmError('InvalidNextToken', 'The specified token is not valid');
    }
    if (commandId !== undefined) checkCommandId(commandId);
    const all = [...commands.entries()]
      .filter(([id, invs]) => (commandId === undefined || id === commandId) && (instanceId === undefined || invs.some((i) => i.instanceId === instanceId)))
      .sort((a, b) => b[1][0]!.requestedAt - a[1][0]!.requestedAt);
    const page = all.slice(offset, offset + maxResults);
    const next = offset + maxResults < all.length ? Buffer.from(String(offset + maxResults)).toString('base64url') : undefined;
    return {
      Commands: page.map(([id, invs]) => {
        const first = invs[0]!;
        return {
          CommandId: id,
          DocumentName: runShellScript,
          DocumentVersion: first.documentVersion,
          Comment: first.comment,
          Parameters: {
            commands: first.commands,
            workingDirectory: [first.workingDirectory],
            executionTimeout: [String(first.executionTimeoutSeconds)],
          },
          InstanceIds: invs.map((i) => i.instanceId),
          RequestedDateTime: epochSeconds(first.requestedAt),
          Status: invs.every((i) => isTerminal(i.status)) ? (invs.every((i) => i.status === 'Success') ? 'Success' : 'Failed') : 'InProgress',
          TargetCount: invs.length,
          CompletedCount: invs.filter((i) => isTerminal(i.status)).length,
        };
      }),
      ...(next !== undefined ? { NextToken: next } : {}),
    };
  }

  function cancelCommand(body: Record<string, unknown>): unknown {
    const commandId = requiredString(body, 'CommandId');
    checkCommandId(commandId);
    const invocations = commands.get(commandId);
    if (!invocations) throw new SsmError('InvalidCommandId', `Command ${commandId} does not exist`);
    const only = optionalStringArray(body, 'InstanceIds');
    for (const id of only ?? []) {
      if (!invocations.some((inv) => inv.instanceId === id)) {
        throw new SsmError('InvalidInstanceId', `Instance ${id} is not a target of command ${commandId}`);
      }
    }
    for (const inv of invocations) {
      if (only && !only.includes(inv.instanceId)) continue;
      cancelInvocation(inv);
    }
    return {};
  }

  function cancelInvocation(inv: Invocation): void {
    if (isTerminal(inv.status)) return;
    if (inv.status === 'Pending' || !inv.child) {
      // Not started (or still preparing): nothing to kill.
      inv.killReason ??= 'cancel';
      settle(inv, 'Cancelled', 'Cancelled', -1);
      return;
    }
    inv.status = 'Cancelling';
    inv.statusDetails = 'Cancelling';
    killGroup(inv, 'cancel');
  }

  const operations: Record<string, (body: Record<string, unknown>) => unknown> = {
    SendCommand: sendCommand,
    GetCommandInvocation: getCommandInvocation,
    ListCommandInvocations: listCommandInvocations,
    ListCommands: listCommands,
    CancelCommand: cancelCommand,
  };

  // --- HTTP -----------------------------------------------------------------------------

  function answer(res: ServerResponse, status: number, payload: unknown, errorType?: string): void {
    const body = JSON.stringify(payload);
    res.writeHead(status, {
      'content-type': 'application/x-amz-json-1.1',
      'content-length': Buffer.byteLength(body),
      'x-amzn-requestid': randomUUID(),
      ...(errorType ? { 'x-amzn-errortype': errorType } : {}),
    });
    res.end(body);
  }

  function answerError(res: ServerResponse, err: SsmError): void {
    // Some SSM errors carry `Message`, others `message`: send both so every SDK class fills in.
    answer(res, err.status, { __type: err.code, message: err.message, Message: err.message }, err.code);
  }

  async function readBody(req: IncomingMessage): Promise<string> {
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of req as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > maxRequestBytes) throw new SsmError('ValidationException', `request body exceeds ${maxRequestBytes} bytes`, 413);
      chunks.push(chunk);
    }
    return Buffer.concat(chunks).toString('utf8');
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (!(await admitSigned(req, res, signing))) return;
    try {
      const raw = await readBody(req);
      if (latencyMs > 0) await new Promise((r) => setTimeout(r, latencyMs));
      sweepExpired();
      if (throttleNext > 0) {
        throttleNext -= 1;
        throw new SsmError('ThrottlingException', 'Rate exceeded');
      }
      const target = req.headers['x-amz-target'];
      const [service, operation] = typeof target === 'string' ? target.split('.', 2) : [];
      if (req.method !== 'POST' || service !== 'AmazonSSM' || operation === undefined) {
        throw new SsmError('UnknownOperationException', `expected POST with X-Amz-Target: AmazonSSM.<Operation>, got ${req.method} ${String(target)}`);
      }
      const op = operations[operation];
      if (!op) throw new SsmError('UnknownOperationException', `operation ${operation} is not supported by the local SSM endpoint`);
      let body: unknown;
      try {
        body = raw === '' ? {} : JSON.parse(raw);
      } catch {
        throw new SsmError('SerializationException', 'request body is not valid JSON');
      }
      if (typeof body !== 'object' || body === null || Array.isArray(body)) {
        throw new SsmError('SerializationException', 'request body must be a JSON object');
      }
      answer(res, 200, op(body as Record<string, unknown>));
    } catch (err) {
      if (err instanceof SsmError) answerError(res, err);
      else answerError(res, new SsmError('InternalServerError', (err as Error).message, 500));
    }
  }

  const server = createServer((req, res) => void handle(req, res));
  // Like AWS endpoints, keep idle connections far longer than Node's 5 s default: the SDK's
  // agent reuses idle sockets without reading the Keep-Alive hint, and a server closing one
  // just as a request goes out answers that request with ECONNRESET.
  server.keepAliveTimeout = 65_000;
  server.headersTimeout = 66_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  const urlHost = address.family === 'IPv6' ? `[${address.address}]` : address.address;

  return {
    url: `http://${urlHost}:${address.port}`,
    credentials: signing.credentials,
    registerInstance(id: string, instanceEnvironment?: NodeJS.ProcessEnv) {
      assertInstanceId(id);
      instances.add(id);
      if (instanceEnvironment) instanceEnv.set(id, instanceEnvironment);
    },
    deregisterInstance(id: string) {
      instances.delete(id);
      instanceEnv.delete(id);
      for (const invocations of commands.values()) {
        for (const inv of invocations) {
          if (inv.instanceId !== id || isTerminal(inv.status)) continue;
          if (inv.status === 'Pending' || !inv.child) settle(inv, 'Failed', 'Undeliverable', -1);
          else killGroup(inv, 'gone');
        }
      }
    },
    injectThrottling(n: number) {
      if (!Number.isInteger(n) || n < 0) throw new Error(`injectThrottling takes a whole number >= 0, got ${n}`);
      throttleNext = n;
    },
    setLatency(ms: number) {
      if (!Number.isFinite(ms) || ms < 0) throw new Error(`setLatency takes milliseconds >= 0, got ${ms}`);
      latencyMs = ms;
    },
    async close() {
      if (closing) return;
      closing = true;
      clearInterval(sweeper);
      const running: Promise<void>[] = [];
      for (const invocations of commands.values()) {
        for (const inv of invocations) {
          if (isTerminal(inv.status)) continue;
          cancelInvocation(inv);
          running.push(inv.finished);
        }
      }
      await Promise.all(running);
      await new Promise<void>((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()));
        server.closeAllConnections();
      });
      rmSync(scriptRoot, { recursive: true, force: true });
    },
  };
}

// --- standalone -------------------------------------------------------------------------

async function main(argv: string[]): Promise<void> {
  let port = 4583;
  let invisibleMs = 0;
  const instanceIds: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = argv[i + 1];
    if (value === undefined) throw new Error(`${flag} needs a value`);
    i++;
    if (flag === '--port') port = Number(value);
    else if (flag === '--instance') instanceIds.push(value);
    else if (flag === '--invisible-ms') invisibleMs = Number(value);
    else throw new Error(`unknown flag ${flag} (use --port N, --instance i-..., --invisible-ms N)`);
  }
  if (instanceIds.length === 0) throw new Error('give at least one --instance i-<hex>');
  const endpoint = await startSsmEndpoint({ port, instanceIds, invisibleMs });
  process.stdout.write(
    `local SSM endpoint on ${endpoint.url} for ${instanceIds.join(', ')}\n` +
      `sign with AWS_ACCESS_KEY_ID=${endpoint.credentials.accessKeyId} AWS_SECRET_ACCESS_KEY=${endpoint.credentials.secretAccessKey}\n`,
  );
  const stop = () => void endpoint.close().then(() => process.exit(0));
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((err: Error) => {
    process.stderr.write(`ssm-endpoint: ${err.message}\n`);
    process.exit(1);
  });
}
