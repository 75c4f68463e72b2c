/**
 * The local stack: the whole control plane on one machine, on real engines.
 * DynamoDB Local, s3rver, the local SSM endpoint running commands on this
 * machine (for each registered host, with its own environment), the local API
 * Gateway calling the same handler modules, one or more hosts (local-host.ts:
 * a supervised host daemon each, against the real Docker engine), and the
 * reaper on a timer like its schedule.
 */
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
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
import { ssmCommandWorkersFor } from '../../contract/host-protocol';
import { localCgroupRoot } from './host-supervisor';
import { repoRoot } from '../paths';
import { startAutoScalingEndpoint, type AutoScalingEndpoint, type HookSpecification } from './autoscaling-endpoint';
import { handler as fleetEventsHandler } from '../../lambdas/fleet-events';
import { localHostId, removeCgroupTreeWhenEmpty, startLocalHost, type LocalHost, type LocalHostContext, type LocalHostOptions } from './local-host';

export interface LocalStackOptions {
  /** API port on 127.0.0.1; 0 picks a free one. @default 8000 */
  port?: number;
  /** Accepted API key; generated when absent. */
  apiKey?: string;
  /** Tenant the key belongs to. @default 'default' */
  tenantId?: string;
  /** Hosts started with the stack (more join with addHost). @default 1 (0 with autoScaling: the group launches them) */
  hosts?: number;
  /**
   * An Auto Scaling group of local hosts: EC2 Auto Scaling cannot run here, so
   * a stand-in (autoscaling-endpoint.ts) answers its API and launches and
   * terminates local hosts; the control plane calls it as it calls AWS.
   * @default none (fixed hosts; creates with no room answer 503)
   */
  autoScaling?: { minSize: number; maxSize: number; desiredCapacity: number; terminateHook?: HookSpecification };
  /** Sandbox slots of each host started with the stack. @default 16 */
  slots?: number;
  /**
   * Warm pool containers the local host keeps ready (WARM_CONTAINERS_PER_HOST). `npm start` and
   * `npm run bench` use the dev environment's `hosts.warmContainersPerHost` (localHostSettings).
   * @default WARM_CONTAINERS_PER_HOST or 0
   */
  warmContainers?: number;
  /** What each host started with the stack advertises (HOST_ALLOCATABLE_*). @default the machine's */
  allocatable?: LocalHostOptions['allocatable'];
  /** Reaper period in ms; 0 turns the timer off (tests call runReaper). @default 5000 */
  reaperIntervalMs?: number;
  /** Host daemon heartbeat/reconcile period. @default 5000 */
  hostHeartbeatMs?: number;
  /** Extra environment for the handlers and the hosts (limits etc.). */
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
  /** The first host's id (most tests use one host). */
  readonly hostId: string;
  /** URL the first host's sandboxes use to reach the API (their sandbox network's gateway). */
  readonly sandboxApiUrl: string;
  /** The first host's state directory. */
  readonly stateDir: string;
  dynamodb: DynamoDbLocal;
  s3: S3Endpoint;
  ssm: SsmEndpoint;
  api: LocalApi;
  /** The environment's event bus: every sandbox.* and command.finished event, in order. */
  events: LocalEventBus;
  /** Metrics every part wrote (EMF lines of the handlers, the host daemon and the reaper), in order. */
  telemetry: LocalTelemetry;
  /** Environment the handlers run with, and the first host's. */
  env: Record<string, string>;
  runReaper(): Promise<ReapReport>;
  /** Every host running now, in the order they joined. */
  hosts(): LocalHost[];
  /** Starts one more host (another "instance"). */
  addHost(o?: LocalHostOptions): Promise<LocalHost>;
  /** Removes a host and everything it made (its containers, mounts, network, state). */
  removeHost(hostId: string): Promise<void>;
  /** The first host's daemon process (null once stopped, or between a crash and its restart). */
  daemon(): ChildProcess | null;
  stopDaemon(): Promise<void>;
  /**
   * What a deploy of a new sandbox image does: the image parameter the running hosts read, and the functions'
   * SANDBOX_IMAGE (fresh execution environments). The hosts' own SANDBOX_IMAGE stays what they started with.
   */
  deployImage(ref: string): Promise<void>;
  startDaemon(): void;
  /** The Auto Scaling stand-in (with the autoScaling option). */
  autoScaling?: AutoScalingEndpoint;
  close(): Promise<void>;
}

/** The local twin of /ephemeral-sandbox/<env>/sandbox-image (lib/constructs/host-fleet.ts). */
const localSandboxImageParameter = '/ephemeral-sandbox/local/sandbox-image';

export async function startLocalStack(o: LocalStackOptions = {}): Promise<LocalStack> {
  const tenantId = o.tenantId ?? 'default';
  const port = o.port === 0 ? await freePort() : (o.port ?? 8000);
  const cleanups: (() => Promise<void> | void)[] = [];
  const closeAll = async () => {
    for (const c of cleanups.splice(0).reverse()) {
      try {
        await c();
      } catch (err) {
        logger.error('local stack: cleanup step failed', { err });
      }
    }
  };

  // One random pair per stack, for DynamoDB, S3 and SSM alike; it reaches the handlers, the
  // host daemons and s3fs through the environment and password files, never a command line.
  const credentials = generateLocalCredentials();
  try {
    const [dynamodb, s3, events] = await Promise.all([
      startDynamoDbLocal({ credentials }),
      startS3Endpoint({ buckets: ['ephemeral-sandbox-local'], credentials }),
      startLocalEventBus({ credentials }),
    ]);
    cleanups.push(
      () => dynamodb.close(),
      () => s3.close(),
      () => events.close(),
    );
    // What the parts print goes through here: EMF lines become metric records (printed at debug only).
    const telemetry = new LocalTelemetry({ printEmf: (process.env.LOG_LEVEL ?? '').toLowerCase() === 'debug' });
    setMetricSink((emf) => telemetry.add('stack', emf));
    cleanups.push(() => setMetricSink(undefined));
    // `npm start` with LOG_LEVEL=debug prints every event as it lands on the bus.
    const stopPrinting = events.onEvent((e) => logger.debug('event', { 'detail-type': e.detailType, source: e.source, detail: e.detail }));
    cleanups.push(stopPrinting);
    o.signal?.throwIfAborted();

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
      // Each host tells its own sandboxes where the API is (its network's gateway); this is the API itself.
      SANDBOX_API_URL: `http://127.0.0.1:${port}`,
      WARM_CONTAINERS_PER_HOST: String(o.warmContainers ?? process.env.WARM_CONTAINERS_PER_HOST ?? 0),
      COLD_MOUNT_DRIVER: process.env.COLD_MOUNT_DRIVER ?? 's3fs',
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
      instanceIds: [],
      invisibleMs: o.ssmInvisibleMs ?? 0,
      env: { ...process.env },
      credentials,
      // As the host's SSM agent is configured (host user data); tests may set the agent's default (5).
      commandWorkersLimit: o.ssmCommandWorkers ?? ssmCommandWorkersFor(o.slots ?? 16),
    });
    cleanups.push(() => ssm.close());
    process.env.AWS_ENDPOINT_URL_SSM = env.AWS_ENDPOINT_URL_SSM = ssm.url;
    // The fleet's current image, where running hosts read it at each image pass (CDK writes it on AWS: host-fleet.ts).
    process.env.SANDBOX_IMAGE_PARAMETER = env.SANDBOX_IMAGE_PARAMETER = localSandboxImageParameter;
    ssm.putParameter(localSandboxImageParameter, env.SANDBOX_IMAGE!);

    // The group's launches wait until the stack can start hosts (below).
    let hostsReady: (ctx: { add: (o: LocalHostOptions) => Promise<LocalHost>; remove: (hostId: string) => Promise<void> }) => void = () => undefined;
    const canStartHosts = new Promise<Parameters<typeof hostsReady>[0]>((r) => (hostsReady = r));
    let autoScaling: AutoScalingEndpoint | undefined;
    if (o.autoScaling) {
      const groupName = 'ephemeral-sandbox-local-hosts';
      autoScaling = await startAutoScalingEndpoint({
        credentials,
        groupName,
        ...o.autoScaling,
        ...(o.autoScaling.terminateHook ? { terminateHook: o.autoScaling.terminateHook } : {}),
        newInstanceId: localHostId,
        launch: async (hostId) =>
          void (await (await canStartHosts).add({ hostId, slots: o.slots ?? 16, ...(o.allocatable ? { allocatable: o.allocatable } : {}) })),
        // A terminated instance is gone at once: what it ran goes with it.
        terminate: async (hostId) => (await canStartHosts).remove(hostId),
        // EventBridge to the fleet-events function's handler (run here in the stack's process, as the reaper is).
        onEvent: async (event) => void (await fleetEventsHandler(event)),
      });
      const endpoint = autoScaling;
      cleanups.push(() => endpoint.close());
      Object.assign(env, {
        AUTO_SCALING_GROUP_NAME: groupName,
        AWS_ENDPOINT_URL_AUTO_SCALING: endpoint.url,
        ...(o.autoScaling.terminateHook ? { DRAIN_LIFECYCLE_HOOK: o.autoScaling.terminateHook.name } : {}),
      });
      Object.assign(process.env, env);
      resetConfig();
    }

    await createTables(
      dynamodb.client,
      tables.map((def) => ({ def, name: env[def.envVar]! })),
    );
    const { key: apiKey } = await createApiKey({ tenantId, key: o.apiKey, description: 'local stack key' });

    const functionSettings = localFunctionSettings();
    // Kept: a deploy of a new image changes SANDBOX_IMAGE in it and nothing else.
    let functionEnv: Record<string, string | undefined> = { ...process.env, ...env, SANDBOX_TIMINGS_ROLE: 'handler' };
    const api = await startLocalApi({
      port,
      functions: bundledFunctions({
        timeoutSeconds: o.functionTimeoutSeconds ?? functionSettings.timeoutSeconds,
        memoryMb: functionSettings.memoryMb,
        env: functionEnv,
        output: (name, stream) => telemetry.lines(name, stream),
      }),
      ...(o.integrationTimeoutSeconds !== undefined ? { integrationTimeoutSeconds: o.integrationTimeoutSeconds } : {}),
      authorizerCacheSeconds: o.authorizerCacheSeconds ?? Number(process.env.AUTHORIZER_CACHE_SECONDS ?? 300),
      rateLimit: o.rateLimit ?? Number(process.env.TENANT_RATE_LIMIT ?? 50),
      burstLimit: o.burstLimit ?? Number(process.env.TENANT_BURST_LIMIT ?? 100),
    });
    cleanups.push(() => api.close());

    // The hosts: each an "instance" with its own id, state, network and supervised daemon.
    const stackCgroup = join(localCgroupRoot(), `stack-${process.pid}-${randomBytes(4).toString('hex')}`);
    cleanups.push(() => removeCgroupTreeWhenEmpty(stackCgroup));
    const hosts: LocalHost[] = [];
    const hostContext: LocalHostContext = {
      repoRoot,
      baseEnv: env,
      ssm,
      apiPort: port,
      serveApiOn: async (address) => void (await api.serveOn(address)),
      cgroupDir: stackCgroup,
      heartbeatSeconds: (o.hostHeartbeatMs ?? 5000) / 1000,
      // Each daemon's lines as a host's would reach CloudWatch Logs: passed on, and its metrics read.
      daemonOutput: (child) => {
        child.stdout?.on('data', telemetry.lines('host-daemon', 'stdout'));
        child.stderr?.on('data', telemetry.lines('host-daemon', 'stderr'));
      },
      ...(o.signal ? { signal: o.signal } : {}),
    };
    // Hosts still starting (the Auto Scaling stand-in launches them while the stack runs): close waits for them.
    const starting = new Set<Promise<LocalHost>>();
    let closingHosts = false;
    const addHost = async (ho: LocalHostOptions = {}) => {
      if (closingHosts) throw new Error('the local stack is closing: no host starts now');
      const start = startLocalHost(hostContext, ho);
      starting.add(start);
      try {
        const host = await start;
        hosts.push(host);
        return host;
      } finally {
        starting.delete(start);
      }
    };
    const removeHost = async (hostId: string) => {
      const i = hosts.findIndex((h) => h.hostId === hostId);
      if (i < 0) return;
      const [host] = hosts.splice(i, 1);
      await host!.close();
    };
    // Runs first on close (pushed last): every host, with its containers and mounts; one still starting
    // (a launch the close came in the middle of) is waited for and closed with them, not left running.
    cleanups.push(async () => {
      closingHosts = true;
      await Promise.allSettled([...starting]);
      for (const h of hosts.splice(0).reverse()) await h.close();
    });
    hostsReady({ add: addHost, remove: removeHost });
    for (let i = 0; i < (o.hosts ?? (o.autoScaling ? 0 : 1)); i++) {
      o.signal?.throwIfAborted();
      await addHost({ slots: o.slots ?? 16, ...(o.allocatable ? { allocatable: o.allocatable } : {}) });
    }
    const first = () => {
      const h = hosts[0];
      if (!h) throw new Error('the local stack has no host (it rests at zero)');
      return h;
    };
    // The test process calls host-agent code directly too: it sees the first host's settings.
    if (hosts[0]) Object.assign(env, hosts[0].env);
    Object.assign(process.env, env);

    if (o.stateFile) {
      const stateFile = o.stateFile;
      const state: LocalStackState = {
        pid: process.pid,
        url: api.url,
        region: env.AWS_REGION!,
        hostId: hosts[0]?.hostId ?? '',
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

    return {
      url: api.url,
      apiKey,
      tenantId,
      get hostId() {
        return first().hostId;
      },
      get sandboxApiUrl() {
        return first().sandboxApiUrl;
      },
      get stateDir() {
        return first().stateDir;
      },
      dynamodb,
      s3,
      ssm,
      api,
      events,
      telemetry,
      env,
      runReaper,
      hosts: () => [...hosts],
      addHost,
      removeHost,
      ...(autoScaling ? { autoScaling } : {}),
      daemon: () => first().daemon(),
      stopDaemon: () => first().stopDaemon(),
      startDaemon: () => first().startDaemon(),
      deployImage: async (ref) => {
        ssm.putParameter(localSandboxImageParameter, ref);
        env.SANDBOX_IMAGE = process.env.SANDBOX_IMAGE = ref;
        resetConfig();
        functionEnv = { ...functionEnv, SANDBOX_IMAGE: ref };
        await api.functions.updateEnvironment(functionEnv);
      },
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
function localFunctionSettings(): { timeoutSeconds: number; memoryMb: number } {
  const cdk = JSON.parse(readFileSync(join(repoRoot, 'cdk.json'), 'utf8')) as {
    context: { environments: { dev: { handlers: { apiTimeoutSeconds: number; memoryMb: number } } } };
  };
  const h = cdk.context.environments.dev.handlers;
  return { timeoutSeconds: h.apiTimeoutSeconds, memoryMb: h.memoryMb };
}
