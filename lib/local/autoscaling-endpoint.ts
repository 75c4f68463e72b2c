/**
 * A stand-in for EC2 Auto Scaling, which cannot run here: one group of local
 * hosts behind Auto Scaling's own wire protocol (AWS Query: form-encoded POST,
 * XML answers), so the project's code calls it through the real
 * `@aws-sdk/client-auto-scaling` client with only the endpoint changed
 * (AWS_ENDPOINT_URL_AUTO_SCALING), SigV4-signed with the stack's credentials.
 *
 * What it models, as Auto Scaling documents it: a desired capacity between
 * min and max that it converges to by launching and terminating instances
 * (here: local hosts, through `launch` and `terminate`); lifecycle hooks from
 * the group's specification on launch (Pending:Wait until the instance
 * completes the action or the hook times out: ABANDON) and on termination
 * (Terminating:Wait, an EventBridge event for the drain consumer, extended by
 * heartbeats, CONTINUE by default); scale-in protection (protected instances
 * are never picked for scale-in); SetInstanceHealth (an Unhealthy instance is
 * terminated and replaced); TerminateInstanceInAutoScalingGroup; and the
 * errors its callers see ("No active Lifecycle Action found ...").
 *
 * Operations: DescribeAutoScalingGroups, SetDesiredCapacity,
 * SetInstanceProtection, SetInstanceHealth, CompleteLifecycleAction,
 * RecordLifecycleActionHeartbeat, TerminateInstanceInAutoScalingGroup.
 */
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { logger } from '../../lambdas/shared/logger';
import { admitSigned, type LocalCredentials, type SigningPolicy } from './sigv4';

type LifecycleState = 'Pending' | 'Pending:Wait' | 'InService' | 'Terminating' | 'Terminating:Wait' | 'Terminated';
type LifecycleResult = 'CONTINUE' | 'ABANDON';

export interface HookSpecification {
  name: string;
  heartbeatTimeoutSeconds: number;
  defaultResult: LifecycleResult;
}

/** What EventBridge carries from Auto Scaling (and EC2) to the drain consumer, in AWS's shape. */
interface FleetEvent {
  version: '0';
  id: string;
  source: 'aws.autoscaling' | 'aws.ec2';
  'detail-type': string;
  account: string;
  region: string;
  time: string;
  resources: string[];
  detail: Record<string, unknown>;
}

export interface AutoScalingEndpointOptions {
  credentials: LocalCredentials;
  groupName: string;
  minSize: number;
  maxSize: number;
  desiredCapacity: number;
  launchHook?: HookSpecification;
  terminateHook?: HookSpecification;
  /** Starts the instance `instanceId` (a local host); resolves once it runs. The launch hook then waits for it. */
  launch(instanceId: string): Promise<void>;
  /** The instance is gone (terminated). */
  terminate(instanceId: string): Promise<void>;
  /** EventBridge delivery of lifecycle and Spot events to their consumer. */
  onEvent(event: FleetEvent): Promise<void>;
  /** A new instance id. */
  newInstanceId(): string;
  region?: string;
}

interface Instance {
  id: string;
  state: LifecycleState;
  health: 'Healthy' | 'Unhealthy';
  protectedFromScaleIn: boolean;
  launchedAt: number;
  /** The lifecycle action waiting now, if any. */
  action?: { hook: HookSpecification; token: string; timer: NodeJS.Timeout; resolve: (r: LifecycleResult) => void; heartbeats: number };
  /** Decrement desired when this termination finishes (scale-in already counted it). */
}

interface AutoScalingCall {
  action: string;
  params: Record<string, string>;
  at: number;
  error?: string;
}

export interface AutoScalingEndpoint {
  url: string;
  /** Every call answered, in order (tests read what the code asked for). */
  calls: AutoScalingCall[];
  /** The group as Auto Scaling would describe it now. */
  describe(): { desired: number; min: number; max: number; instances: { id: string; state: LifecycleState; health: string; protectedFromScaleIn: boolean }[] };
  /** A Spot interruption: the two-minute warning on EventBridge now, the instance gone `noticeSeconds` later. */
  spotInterruption(instanceId: string, noticeSeconds: number): Promise<void>;
  /** Resolves once no instance is launching or terminating and the group holds `desired` in service. */
  settled(timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

const namespace = 'http://autoscaling.amazonaws.com/doc/2011-01-01/';

class QueryError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly status = 400,
  ) {
    super(message);
  }
}

function xml(s: string | number | boolean): string {
  return String(s).replace(/[<>&'"]/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', "'": '&apos;', '"': '&quot;' })[c]!);
}

export async function startAutoScalingEndpoint(o: AutoScalingEndpointOptions): Promise<AutoScalingEndpoint> {
  const signing: SigningPolicy = { credentials: o.credentials, service: 'autoscaling', protocol: 'xml', maxBodyBytes: 64 * 1024 };
  const region = o.region ?? 'us-east-1';
  const instances = new Map<string, Instance>();
  const calls: AutoScalingCall[] = [];
  let desired = o.desiredCapacity;
  let closed = false;
  const work = new Set<Promise<unknown>>();
  let launchFailures = 0;

  const track = <T>(p: Promise<T>) => {
    work.add(p);
    void p.finally(() => work.delete(p)).catch(() => undefined);
    return p;
  };
  const live = () => [...instances.values()].filter((i) => i.state !== 'Terminated' && !i.state.startsWith('Terminating'));

  /** Waits for the instance to complete the hook's action (or its heartbeat timeout: the default result). */
  function waitForAction(instance: Instance, hook: HookSpecification, state: LifecycleState): Promise<LifecycleResult> {
    instance.state = state;
    return new Promise<LifecycleResult>((resolve) => {
      const token = randomUUID();
      const arm = () => setTimeout(() => finish(hook.defaultResult), hook.heartbeatTimeoutSeconds * 1000);
      const finish = (result: LifecycleResult) => {
        if (!instance.action || instance.action.token !== token) return;
        clearTimeout(instance.action.timer);
        instance.action = undefined;
        resolve(result);
      };
      instance.action = { hook, token, timer: arm(), resolve: finish, heartbeats: 0 };
      if (state === 'Terminating:Wait') {
        void o
          .onEvent({
            version: '0',
            id: randomUUID(),
            source: 'aws.autoscaling',
            'detail-type': 'EC2 Instance-terminate Lifecycle Action',
            account: '000000000000',
            region,
            time: new Date().toISOString(),
            resources: [`arn:aws:autoscaling:${region}:000000000000:autoScalingGroup:local:autoScalingGroupName/${o.groupName}`],
            detail: {
              LifecycleActionToken: token,
              AutoScalingGroupName: o.groupName,
              LifecycleHookName: hook.name,
              EC2InstanceId: instance.id,
              LifecycleTransition: 'autoscaling:EC2_INSTANCE_TERMINATING',
            },
          })
          .catch((err) =>
            logger.error('local Auto Scaling: the lifecycle event consumer failed (the hook times out to its default)', { instanceId: instance.id, err }),
          );
      }
    });
  }

  async function launchOne(): Promise<void> {
    const instance: Instance = { id: o.newInstanceId(), state: 'Pending', health: 'Healthy', protectedFromScaleIn: false, launchedAt: Date.now() };
    instances.set(instance.id, instance);
    try {
      await o.launch(instance.id);
    } catch (err) {
      launchFailures++;
      logger.error('local Auto Scaling: launch failed; the instance is terminated', { instanceId: instance.id, err });
      await finishTermination(instance);
      return;
    }
    const result = o.launchHook ? await waitForAction(instance, o.launchHook, 'Pending:Wait') : 'CONTINUE';
    if (closed) return;
    if (result === 'ABANDON') {
      logger.warn('local Auto Scaling: launch lifecycle action ABANDON; terminating the instance', { instanceId: instance.id });
      await finishTermination(instance);
      return;
    }
    instance.state = 'InService';
  }

  async function terminateOne(instance: Instance): Promise<void> {
    instance.state = 'Terminating';
    if (o.terminateHook) await waitForAction(instance, o.terminateHook, 'Terminating:Wait');
    await finishTermination(instance);
  }

  async function finishTermination(instance: Instance): Promise<void> {
    instance.state = 'Terminating';
    try {
      await o.terminate(instance.id);
    } catch (err) {
      logger.error('local Auto Scaling: terminate failed', { instanceId: instance.id, err });
    }
    instance.state = 'Terminated';
    instances.delete(instance.id);
    converge();
  }

  /** Launches or terminates toward the desired capacity; unhealthy instances are replaced. */
  function converge(): void {
    if (closed) return;
    for (const i of live()) if (i.health === 'Unhealthy' && i.state === 'InService') void track(terminateOne(i));
    const running = live();
    if (running.length < desired) {
      // A failing launch is retried, but not in a tight loop.
      const delay = Math.min(10_000, launchFailures * 1000);
      for (let n = running.length; n < desired; n++) {
        if (delay === 0) void track(launchOne());
        else void track(new Promise((r) => setTimeout(r, delay)).then(() => (live().length < desired ? launchOne() : undefined)));
      }
    } else if (running.length > desired) {
      // Scale-in: the oldest unprotected instances in service; protected ones are never picked.
      const candidates = running.filter((i) => i.state === 'InService' && !i.protectedFromScaleIn).sort((a, b) => a.launchedAt - b.launchedAt);
      for (const victim of candidates.slice(0, running.length - desired)) void track(terminateOne(victim));
    }
  }

  function instanceOf(id: string | undefined): Instance {
    const i = id ? instances.get(id) : undefined;
    if (!i || i.state === 'Terminated')
      throw new QueryError(
        'ValidationError',
        `Instance Id not found - No instance(s) found with Instance Id ${id ?? '(none)'} in Auto Scaling group ${o.groupName}`,
      );
    return i;
  }

  function checkGroup(p: Record<string, string>): void {
    if (p.AutoScalingGroupName !== o.groupName)
      throw new QueryError('ValidationError', `AutoScalingGroup name not found - no such group: ${p.AutoScalingGroupName ?? '(none)'}`);
  }

  function pendingAction(p: Record<string, string>): Instance {
    checkGroup(p);
    const i = p.InstanceId ? instances.get(p.InstanceId) : [...instances.values()].find((x) => x.action?.token === p.LifecycleActionToken);
    if (!i?.action || i.action.hook.name !== p.LifecycleHookName || (p.LifecycleActionToken && i.action.token !== p.LifecycleActionToken)) {
      throw new QueryError('ValidationError', `No active Lifecycle Action found with instance ID ${p.InstanceId ?? p.LifecycleActionToken ?? '(none)'}`);
    }
    return i;
  }

  const operations: Record<string, (p: Record<string, string>) => string> = {
    DescribeAutoScalingGroups(p) {
      const names = Object.entries(p)
        .filter(([k]) => k.startsWith('AutoScalingGroupNames.member.'))
        .map(([, v]) => v);
      if (names.length > 0 && !names.includes(o.groupName)) return '<AutoScalingGroups/>';
      const members = [...instances.values()]
        .filter((i) => i.state !== 'Terminated')
        .map(
          (i) =>
            `<member><InstanceId>${xml(i.id)}</InstanceId><InstanceType>local</InstanceType><AvailabilityZone>${region}a</AvailabilityZone>` +
            `<LifecycleState>${xml(i.state)}</LifecycleState><HealthStatus>${i.health}</HealthStatus><ProtectedFromScaleIn>${i.protectedFromScaleIn}</ProtectedFromScaleIn></member>`,
        )
        .join('');
      return (
        `<AutoScalingGroups><member><AutoScalingGroupName>${xml(o.groupName)}</AutoScalingGroupName>` +
        `<AutoScalingGroupARN>arn:aws:autoscaling:${region}:000000000000:autoScalingGroup:local:autoScalingGroupName/${xml(o.groupName)}</AutoScalingGroupARN>` +
        `<MinSize>${o.minSize}</MinSize><MaxSize>${o.maxSize}</MaxSize><DesiredCapacity>${desired}</DesiredCapacity><DefaultCooldown>300</DefaultCooldown>` +
        `<AvailabilityZones><member>${region}a</member></AvailabilityZones><HealthCheckType>EC2</HealthCheckType><CreatedTime>2026-01-01T00:00:00Z</CreatedTime>` +
        `<Instances>${members}</Instances></member></AutoScalingGroups>`
      );
    },
    SetDesiredCapacity(p) {
      checkGroup(p);
      const n = Number(p.DesiredCapacity);
      if (!Number.isInteger(n)) throw new QueryError('ValidationError', 'DesiredCapacity must be a whole number');
      if (n > o.maxSize) throw new QueryError('ValidationError', `New SetDesiredCapacity value ${n} is above max value ${o.maxSize} for the AutoScalingGroup.`);
      if (n < o.minSize) throw new QueryError('ValidationError', `New SetDesiredCapacity value ${n} is below min value ${o.minSize} for the AutoScalingGroup.`);
      desired = n;
      converge();
      return '';
    },
    SetInstanceProtection(p) {
      checkGroup(p);
      const ids = Object.entries(p)
        .filter(([k]) => k.startsWith('InstanceIds.member.'))
        .map(([, v]) => v);
      const targets = ids.map((id) => {
        const i = instances.get(id);
        if (!i || i.state === 'Terminated') throw new QueryError('ValidationError', `The instance ${id} is not part of Auto Scaling group ${o.groupName}.`);
        return i;
      });
      for (const i of targets) i.protectedFromScaleIn = p.ProtectedFromScaleIn === 'true';
      return '';
    },
    SetInstanceHealth(p) {
      const i = instanceOf(p.InstanceId);
      if (p.HealthStatus !== 'Healthy' && p.HealthStatus !== 'Unhealthy') throw new QueryError('ValidationError', 'HealthStatus must be Healthy or Unhealthy');
      i.health = p.HealthStatus;
      converge();
      return '';
    },
    CompleteLifecycleAction(p) {
      const i = pendingAction(p);
      const result = p.LifecycleActionResult;
      if (result !== 'CONTINUE' && result !== 'ABANDON') throw new QueryError('ValidationError', 'LifecycleActionResult must be CONTINUE or ABANDON');
      i.action!.resolve(result);
      return '';
    },
    RecordLifecycleActionHeartbeat(p) {
      const i = pendingAction(p);
      const a = i.action!;
      clearTimeout(a.timer);
      a.heartbeats++;
      a.timer = setTimeout(() => a.resolve(a.hook.defaultResult), a.hook.heartbeatTimeoutSeconds * 1000);
      return '';
    },
    TerminateInstanceInAutoScalingGroup(p) {
      const i = instanceOf(p.InstanceId);
      if (p.ShouldDecrementDesiredCapacity === 'true') desired = Math.max(o.minSize, desired - 1);
      if (i.state === 'InService' || i.state === 'Pending' || i.state === 'Pending:Wait') void track(terminateOne(i));
      return `<Activity><ActivityId>${randomUUID()}</ActivityId><AutoScalingGroupName>${xml(o.groupName)}</AutoScalingGroupName><StatusCode>InProgress</StatusCode></Activity>`;
    },
  };

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (!(await admitSigned(req, res, signing))) return;
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const params = Object.fromEntries(new URLSearchParams(Buffer.concat(chunks).toString('utf8')));
    const action = params.Action ?? '';
    const requestId = randomUUID();
    const call: AutoScalingCall = { action, params, at: Date.now() };
    calls.push(call);
    try {
      const op = operations[action];
      if (!op) throw new QueryError('InvalidAction', `The action ${action} is not valid for this web service (local Auto Scaling stand-in).`);
      const result = op(params);
      const body =
        `<?xml version="1.0"?>\n<${action}Response xmlns="${namespace}">` +
        (result ? `<${action}Result>${result}</${action}Result>` : '') +
        `<ResponseMetadata><RequestId>${requestId}</RequestId></ResponseMetadata></${action}Response>`;
      res.writeHead(200, { 'content-type': 'text/xml', 'content-length': Buffer.byteLength(body), 'x-amzn-requestid': requestId }).end(body);
    } catch (err) {
      const e = err instanceof QueryError ? err : new QueryError('InternalFailure', (err as Error).message, 500);
      call.error = `${e.code}: ${e.message}`;
      const body = `<?xml version="1.0"?>\n<ErrorResponse xmlns="${namespace}"><Error><Type>Sender</Type><Code>${xml(e.code)}</Code><Message>${xml(e.message)}</Message></Error><RequestId>${requestId}</RequestId></ErrorResponse>`;
      res.writeHead(e.status, { 'content-type': 'text/xml', 'content-length': Buffer.byteLength(body), 'x-amzn-requestid': requestId }).end(body);
    }
  }

  const server = createServer((req, res) => void handle(req, res).catch(() => res.destroy()));
  server.keepAliveTimeout = 65_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  converge();

  return {
    url: `http://127.0.0.1:${port}`,
    calls,
    describe: () => ({
      desired,
      min: o.minSize,
      max: o.maxSize,
      instances: [...instances.values()].map((i) => ({ id: i.id, state: i.state, health: i.health, protectedFromScaleIn: i.protectedFromScaleIn })),
    }),
    async spotInterruption(instanceId, noticeSeconds) {
      const i = instanceOf(instanceId);
      await o.onEvent({
        version: '0',
        id: randomUUID(),
        source: 'aws.ec2',
        'detail-type': 'EC2 Spot Instance Interruption Warning',
        account: '000000000000',
        region,
        time: new Date().toISOString(),
        resources: [`arn:aws:ec2:${region}a:instance/${instanceId}`],
        detail: { 'instance-id': instanceId, 'instance-action': 'terminate' },
      });
      // EC2 takes the instance back at the end of the notice, whatever the group's hooks say; the group then replaces it.
      void track(
        new Promise((r) => setTimeout(r, noticeSeconds * 1000)).then(async () => {
          if (i.state === 'Terminated') return;
          if (i.action) {
            clearTimeout(i.action.timer);
            i.action = undefined;
          }
          await finishTermination(i);
        }),
      );
    },
    async settled(timeoutMs = 60_000) {
      const until = Date.now() + timeoutMs;
      for (;;) {
        const all = [...instances.values()];
        if (all.length === desired && all.every((i) => i.state === 'InService')) return;
        if (Date.now() > until)
          throw new Error(`local Auto Scaling: not settled after ${timeoutMs} ms: desired ${desired}, ${all.map((i) => `${i.id}=${i.state}`).join(', ')}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    },
    async close() {
      closed = true;
      for (const i of instances.values()) {
        if (i.action) clearTimeout(i.action.timer);
        i.action?.resolve('ABANDON');
      }
      await Promise.allSettled([...work]);
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  };
}
