/**
 * A local SSM Run Command endpoint: speaks SSM's AWS JSON 1.1 protocol well
 * enough that the real `@aws-sdk/client-ssm` client (only `endpoint` changed)
 * works unchanged, and runs AWS-RunShellScript commands for real on this
 * machine for the instance ids registered with it.
 *
 * Operations: SendCommand, GetCommandInvocation, ListCommandInvocations,
 * ListCommands, CancelCommand; and GetParameter, PutParameter (String
 * parameters, ssm/parameters.ts). Behaviour follows SSM where it matters to
 * callers: output caps (24,000 chars of stdout, 8,000 of stderr, the beginning
 * kept), executionTimeout, cancellation, the agent's limit on commands running
 * at once per instance (`commandWorkersLimit`, the rest queue as Pending, as
 * the agent's CommandWorkersLimit does), eventual consistency right after
 * SendCommand (`invisibleMs`), throttling (`injectThrottling`) and slow
 * answers (`setLatency`).
 *
 * The pieces: requests.ts reads and checks what callers send, store.ts keeps
 * the commands, agent.ts runs them, answers.ts shapes what SSM returns; this
 * module is the HTTP in front of them.
 *
 * Standalone: `npx tsx lib/local/ssm-endpoint.ts --port 4583 --instance i-0123456789abcdef0`
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ssmInstanceIdPattern } from '../../contract/ids';
import { answerAwsJson, AwsJsonError } from './aws-json';
import { admitSigned, generateLocalCredentials, type LocalCredentials, type SigningPolicy } from './sigv4';
import { createAgent } from './ssm/agent';
import { invocationAnswer, listedCommand, listedInvocation, sentCommand } from './ssm/answers';
import { isTerminal, newInvocation } from './ssm/invocation';
import {
  checkCommandId,
  checkInstanceId,
  optionalString,
  optionalStringArray,
  parsePage,
  parseSendCommand,
  pluginName,
  refuseFilters,
  requiredString,
  runShellScript,
  takePage,
  type RequestBody,
} from './ssm/requests';
import { CommandStore } from './ssm/store';
import { ParameterStore } from './ssm/parameters';

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
  /** Writes a String parameter (a new version when it exists), as a deploy's PutParameter with Overwrite does. */
  putParameter(name: string, value: string): void;
  /** The next `n` requests answer ThrottlingException. */
  injectThrottling(n: number): void;
  /** Every answer from now on waits `ms` first (a slow or distant SSM). */
  setLatency(ms: number): void;
  /** Kills running commands and stops the server. */
  close(): Promise<void>;
}

const maxRequestBytes = 1024 * 1024;

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

function assertInstanceId(id: string): void {
  if (!ssmInstanceIdPattern.test(id)) {
    throw new Error(`instance id "${id}" is not an EC2/managed instance id (expected i-<8 or 17 hex> or mi-<17 hex>)`);
  }
}

export async function startSsmEndpoint(opts: SsmEndpointOptions): Promise<SsmEndpoint> {
  const host = opts.host ?? '127.0.0.1';
  if (!isLoopback(host)) throw new Error(`the local SSM endpoint listens on loopback only, not "${host}"`);
  const invisibleMs = opts.invisibleMs ?? 0;
  const recordTtlMs = opts.recordTtlMs ?? 10 * 60_000;
  const env = opts.env ?? process.env;
  // Commands run as root: only callers holding the stack's credentials may send or read them.
  const signing: SigningPolicy = {
    credentials: opts.credentials ?? generateLocalCredentials(),
    service: 'ssm',
    protocol: 'json',
    maxBodyBytes: maxRequestBytes,
  };
  const instances = new Set<string>();
  /** Per-instance environments (several local hosts on one machine); the others run with `env`. */
  const instanceEnv = new Map<string, NodeJS.ProcessEnv>();
  for (const id of opts.instanceIds) {
    assertInstanceId(id);
    instances.add(id);
  }
  const store = new CommandStore(recordTtlMs);
  const parameters = new ParameterStore(env.AWS_REGION ?? 'us-east-1');
  const scriptRoot = mkdtempSync(join(tmpdir(), 'ssm-endpoint-'));
  const workersLimit = opts.commandWorkersLimit ?? 5;
  if (!Number.isInteger(workersLimit) || workersLimit < 1) throw new Error(`commandWorkersLimit must be a whole number >= 1, got ${workersLimit}`);
  const agent = createAgent({ scriptRoot, workersLimit, envFor: (id) => instanceEnv.get(id) ?? env });
  let latencyMs = 0;
  let throttleNext = 0;
  let closing = false;

  const sweeper = setInterval(() => store.sweep(), Math.min(60_000, recordTtlMs));
  sweeper.unref();

  // --- operations -----------------------------------------------------------------------

  function sendCommand(body: RequestBody): unknown {
    const request = parseSendCommand(body, (id) => instances.has(id));
    const commandId = randomUUID();
    const requestedAt = Date.now();
    const invocations = request.instanceIds.map((instanceId) =>
      newInvocation({
        commandId,
        instanceId,
        comment: request.comment,
        documentVersion: request.documentVersion,
        requestedAt,
        visibleAt: requestedAt + invisibleMs,
        commands: request.commands,
        workingDirectory: request.workingDirectory,
        executionTimeoutSeconds: request.executionTimeoutSeconds,
      }),
    );
    store.add(commandId, invocations);
    // Delivery is asynchronous, as with the agent: the answer says Pending, and a
    // command waits for one of its instance's workers.
    for (const inv of invocations) agent.deliver(inv);
    return sentCommand(request, commandId, requestedAt);
  }

  function getCommandInvocation(body: RequestBody): unknown {
    const commandId = requiredString(body, 'CommandId');
    const instanceId = requiredString(body, 'InstanceId');
    checkCommandId(commandId);
    checkInstanceId(instanceId);
    const plugin = optionalString(body, 'PluginName');
    if (plugin !== undefined && plugin !== pluginName) {
      throw new AwsJsonError('InvalidPluginName', `Plugin ${plugin} is not part of ${runShellScript}`);
    }
    const now = Date.now();
    const inv = store.visible(commandId, instanceId, now);
    if (!inv) throw new AwsJsonError('InvocationDoesNotExist', `No invocation of command ${commandId} on ${instanceId} (yet)`);
    return invocationAnswer(inv, now);
  }

  function listCommandInvocations(body: RequestBody): unknown {
    refuseFilters(body);
    const commandId = optionalString(body, 'CommandId');
    const instanceId = optionalString(body, 'InstanceId');
    const details = body.Details === true;
    const page = parsePage(body);
    if (commandId !== undefined) checkCommandId(commandId);
    if (instanceId !== undefined) checkInstanceId(instanceId);
    const now = Date.now();
    const source = commandId !== undefined ? (store.get(commandId) ?? []) : store.invocations();
    const matching = source
      .filter((inv) => now >= inv.visibleAt && (instanceId === undefined || inv.instanceId === instanceId))
      .sort((a, b) => b.requestedAt - a.requestedAt);
    const { items, nextToken } = takePage(matching, page);
    return {
      CommandInvocations: items.map((inv) => listedInvocation(inv, details)),
      ...(nextToken !== undefined ? { NextToken: nextToken } : {}),
    };
  }

  /** What anyone with ssm:ListCommands reads: every command's document parameters, text included. */
  function listCommands(body: RequestBody): unknown {
    refuseFilters(body);
    const commandId = optionalString(body, 'CommandId');
    const instanceId = optionalString(body, 'InstanceId');
    const page = parsePage(body);
    if (commandId !== undefined) checkCommandId(commandId);
    const all = store
      .entries()
      .filter(([id, invs]) => (commandId === undefined || id === commandId) && (instanceId === undefined || invs.some((i) => i.instanceId === instanceId)))
      .sort((a, b) => b[1][0]!.requestedAt - a[1][0]!.requestedAt);
    const { items, nextToken } = takePage(all, page);
    return {
      Commands: items.map(([id, invs]) => listedCommand(id, invs)),
      ...(nextToken !== undefined ? { NextToken: nextToken } : {}),
    };
  }

  function cancelCommand(body: RequestBody): unknown {
    const commandId = requiredString(body, 'CommandId');
    checkCommandId(commandId);
    const invocations = store.get(commandId);
    if (!invocations) throw new AwsJsonError('InvalidCommandId', `Command ${commandId} does not exist`);
    const only = optionalStringArray(body, 'InstanceIds');
    for (const id of only ?? []) {
      if (!invocations.some((inv) => inv.instanceId === id)) {
        throw new AwsJsonError('InvalidInstanceId', `Instance ${id} is not a target of command ${commandId}`);
      }
    }
    for (const inv of invocations) {
      if (only && !only.includes(inv.instanceId)) continue;
      agent.cancel(inv);
    }
    return {};
  }

  const operations: Record<string, (body: RequestBody) => unknown> = {
    SendCommand: sendCommand,
    GetCommandInvocation: getCommandInvocation,
    ListCommandInvocations: listCommandInvocations,
    ListCommands: listCommands,
    CancelCommand: cancelCommand,
    GetParameter: (body) => parameters.getParameter(body),
    PutParameter: (body) => parameters.putParameter(body),
  };

  // --- HTTP -----------------------------------------------------------------------------

  function answerError(res: ServerResponse, err: AwsJsonError): void {
    // Some SSM errors carry `Message`, others `message`: send both so every SDK class fills in.
    answerAwsJson(res, err.status, { __type: err.code, message: err.message, Message: err.message }, err.code);
  }

  async function readBody(req: IncomingMessage): Promise<string> {
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of req as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > maxRequestBytes) throw new AwsJsonError('ValidationException', `request body exceeds ${maxRequestBytes} bytes`, 413);
      chunks.push(chunk);
    }
    return Buffer.concat(chunks).toString('utf8');
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (!(await admitSigned(req, res, signing))) return;
    try {
      const raw = await readBody(req);
      if (latencyMs > 0) await new Promise((r) => setTimeout(r, latencyMs));
      store.sweep();
      if (throttleNext > 0) {
        throttleNext -= 1;
        throw new AwsJsonError('ThrottlingException', 'Rate exceeded');
      }
      const target = req.headers['x-amz-target'];
      const [service, operation] = typeof target === 'string' ? target.split('.', 2) : [];
      if (req.method !== 'POST' || service !== 'AmazonSSM' || operation === undefined) {
        throw new AwsJsonError('UnknownOperationException', `expected POST with X-Amz-Target: AmazonSSM.<Operation>, got ${req.method} ${String(target)}`);
      }
      const op = operations[operation];
      if (!op) throw new AwsJsonError('UnknownOperationException', `operation ${operation} is not supported by the local SSM endpoint`);
      let body: unknown;
      try {
        body = raw === '' ? {} : JSON.parse(raw);
      } catch {
        throw new AwsJsonError('SerializationException', 'request body is not valid JSON');
      }
      if (typeof body !== 'object' || body === null || Array.isArray(body)) {
        throw new AwsJsonError('SerializationException', 'request body must be a JSON object');
      }
      answerAwsJson(res, 200, op(body as RequestBody));
    } catch (err) {
      if (err instanceof AwsJsonError) answerError(res, err);
      else answerError(res, new AwsJsonError('InternalServerError', (err as Error).message, 500));
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
      for (const inv of store.invocations()) {
        if (inv.instanceId === id) agent.abandon(inv);
      }
    },
    putParameter(name: string, value: string) {
      parameters.put(name, value);
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
      for (const inv of store.invocations()) {
        if (isTerminal(inv.status)) continue;
        agent.cancel(inv);
        running.push(inv.finished);
      }
      await Promise.all(running);
      agent.close();
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
