/**
 * The local stack: the whole control plane on one machine, on real engines.
 * DynamoDB Local, s3rver, the local SSM endpoint running commands on this
 * machine (the one registered host), the local API Gateway calling the same
 * handler modules, the host-agent against the real Docker engine, and the
 * reaper on a timer like its schedule.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createApiKey } from '../../lambdas/shared/api-keys';
import { resetConfig } from '../../lambdas/shared/config';
import { resetHosts } from '../../lambdas/shared/host-calls';
import { applyLogLevel, logger } from '../../lambdas/shared/logger';
import { setMetricSink } from '../../lambdas/shared/metrics';
import { reap, type ReapReport } from '../../lambdas/shared/reaper';
import { reportReaperRun } from '../../lambdas/shared/reaper-metrics';
import { tables } from '../../lambdas/shared/tables';
import { bundledFunctions, startLocalApi, type LocalApi } from './api-gateway';
import { createTables, startDynamoDbLocal, type DynamoDbLocal } from './dynamodb-local';
import { startLocalEventBus, type LocalEventBus } from './event-bus';
import { freePort } from './free-port';
import { startS3Endpoint, type S3Endpoint } from './s3-endpoint';
import { generateLocalCredentials, type LocalCredentials } from './sigv4';
import { startSsmEndpoint, type SsmEndpoint } from './ssm-endpoint';
import { LocalTelemetry } from './telemetry';
import { ssmCommandWorkersFor } from '../../host-agent/src/protocol';
import { removeNetwork, sandboxNetworkGateway } from './sandbox-network';

export const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

export interface LocalStackOptions {
  /** API port on 127.0.0.1; 0 picks a free one. @default 8000 */
  port?: number;
  /** Accepted API key; generated when absent. */
  apiKey?: string;
  /** Tenant the key belongs to. @default 'default' */
  tenantId?: string;
  /** Sandbox slots of the local host. @default 16 */
  slots?: number;
  /**
   * Warm pool containers the local host keeps ready (WARM_CONTAINERS_PER_HOST). `npm start` and
   * `npm run bench` use the dev environment's `hosts.warmContainersPerHost` (localHostSettings).
   * @default WARM_CONTAINERS_PER_HOST or 0
   */
  warmContainers?: number;
  /** Reaper period in ms; 0 turns the timer off (tests call runReaper). @default 5000 */
  reaperIntervalMs?: number;
  /** Host daemon heartbeat/reconcile period. @default 5000 */
  hostHeartbeatMs?: number;
  /** Extra environment for the handlers and the host (limits etc.). */
  env?: Record<string, string>;
  /** SSM endpoint's InvocationDoesNotExist window after SendCommand. @default 0 */
  ssmInvisibleMs?: number;
  /** Commands the host's SSM agent runs at once. @default ssmCommandWorkersFor(slots), as the CDK configures hosts */
  ssmCommandWorkers?: number;
  /** Authorizer cache TTL like API Gateway's. @default AUTHORIZER_CACHE_SECONDS or 300 */
  authorizerCacheSeconds?: number;
  /** Per-tenant request rate (usage plan). @default TENANT_RATE_LIMIT or 50 */
  rateLimit?: number;
  /** Per-tenant burst (usage plan). @default TENANT_BURST_LIMIT or 100 */
  burstLimit?: number;
  /** The API handlers' Lambda timeout. @default the dev environment's handlers.apiTimeoutSeconds in cdk.json (29) */
  functionTimeoutSeconds?: number;
  /** API Gateway's integration timeout. @default 29, as deployed */
  integrationTimeoutSeconds?: number;
  /**
   * Where to write the stack's endpoints and table names (mode 0600) for
   * admin tools such as `npm run keys`; removed on close. `npm start` uses
   * .local/stack.json. @default none
   */
  stateFile?: string;
  /**
   * Aborts a start in progress (Ctrl-C while `npm start` is still starting):
   * the start stops at its next step, removes what it made, and rejects.
   */
  signal?: AbortSignal;
}

/** What `stateFile` holds: enough for an admin tool to reach this stack's engines. */
export interface LocalStackState {
  pid: number;
  url: string;
  region: string;
  hostId: string;
  tenantId: string;
  dynamodbEndpoint: string;
  s3Endpoint: string;
  ssmEndpoint: string;
  /** The stack's own credentials: the three endpoints accept nothing else. */
  credentials: LocalCredentials;
  /** Table env var (e.g. API_KEYS_TABLE) -> physical name. */
  tables: Record<string, string>;
  startedAt: string;
}

export interface LocalStack {
  url: string;
  apiKey: string;
  tenantId: string;
  hostId: string;
  /** URL the sandboxes use to reach the API (sandbox network gateway). */
  sandboxApiUrl: string;
  stateDir: string;
  dynamodb: DynamoDbLocal;
  s3: S3Endpoint;
  ssm: SsmEndpoint;
  api: LocalApi;
  /** The environment's event bus: every sandbox.* and command.finished event, in order. */
  events: LocalEventBus;
  /** Metrics every part wrote (EMF lines of the handlers, the host daemon and the reaper), in order. */
  telemetry: LocalTelemetry;
  /** Environment the handlers and the host-agent run with. */
  env: Record<string, string>;
  runReaper(): Promise<ReapReport>;
  /** The host daemon child process (null once stopped). */
  daemon(): ChildProcess | null;
  stopDaemon(): Promise<void>;
  startDaemon(): void;
  close(): Promise<void>;
}

/** A local host id in SSM's managed-instance form (on-premises hosts are mi-...). */
function localHostId(): string {
  return 'mi-' + Array.from({ length: 17 }, () => '0123456789abcdef'[Math.floor(Math.random() * 16)]).join('');
}

export async function startLocalStack(o: LocalStackOptions = {}): Promise<LocalStack> {
  const tenantId = o.tenantId ?? 'default';
  const hostId = localHostId();
  const stateDir = mkdtempSync(join(tmpdir(), 'ephemeral-sandbox-host-'));
  const port = o.port === 0 ? await freePort() : (o.port ?? 8000);
  const cleanups: (() => Promise<void> | void)[] = [() => removeStateDir(stateDir)];
  const closeAll = async () => {
    for (const c of cleanups.reverse()) {
      try {
        await c();
      } catch (err) {
        logger.error('local stack: cleanup step failed', { err });
      }
    }
  };

  // One random pair per stack, for DynamoDB, S3 and SSM alike; it reaches the handlers, the
  // host daemon and s3fs through the environment and password files, never a command line.
  const credentials = generateLocalCredentials();
  try {
    const [dynamodb, s3, events] = await Promise.all([
      startDynamoDbLocal({ credentials }),
      startS3Endpoint({ buckets: ['ephemeral-sandbox-local'], credentials }),
      startLocalEventBus({ credentials }),
    ]);
    cleanups.push(() => dynamodb.close(), () => s3.close(), () => events.close());
    // What the parts print goes through here: EMF lines become metric records (printed at debug only).
    const telemetry = new LocalTelemetry({ printEmf: (process.env.LOG_LEVEL ?? '').toLowerCase() === 'debug' });
    setMetricSink((emf) => telemetry.add('stack', emf));
    cleanups.push(() => setMetricSink(undefined));
    // `npm start` with LOG_LEVEL=debug prints every event as it lands on the bus.
    const stopPrinting = events.onEvent((e) => logger.debug('event', { 'detail-type': e.detailType, source: e.source, detail: e.detail }));
    cleanups.push(stopPrinting);
    o.signal?.throwIfAborted();
    // A network (and firewall chains) of its own, so stacks side by side (npm start and
    // npm test) never rewrite each other's egress rules.
    const sandboxNetwork = o.env?.SANDBOX_NETWORK ?? `sbx-${hostId.slice(-8)}`;
    const gateway = await sandboxNetworkGateway(sandboxNetwork);
    cleanups.push(() => removeNetwork(sandboxNetwork));
    // Runs again on close once SSM commands are cancelled and the daemon is stopped: a create
    // that was still running then may have made a container after the first sweep.
    cleanups.push(() => removeHostContainers(hostId, stateDir));
    const sandboxApiUrl = `http://${gateway}:${port}`;

    const env: Record<string, string> = {
      AWS_REGION: 'us-east-1',
      AWS_ACCESS_KEY_ID: credentials.accessKeyId,
      AWS_SECRET_ACCESS_KEY: credentials.secretAccessKey,
      AWS_ENDPOINT_URL_DYNAMODB: dynamodb.endpoint,
      AWS_ENDPOINT_URL_S3: s3.url,
      AWS_ENDPOINT_URL_EVENTBRIDGE: events.url,
      EVENT_BUS_NAME: events.name,
      POWERTOOLS_SERVICE_NAME: 'ephemeral-sandbox',
      POWERTOOLS_METRICS_NAMESPACE: 'EphemeralSandbox/local',
      S3_FORCE_PATH_STYLE: 'true',
      AWS_REQUEST_CHECKSUM_CALCULATION: 'WHEN_REQUIRED',
      AWS_RESPONSE_CHECKSUM_VALIDATION: 'WHEN_REQUIRED',
      ...Object.fromEntries(tables.map((t) => [t.envVar, t.id.toLowerCase()])),
      STORAGE_BUCKET: 'ephemeral-sandbox-local',
      SANDBOX_IMAGE: process.env.SANDBOX_IMAGE ?? 'ephemeral-sandbox:latest',
      HOST_AGENT_COMMAND: join(repoRoot, 'host-agent', 'bin', 'host-agent'),
      HOST_AGENT_BUNDLE: join(repoRoot, 'dist', 'host-agent.mjs'),
      NODE_BINARY: process.execPath,
      AGENT_SOCKET: join(stateDir, 'agent.sock'),
      SANDBOX_API_URL: sandboxApiUrl,
      HOST_ID: hostId,
      HOST_SLOTS: String(o.slots ?? 16),
      WARM_CONTAINERS_PER_HOST: String(o.warmContainers ?? process.env.WARM_CONTAINERS_PER_HOST ?? 0),
      STATE_DIR: stateDir,
      SANDBOX_NETWORK: sandboxNetwork,
      EGRESS_ALLOW: `${gateway}:${port}`,
      COLD_MOUNT_DRIVER: process.env.COLD_MOUNT_DRIVER ?? 's3fs',
      HOST_HEARTBEAT_SECONDS: String((o.hostHeartbeatMs ?? 5000) / 1000),
      HOST_LOST_AFTER_SECONDS: process.env.HOST_LOST_AFTER_SECONDS ?? '30',
      LOG_LEVEL: process.env.LOG_LEVEL ?? 'warn',
      // Lambda and the hosts run Node 22; the SDK's notice about Node 20 (this machine's) would repeat in every worker.
      AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
      ...o.env,
    };
    Object.assign(process.env, env);
    applyLogLevel();
    resetConfig();
    resetHosts();

    const ssm = await startSsmEndpoint({
      instanceIds: [hostId],
      invisibleMs: o.ssmInvisibleMs ?? 0,
      env: { ...process.env },
      credentials,
      // As the host's SSM agent is configured (host user data); tests may set the agent's default (5).
      commandWorkersLimit: o.ssmCommandWorkers ?? ssmCommandWorkersFor(o.slots ?? 16),
    });
    cleanups.push(() => ssm.close());
    process.env.AWS_ENDPOINT_URL_SSM = env.AWS_ENDPOINT_URL_SSM = ssm.url;

    await createTables(
      dynamodb.client,
      tables.map((def) => ({ def, name: env[def.envVar]! })),
    );
    const { key: apiKey } = await createApiKey({ tenantId, key: o.apiKey, description: 'local stack key' });

    // The host daemon: registers this machine as a host, heartbeats, reconciles.
    let daemon: ChildProcess | null = null;
    const startDaemon = () => {
      daemon = spawn(process.execPath, [join(repoRoot, 'dist', 'host-agent-daemon.mjs')], {
        env: { ...process.env, ...env, SANDBOX_TIMINGS_ROLE: 'host' },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      const child = daemon;
      // Its lines as a host's would reach CloudWatch Logs: passed on, and its metrics read.
      child.stdout?.on('data', telemetry.lines('host-daemon', 'stdout'));
      child.stderr?.on('data', telemetry.lines('host-daemon', 'stderr'));
      child.on('exit', () => {
        if (daemon === child) daemon = null;
      });
    };
    const stopDaemon = async () => {
      const child = daemon;
      if (!child || child.exitCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGKILL');
      await exited;
      daemon = null;
    };
    o.signal?.throwIfAborted();
    startDaemon();
    cleanups.push(stopDaemon);
    await waitForHost(hostId, o.signal);

    const functionSettings = localFunctionSettings();
    const api = await startLocalApi({
      port,
      functions: bundledFunctions({
        timeoutSeconds: o.functionTimeoutSeconds ?? functionSettings.timeoutSeconds,
        memoryMb: functionSettings.memoryMb,
        env: { ...process.env, ...env, SANDBOX_TIMINGS_ROLE: 'handler' },
        output: (name, stream) => telemetry.lines(name, stream),
      }),
      ...(o.integrationTimeoutSeconds !== undefined ? { integrationTimeoutSeconds: o.integrationTimeoutSeconds } : {}),
      extraHosts: [gateway],
      authorizerCacheSeconds: o.authorizerCacheSeconds ?? Number(process.env.AUTHORIZER_CACHE_SECONDS ?? 300),
      rateLimit: o.rateLimit ?? Number(process.env.TENANT_RATE_LIMIT ?? 50),
      burstLimit: o.burstLimit ?? Number(process.env.TENANT_BURST_LIMIT ?? 100),
    });
    cleanups.push(() => api.close());

    if (o.stateFile) {
      const stateFile = o.stateFile;
      const state: LocalStackState = {
        pid: process.pid,
        url: api.url,
        region: env.AWS_REGION!,
        hostId,
        tenantId,
        dynamodbEndpoint: dynamodb.endpoint,
        s3Endpoint: s3.url,
        ssmEndpoint: ssm.url,
        credentials,
        tables: Object.fromEntries(tables.map((t) => [t.envVar, env[t.envVar]!])),
        startedAt: new Date().toISOString(),
      };
      mkdirSync(dirname(stateFile), { recursive: true, mode: 0o700 });
      // Written whole then renamed: a reader never sees half a file.
      writeFileSync(`${stateFile}.tmp`, JSON.stringify(state, null, 2) + '\n', { mode: 0o600 });
      renameSync(`${stateFile}.tmp`, stateFile);
      cleanups.push(() => rmSync(stateFile, { force: true }));
    }

    let reaping: Promise<ReapReport> | undefined;
    // As the reaper function runs: the run, then its report and the fleet's capacity as metrics.
    const runReaper = () =>
      (reaping ??= reap()
        .then(async (report) => {
          await reportReaperRun(report);
          return report;
        })
        .finally(() => (reaping = undefined)));
    const interval = o.reaperIntervalMs ?? 5000;
    if (interval > 0) {
      const timer = setInterval(() => {
        runReaper().catch((err) => logger.error('local reaper run failed', { err }));
      }, interval);
      timer.unref();
      cleanups.push(() => clearInterval(timer));
    }
    // Runs first on close: remove every container and mount this stack's host made.
    cleanups.push(() => removeHostContainers(hostId, stateDir));

    return {
      url: api.url,
      apiKey,
      tenantId,
      hostId,
      sandboxApiUrl,
      stateDir,
      dynamodb,
      s3,
      ssm,
      api,
      events,
      telemetry,
      env,
      runReaper,
      daemon: () => daemon,
      stopDaemon,
      startDaemon,
      close: closeAll,
    };
  } catch (err) {
    await closeAll();
    throw err;
  }
}

/** The dev environment's per-host settings in cdk.json that the local host takes too. */
export function localHostSettings(): { warmContainers: number } {
  const cdk = JSON.parse(readFileSync(join(repoRoot, 'cdk.json'), 'utf8')) as {
    context: { environments: { dev: { hosts: { warmContainersPerHost: number } } } };
  };
  return { warmContainers: cdk.context.environments.dev.hosts.warmContainersPerHost };
}

/**
 * The API functions' timeout and memory: the local stack runs them as the dev
 * environment in cdk.json deploys them.
 */
export function localFunctionSettings(): { timeoutSeconds: number; memoryMb: number } {
  const cdk = JSON.parse(readFileSync(join(repoRoot, 'cdk.json'), 'utf8')) as {
    context: { environments: { dev: { handlers: { apiTimeoutSeconds: number; memoryMb: number } } } };
  };
  const h = cdk.context.environments.dev.handlers;
  return { timeoutSeconds: h.apiTimeoutSeconds, memoryMb: h.memoryMb };
}

async function waitForHost(hostId: string, signal?: AbortSignal): Promise<void> {
  const { getHost } = await import('../../lambdas/shared/host-store');
  const started = Date.now();
  while (Date.now() - started < 30_000) {
    signal?.throwIfAborted();
    const host = await getHost(hostId);
    if (host?.status === 'active') return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`the host daemon did not register host ${hostId} within 30 s`);
}

/** Removes the host's state directory, but never recursively through a mount that is still there (a cold tier's S3 objects). */
function removeStateDir(stateDir: string): void {
  const mounted = readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[1] ?? '')
    .filter((m) => m === stateDir || m.startsWith(stateDir + '/'));
  if (mounted.length > 0) throw new Error(`${stateDir} still has mounts (${mounted.join(', ')}); not removing it: unmount them and remove it by hand`);
  rmSync(stateDir, { recursive: true, force: true });
}

async function removeHostContainers(hostId: string, stateDir: string): Promise<void> {
  const { removeContainersOfHost } = await import('./sandbox-network');
  await removeContainersOfHost(hostId, stateDir);
}
