/**
 * `npm run simulate:fleet`: replays a day of synthetic traffic (a diurnal
 * curve with bursts; creates, exec sessions, ends) through the project's own
 * placement and scaling decisions (lambdas/shared/placement.ts,
 * lambdas/shared/fleet-scaling.ts) with simulated EC2 boot and warm-pool
 * times, for the dev and prod settings of cdk.json, and prints create wait
 * p50/p95/p99, host-hours, cost and utilization.
 *
 * A discrete-event simulation in virtual time with a seeded PRNG: the same
 * seed prints the same figures, and a day takes well under a second.
 *
 *   npm run simulate:fleet -- [--seed 42] [--hours 24] [--env dev,prod] [--strategy spread|binpack] [--headroom 20]
 *
 * (--headroom replaces every environment's hosts.headroomPercent: what-if only.)
 *
 * What it models, and what it leaves out, is printed with the figures
 * (ASSUMPTIONS below): the numbers are only as good as those.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import {
  allowsScaleIn,
  capacityMetric,
  desiredForWaiting,
  hostShapeOf,
  hostsForHeadroom,
  hostsNeeded,
  maxHeadroomPercent,
  utilizationWithoutOneHost,
  wantsScaleInProtection,
  type FleetHost,
} from '../lambdas/shared/fleet-scaling';
import {
  addResources,
  allocatableResources,
  dominantShare,
  fits,
  freeOf,
  placementStrategies,
  rankHosts,
  resourcesOf,
  zeroResources,
  type PlacementStrategy,
  type Resources,
} from '../lambdas/shared/placement';
import { hostResourceDefaults } from '../host-agent/src/host-resources';
import { capacityWaitSeconds } from '../lib/constructs/control-plane-functions';
import { fleetCapacityRateMinutes } from '../lib/constructs/fleet-wiring';
import { resolveEnvironment, type DeploymentEnvironment } from '../lib/environment';
import { repoRoot } from '../lib/paths';

// ---------------------------------------------------------------------------------------------
// Assumptions (printed with the figures).

/** Machine sizes of the instance types cdk.json names (AWS instance type pages). */
export const instanceSpecs: Record<string, { vcpus: number; memoryGiB: number; usdPerHour: number }> = {
  // On-demand Linux prices, us-east-1, from https://aws.amazon.com/ec2/pricing/on-demand/ (as published in 2024: check the page before relying on the cost).
  't4g.medium': { vcpus: 2, memoryGiB: 4, usdPerHour: 0.0336 },
  'm6g.medium': { vcpus: 1, memoryGiB: 4, usdPerHour: 0.0385 },
  'm7g.medium': { vcpus: 1, memoryGiB: 4, usdPerHour: 0.0408 },
  'm7g.xlarge': { vcpus: 4, memoryGiB: 16, usdPerHour: 0.1632 },
};
/** gp3 storage, us-east-1 (https://aws.amazon.com/ebs/pricing/): $0.08 per GB-month, 730 hours a month. */
const gp3UsdPerGiBHour = 0.08 / 730;
/** What the OS reports of an instance's memory (the kernel keeps the rest): roughly 95 % on Amazon Linux 2023. */
const reportedMemoryShare = 0.95;

export const timings = {
  /** EC2 launch to a booted instance (pending -> running, OS up): uniform in this range, seconds. */
  coldBootSeconds: [60, 90] as const,
  /** First-boot setup until the launch hook passes (image pull, daemon start, first heartbeat), seconds. */
  launchReadySeconds: [30, 60] as const,
  /** A stopped, pre-initialised warm-pool instance started and registered again, seconds. */
  warmPoolClaimSeconds: [20, 40] as const,
  /** A create on a host with room until ready: a claimed warm container, or a cold one (README "Control plane overhead"). */
  createWarmContainerSeconds: 0.4,
  createColdContainerSeconds: 0.6,
  /** A host refills a claimed warm container in the background. */
  warmContainerRefillSeconds: 4,
};

/** Synthetic traffic per environment: creates per minute at the daily peak and its trough, bursts of creates. */
export interface TrafficProfile {
  peakCreatesPerMinute: number;
  /** The rate at night as a share of the peak (the curve is a cosine, lowest 03:00 UTC, highest 15:00 UTC). */
  troughShare: number;
  /** Bursts a day (a CI run, a batch of agents), at random times between 08:00 and 20:00 UTC, each within 30 s. */
  burstsPerDay: number;
  burstSize: number;
  /** Median length of a sandbox's exec session (lognormal, sigma below); exec calls come every 10-60 s in it. */
  sessionMedianMinutes: number;
  sessionSigma: number;
  /** Share of callers that destroy their sandbox when done; the rest leave it to the idle timeout. */
  destroyShare: number;
  /** Share of creates of the default size, of twice it, and of the largest allowed (the rest). */
  defaultShare: number;
  doubleShare: number;
}

export const trafficProfiles: Record<string, TrafficProfile> = {
  // A few developers and CI: quiet, with test-suite bursts.
  dev: {
    peakCreatesPerMinute: 0.15,
    troughShare: 0.05,
    burstsPerDay: 2,
    burstSize: 4,
    sessionMedianMinutes: 8,
    sessionSigma: 1,
    destroyShare: 0.6,
    defaultShare: 0.8,
    doubleShare: 0.2,
  },
  // Agents in production: a working-day curve and bursts of batch jobs.
  prod: {
    peakCreatesPerMinute: 0.6,
    troughShare: 0.15,
    burstsPerDay: 4,
    burstSize: 12,
    sessionMedianMinutes: 12,
    sessionSigma: 1,
    destroyShare: 0.7,
    defaultShare: 0.75,
    doubleShare: 0.2,
  },
};

// ---------------------------------------------------------------------------------------------
// Seeded randomness.

/** mulberry32: a small, fast, seedable PRNG (same seed, same day). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const uniform = (r: () => number, [lo, hi]: readonly [number, number]) => lo + (hi - lo) * r();
const exponential = (r: () => number, mean: number) => -Math.log(1 - r()) * mean;
function normal(r: () => number): number {
  // Box-Muller.
  return Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
}

// ---------------------------------------------------------------------------------------------
// The model.

interface SimHost extends FleetHost {
  host_id: string;
  last_heartbeat_at: number;
  /** Warm containers of the default shape ready to claim. */
  warmContainers: number;
  sandboxes: Map<string, Resources>;
  launchedAt: number;
}

interface Instance {
  id: string;
  state: 'booting' | 'in_service' | 'terminated';
  launchedAt: number;
  endedAt?: number;
}

interface Create {
  id: string;
  requestedAt: number;
  request: Resources;
  /** Session length plus what follows it until the sandbox ends, seconds. */
  lifeSeconds: number;
  execCalls: number;
  isDefaultShape: boolean;
}

export interface SimulationOptions {
  environment: DeploymentEnvironment;
  traffic: TrafficProfile;
  seed: number;
  /** Virtual hours to replay, from midnight UTC. */
  hours: number;
  strategy?: PlacementStrategy;
}

export interface SimulationResult {
  environment: string;
  hostShape: Resources;
  creates: number;
  placedAtOnce: number;
  waitedForCapacity: number;
  failedNoCapacity: number;
  /** Creates still waiting when the replay ends (their wait was not over yet). */
  stillWaitingAtEnd: number;
  /** Seconds from a create's request until its sandbox is ready, of every create that got a host. */
  createWaits: number[];
  waitP50: number;
  waitP95: number;
  waitP99: number;
  execCalls: number;
  hostHours: number;
  peakHosts: number;
  launches: number;
  warmPoolLaunches: number;
  scaleIns: number;
  costUsd: number;
  /** Time-weighted share of in-service capacity allocated to sandboxes (scarcest resource), percent. */
  utilizationPercent: number;
  /** Minutes in which free capacity was below the headroom, and of them the ones where the group could still grow. */
  headroomShortMinutes: number;
  /** Broken invariants (overcommit, a protected host scaled in, headroom not asked for, a wait not ended): must be empty. */
  violations: string[];
}

/** The instance type hosts launch as (the launch template's: the first listed). */
export function hostResourcesOf(environment: DeploymentEnvironment): Resources {
  const h = environment.hosts;
  const type = h.instanceTypes[0]!;
  const spec = instanceSpecs[type];
  if (!spec) throw new Error(`simulate-fleet knows no size for ${type}: add it to instanceSpecs`);
  return allocatableResources(
    { cpus: spec.vcpus, memoryMb: Math.floor(spec.memoryGiB * 1024 * reportedMemoryShare), stateDiskMb: h.stateVolumeGiB * 1024 },
    { ...hostResourceDefaults, maxSandboxes: h.sandboxSlotsPerHost },
  );
}

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

/** A binary heap of events by time (ties in the order they were scheduled): the simulation's clock. */
class EventQueue<E> {
  private heap: { at: number; seq: number; event: E }[] = [];
  private seq = 0;
  push(at: number, event: E): void {
    const h = this.heap;
    h.push({ at, seq: this.seq++, event });
    let i = h.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.before(h[i]!, h[parent]!)) break;
      [h[i], h[parent]] = [h[parent]!, h[i]!];
      i = parent;
    }
  }
  pop(): { at: number; event: E } | undefined {
    const h = this.heap;
    const top = h[0];
    const last = h.pop();
    if (h.length > 0 && last) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && this.before(h[l]!, h[m]!)) m = l;
        if (r < h.length && this.before(h[r]!, h[m]!)) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m]!, h[i]!];
        i = m;
      }
    }
    return top;
  }
  private before(a: { at: number; seq: number }, b: { at: number; seq: number }): boolean {
    return a.at < b.at || (a.at === b.at && a.seq < b.seq);
  }
}

type SimEvent =
  | { kind: 'create'; create: Create }
  | { kind: 'end'; sandboxId: string; hostId: string }
  | { kind: 'wait_over'; sandboxId: string }
  | { kind: 'instance_ready'; instanceId: string }
  | { kind: 'warm_refilled' }
  | { kind: 'warm_container'; hostId: string }
  | { kind: 'tick' };

/** The synthetic day: create requests with their shapes and lives. */
export function syntheticTraffic(environment: DeploymentEnvironment, traffic: TrafficProfile, hours: number, random: () => number): Create[] {
  const l = environment.limits;
  const end = hours * 3600;
  const creates: Create[] = [];
  const shapeOf = () => {
    const x = random();
    if (x < traffic.defaultShare) return { cpu: l.defaultCpu, memory_mb: l.defaultMemoryMb };
    if (x < traffic.defaultShare + traffic.doubleShare)
      return { cpu: Math.min(l.maxCpu, 2 * l.defaultCpu), memory_mb: Math.min(l.maxMemoryMb, 2 * l.defaultMemoryMb) };
    return { cpu: l.maxCpu, memory_mb: Math.min(l.maxMemoryMb, 4 * l.defaultMemoryMb) };
  };
  const make = (at: number) => {
    const shape = shapeOf();
    const session = Math.min(l.maxTtlSeconds, traffic.sessionMedianMinutes * 60 * Math.exp(traffic.sessionSigma * normal(random)));
    const execCalls = Math.max(1, Math.round(session / uniform(random, [10, 60])));
    // Left to the idle timeout: the reaper (each minute) ends it after the timeout.
    const after = random() < traffic.destroyShare ? 0 : l.defaultIdleTimeoutSeconds + random() * 60;
    creates.push({
      id: `sbx-${String(creates.length).padStart(5, '0')}`,
      requestedAt: at,
      request: resourcesOf({ ...shape, disk_mb: l.defaultDiskMb }),
      lifeSeconds: Math.min(l.defaultTtlSeconds, session + after),
      execCalls,
      isDefaultShape: shape.cpu === l.defaultCpu && shape.memory_mb === l.defaultMemoryMb,
    });
  };
  // A non-homogeneous Poisson process by thinning: candidates at the peak rate, kept by the curve's share.
  const peakPerSecond = traffic.peakCreatesPerMinute / 60;
  for (let t = exponential(random, 1 / peakPerSecond); t < end; t += exponential(random, 1 / peakPerSecond)) {
    const hour = (t / 3600) % 24;
    const share = traffic.troughShare + (1 - traffic.troughShare) * (0.5 - 0.5 * Math.cos((2 * Math.PI * (hour - 3)) / 24));
    if (random() < share) make(t);
  }
  const days = Math.max(1, Math.ceil(hours / 24));
  for (let d = 0; d < days; d++) {
    for (let b = 0; b < traffic.burstsPerDay; b++) {
      const at = d * 86_400 + uniform(random, [8 * 3600, 20 * 3600]);
      if (at >= end) continue;
      for (let i = 0; i < traffic.burstSize; i++) make(at + random() * 30);
    }
  }
  return creates.sort((a, b) => a.requestedAt - b.requestedAt).map((c, i) => ({ ...c, id: `sbx-${String(i).padStart(5, '0')}` }));
}

/** Replays the traffic through the placement and scaling decisions; see the file's comment. */
export function simulate(o: SimulationOptions): SimulationResult {
  const e = o.environment;
  const h = e.hosts;
  const strategy = o.strategy ?? 'spread';
  const random = prng(o.seed);
  const shape = hostResourcesOf(e);
  const spec = instanceSpecs[h.instanceTypes[0]!]!;
  const hostUsdPerHour = spec.usdPerHour + (h.rootVolumeGiB + h.stateVolumeGiB) * gp3UsdPerGiBHour;
  const stoppedUsdPerHour = (h.rootVolumeGiB + h.stateVolumeGiB) * gp3UsdPerGiBHour;
  const end = o.hours * 3600;
  const defaultSandbox = resourcesOf({ cpu: e.limits.defaultCpu, memory_mb: e.limits.defaultMemoryMb, disk_mb: e.limits.defaultDiskMb });

  const queue = new EventQueue<SimEvent>();
  const hosts = new Map<string, SimHost>();
  const instances = new Map<string, Instance>();
  const waiting: Create[] = [];
  const violations: string[] = [];
  const createWaits: number[] = [];
  let desired = h.minHosts;
  let warmReady = h.warmPoolMinSize;
  let warmRefilling = 0;
  let launches = 0;
  let warmPoolLaunches = 0;
  let scaleIns = 0;
  let placedAtOnce = 0;
  let waited = 0;
  let failed = 0;
  let execCalls = 0;
  let peakHosts = 0;
  let nextInstance = 0;
  let allocatedShareSeconds = 0;
  let inServiceSeconds = 0;
  let headroomShortMinutes = 0;
  let stoppedHours = 0;
  let lastAccounting = 0;
  const readings: number[] = [];
  const evaluationPeriods = Math.ceil(h.scaleInAfterMinutes / fleetCapacityRateMinutes);

  const activeHosts = () => [...hosts.values()].filter((x) => x.status === 'active');
  const liveInstances = () => [...instances.values()].filter((i) => i.state !== 'terminated');
  const violate = (now: number, what: string) => violations.push(`t=${Math.round(now)}s: ${what}`);

  /** Time-weighted utilization and the warm pool's stopped hours up to `now`. */
  const account = (now: number) => {
    const dt = now - lastAccounting;
    if (dt <= 0) return;
    const active = activeHosts();
    if (active.length > 0) {
      const capacity = active.reduce((sum, x) => addResources(sum, x.capacity), zeroResources);
      const allocated = active.reduce((sum, x) => addResources(sum, x.allocated), zeroResources);
      allocatedShareSeconds += dominantShare(capacity, allocated) * active.length * dt;
      inServiceSeconds += active.length * dt;
    }
    stoppedHours += ((warmReady + warmRefilling) * dt) / 3600;
    lastAccounting = now;
  };

  const launch = (now: number) => {
    const id = `i-${String(nextInstance++).padStart(4, '0')}`;
    const fromWarm = warmReady > 0;
    let ready: number;
    if (fromWarm) {
      warmReady--;
      warmPoolLaunches++;
      ready = now + uniform(random, timings.warmPoolClaimSeconds);
      // The pool launches a replacement, initialises it, and stops it (reuseOnScaleIn is off).
      warmRefilling++;
      queue.push(now + uniform(random, timings.coldBootSeconds) + uniform(random, timings.launchReadySeconds), { kind: 'warm_refilled' });
    } else {
      ready = now + uniform(random, timings.coldBootSeconds) + uniform(random, timings.launchReadySeconds);
    }
    launches++;
    instances.set(id, { id, state: 'booting', launchedAt: now });
    queue.push(ready, { kind: 'instance_ready', instanceId: id });
  };

  /** What Auto Scaling does with the desired capacity: launches up to it; terminates down to it, unprotected (empty) hosts only. */
  const reconcile = (now: number) => {
    let live = liveInstances().length;
    while (live < desired) {
      launch(now);
      live++;
    }
    if (live > desired) {
      const empty = activeHosts().filter((x) => !wantsScaleInProtection(x));
      // Protected hosts (with sandboxes) stay: a sandbox ending on a host that went is flagged at its end.
      for (const host of empty.slice(0, live - desired)) {
        account(now);
        host.status = 'lost';
        hosts.delete(host.host_id);
        const instance = instances.get(host.host_id)!;
        instance.state = 'terminated';
        instance.endedAt = now;
        scaleIns++;
      }
    }
    peakHosts = Math.max(peakHosts, liveInstances().length);
  };

  /** fleet.ts requestCapacity: the hosts the waiting creates and the headroom need, as a higher desired capacity. */
  const requestCapacity = (now: number) => {
    const active = activeHosts();
    const starting = liveInstances().length;
    const launching = Math.max(0, Math.max(desired, starting) - active.length);
    const hostShape = hostShapeOf(active, { slots: h.sandboxSlotsPerHost, defaultSandbox });
    const toAdd = hostsNeeded(
      active,
      waiting.map((w) => w.request),
      launching,
      hostShape,
      h.headroomPercent,
    );
    const next = desiredForWaiting({ desired, max: h.maxHosts, running: starting }, toAdd);
    if (next !== undefined) {
      desired = next;
      reconcile(now);
    }
  };

  const place = (now: number, create: Create, host: SimHost) => {
    account(now);
    if (!fits(host.capacity, host.allocated, create.request)) violate(now, `placed ${create.id} on ${host.host_id} without room`);
    host.allocated = addResources(host.allocated, create.request);
    host.sandboxes.set(create.id, create.request);
    const free = freeOf(host.capacity, host.allocated);
    if (free.cpu_milli < 0 || free.memory_mb < 0 || free.disk_mb < 0 || free.sandboxes < 0) violate(now, `${host.host_id} overcommitted`);
    let ready = timings.createColdContainerSeconds;
    if (create.isDefaultShape && host.warmContainers > 0) {
      host.warmContainers--;
      ready = timings.createWarmContainerSeconds;
      queue.push(now + timings.warmContainerRefillSeconds, { kind: 'warm_container', hostId: host.host_id });
    }
    if (now - create.requestedAt > capacityWaitSeconds) violate(now, `${create.id} placed after its capacity wait was over`);
    createWaits.push(now - create.requestedAt + ready);
    execCalls += create.execCalls;
    queue.push(now + ready + create.lifeSeconds, { kind: 'end', sandboxId: create.id, hostId: host.host_id });
  };

  const candidateFor = (now: number, create: Create) =>
    rankHosts(activeHosts(), create.request, { strategy, freshAfter: (now - e.limits.hostLostAfterSeconds) * 1000 })[0];

  /** Hosts with room take waiting creates, oldest first (capacity-wait.ts claimWaitingCreate). */
  const drainWaiting = (now: number) => {
    for (let i = 0; i < waiting.length; ) {
      const create = waiting[i]!;
      const host = candidateFor(now, create);
      if (!host) {
        i++;
        continue;
      }
      waiting.splice(i, 1);
      place(now, create, host);
    }
  };

  for (const create of syntheticTraffic(e, o.traffic, o.hours, random)) queue.push(create.requestedAt, { kind: 'create', create });
  for (let t = 0; t < end; t += fleetCapacityRateMinutes * 60) queue.push(t, { kind: 'tick' });
  // The minimum's hosts are in service when the day starts (not launched from the warm pool).
  for (let i = 0; i < h.minHosts; i++) {
    const id = `i-${String(nextInstance++).padStart(4, '0')}`;
    instances.set(id, { id, state: 'booting', launchedAt: 0 });
    queue.push(0, { kind: 'instance_ready', instanceId: id });
  }
  peakHosts = h.minHosts;

  let creates = 0;
  for (let next = queue.pop(); next; next = queue.pop()) {
    const { at: now, event } = next;
    // Hosts heartbeat every few seconds and none is lost here: every host in service is fresh.
    for (const host of hosts.values()) host.last_heartbeat_at = now * 1000;
    switch (event.kind) {
      case 'create': {
        creates++;
        const host = candidateFor(now, event.create);
        if (host) {
          placedAtOnce++;
          place(now, event.create, host);
        } else {
          waited++;
          waiting.push(event.create);
          queue.push(now + capacityWaitSeconds, { kind: 'wait_over', sandboxId: event.create.id });
          requestCapacity(now);
        }
        break;
      }
      case 'wait_over': {
        const i = waiting.findIndex((w) => w.id === event.sandboxId);
        if (i >= 0) {
          waiting.splice(i, 1);
          failed++;
        }
        break;
      }
      case 'end': {
        const host = hosts.get(event.hostId);
        const request = host?.sandboxes.get(event.sandboxId);
        if (!host || !request) {
          violate(now, `${event.sandboxId} ended on ${event.hostId}, which no longer held it (a host with sandboxes went)`);
          break;
        }
        account(now);
        host.sandboxes.delete(event.sandboxId);
        host.allocated = [...host.sandboxes.values()].reduce((sum, r) => addResources(sum, r), zeroResources);
        drainWaiting(now);
        reconcile(now);
        break;
      }
      case 'instance_ready': {
        const instance = instances.get(event.instanceId);
        if (instance?.state !== 'booting') break;
        account(now);
        instance.state = 'in_service';
        hosts.set(instance.id, {
          host_id: instance.id,
          status: 'active',
          capacity: shape,
          allocated: zeroResources,
          last_heartbeat_at: now * 1000,
          warmContainers: h.warmContainersPerHost,
          sandboxes: new Map(),
          launchedAt: now,
        });
        drainWaiting(now);
        break;
      }
      case 'warm_refilled':
        warmRefilling--;
        warmReady++;
        break;
      case 'warm_container': {
        const host = hosts.get(event.hostId);
        if (host) host.warmContainers = Math.min(h.warmContainersPerHost, host.warmContainers + 1);
        break;
      }
      case 'tick': {
        // fleet-metric.ts measureFleet: the metric, then capacity for the waiting creates and the headroom.
        const active = activeHosts();
        const demand = waiting.map((w) => w.request);
        const metric = capacityMetric(active, demand);
        if (100 - metric.utilizationPercent < h.headroomPercent) headroomShortMinutes++;
        if (waiting.length > 0 || h.headroomPercent > 0) requestCapacity(now);
        // Invariant: after the tick the group is growing to the headroom, or it is at its maximum.
        const launching = Math.max(0, Math.max(desired, liveInstances().length) - active.length);
        const hostShape = hostShapeOf(active, { slots: h.sandboxSlotsPerHost, defaultSandbox });
        if (hostsForHeadroom(active, demand, launching, hostShape, h.headroomPercent) > 0 && desired < h.maxHosts) {
          violate(now, `free capacity below ${h.headroomPercent} % and the group (desired ${desired} of ${h.maxHosts}) was not asked for more`);
        }
        // The scale-in alarm: every reading of the last scaleInAfterMinutes at or below the threshold; while it
        // stays in alarm, the step policy gives back one host each minute.
        readings.push(utilizationWithoutOneHost(active, demand));
        const recent = readings.slice(-evaluationPeriods);
        if (recent.length === evaluationPeriods && recent.every((r) => allowsScaleIn(r, h.headroomPercent)) && desired > h.minHosts) {
          desired--;
          reconcile(now);
        }
        break;
      }
    }
  }
  account(end);
  if (waiting.length > 0) {
    // Creates still waiting at the end have their wait_over after it: they count as failed only when it passed.
    for (const w of waiting) if (end - w.requestedAt > capacityWaitSeconds) violate(end, `${w.id} waited past the capacity wait`);
  }

  let hostHours = 0;
  for (const instance of instances.values()) hostHours += ((instance.endedAt ?? end) - instance.launchedAt) / 3600;
  const sorted = [...createWaits].sort((a, b) => a - b);
  return {
    environment: e.name,
    hostShape: shape,
    creates,
    placedAtOnce,
    waitedForCapacity: waited,
    failedNoCapacity: failed,
    stillWaitingAtEnd: waiting.length,
    createWaits: sorted,
    waitP50: percentile(sorted, 50),
    waitP95: percentile(sorted, 95),
    waitP99: percentile(sorted, 99),
    execCalls,
    hostHours,
    peakHosts,
    launches,
    warmPoolLaunches,
    scaleIns,
    costUsd: hostHours * hostUsdPerHour + stoppedHours * stoppedUsdPerHour,
    utilizationPercent: inServiceSeconds > 0 ? (100 * allocatedShareSeconds) / inServiceSeconds : 0,
    headroomShortMinutes,
    violations,
  };
}

/** The environments of cdk.json, validated as a deploy validates them. */
export function environmentFromCdkJson(name: string): DeploymentEnvironment {
  const cdkJson = JSON.parse(readFileSync(join(repoRoot, 'cdk.json'), 'utf8')) as { context: { environments: unknown } };
  return resolveEnvironment(name, cdkJson.context.environments);
}

const seconds = (s: number) => (s < 10 ? `${s.toFixed(1)} s` : `${Math.round(s)} s`);

function report(
  results: SimulationResult[],
  o: { seed: number; hours: number; strategy: PlacementStrategy; environmentOf: (name: string) => DeploymentEnvironment },
): string {
  const lines: string[] = [];
  lines.push(`Fleet simulation: ${o.hours} h of synthetic traffic, seed ${o.seed}, placement ${o.strategy}`);
  lines.push('');
  const rows: [string, (r: SimulationResult) => string][] = [
    ['creates (placed at once / waited / failed no_capacity)', (r) => `${r.creates} (${r.placedAtOnce} / ${r.waitedForCapacity} / ${r.failedNoCapacity})`],
    ['create wait p50', (r) => seconds(r.waitP50)],
    ['create wait p95', (r) => seconds(r.waitP95)],
    ['create wait p99', (r) => seconds(r.waitP99)],
    ['exec calls', (r) => String(r.execCalls)],
    ['host-hours', (r) => r.hostHours.toFixed(1)],
    ['hosts at peak / launches (from warm pool) / scale-ins', (r) => `${r.peakHosts} / ${r.launches} (${r.warmPoolLaunches}) / ${r.scaleIns}`],
    ['cost (instances + EBS)', (r) => `$${r.costUsd.toFixed(2)}`],
    ['utilization of hosts in service', (r) => `${r.utilizationPercent.toFixed(1)} %`],
    ['minutes with less free than the headroom (or creates waiting)', (r) => String(r.headroomShortMinutes)],
    ['invariant violations', (r) => String(r.violations.length)],
  ];
  const header = ['', ...results.map((r) => r.environment)];
  lines.push(`| ${header.join(' | ')} |`);
  lines.push(`|---|${results.map(() => '---:').join('|')}|`);
  for (const [label, value] of rows) lines.push(`| ${label} | ${results.map(value).join(' | ')} |`);
  lines.push('');
  lines.push('Settings (cdk.json) and assumptions:');
  for (const r of results) {
    const e = o.environmentOf(r.environment);
    const h = e.hosts;
    const t = trafficProfiles[r.environment]!;
    const spec = instanceSpecs[h.instanceTypes[0]!]!;
    const fit = Math.floor(
      Math.min(r.hostShape.cpu_milli / (e.limits.defaultCpu * 1000), r.hostShape.memory_mb / e.limits.defaultMemoryMb, r.hostShape.sandboxes),
    );
    lines.push(
      `- ${r.environment}: ${h.instanceTypes[0]} (${spec.vcpus} vCPU, ${spec.memoryGiB} GiB, $${spec.usdPerHour}/h on-demand${h.spot.enabled ? '; Spot runs cheaper: an upper bound' : ''}), ` +
        `allocatable ${r.hostShape.cpu_milli / 1000} CPU / ${r.hostShape.memory_mb} MB / ${h.sandboxSlotsPerHost} slots = ${fit} default sandboxes per host; ` +
        `hosts ${h.minHosts}-${h.maxHosts}, warm pool ${h.warmPoolMinSize}, headroom ${h.headroomPercent} %, scale-in after ${h.scaleInAfterMinutes} min, capacity wait ${capacityWaitSeconds} s; ` +
        `traffic: peak ${t.peakCreatesPerMinute}/min (night ${Math.round(t.troughShare * 100)} %), ${t.burstsPerDay} bursts of ${t.burstSize}, sessions median ${t.sessionMedianMinutes} min, ` +
        `${Math.round(t.destroyShare * 100)} % destroyed when done (the rest idle out after ${e.limits.defaultIdleTimeoutSeconds} s)`,
    );
  }
  lines.push(
    `- EC2: cold boot ${timings.coldBootSeconds.join('-')} s + launch-ready ${timings.launchReadySeconds.join('-')} s; warm-pool claim ${timings.warmPoolClaimSeconds.join('-')} s; ` +
      `create on a host with room ${timings.createWarmContainerSeconds} s (warm container) / ${timings.createColdContainerSeconds} s (cold); prices us-east-1 (aws.amazon.com/ec2/pricing/on-demand), gp3 $0.08/GB-month`,
  );
  lines.push(
    '- Not modelled: Spot interruptions and lost hosts, AZ balancing, API and DynamoDB latency, exec load on the hosts (a sandbox holds its reservation whatever it runs), ' +
      'CloudWatch metric delay (the alarm sees each minute at once), the drain of a host given back (it is empty), NAT, data transfer and Lambda costs.',
  );
  for (const r of results) for (const v of r.violations.slice(0, 5)) lines.push(`! ${r.environment}: ${v}`);
  return lines.join('\n');
}

function main(): void {
  const { values } = parseArgs({
    options: {
      seed: { type: 'string', default: '42' },
      hours: { type: 'string', default: '24' },
      env: { type: 'string', default: 'dev,prod' },
      strategy: { type: 'string', default: 'spread' },
      headroom: { type: 'string' },
    },
  });
  const seed = Number(values.seed);
  const hours = Number(values.hours);
  if (!Number.isInteger(seed) || !(hours > 0)) throw new Error('--seed must be an integer and --hours a positive number');
  const strategy = values.strategy as PlacementStrategy;
  if (!placementStrategies.includes(strategy)) throw new Error(`--strategy must be one of ${placementStrategies.join(', ')}`);
  const headroom = values.headroom === undefined ? undefined : Number(values.headroom);
  if (headroom !== undefined && !(Number.isInteger(headroom) && headroom >= 0 && headroom <= maxHeadroomPercent))
    throw new Error(`--headroom must be an integer from 0 to ${maxHeadroomPercent}`);
  const environmentOf = (name: string): DeploymentEnvironment => {
    const e = environmentFromCdkJson(name);
    return headroom === undefined ? e : { ...e, hosts: { ...e.hosts, headroomPercent: headroom } };
  };
  const results = values.env.split(',').map((name) => {
    const traffic = trafficProfiles[name];
    if (!traffic) throw new Error(`no traffic profile for ${name}: add one to trafficProfiles`);
    return simulate({ environment: environmentOf(name), traffic, seed, hours, strategy });
  });
  console.log(report(results, { seed, hours, strategy, environmentOf }));
  if (results.some((r) => r.violations.length > 0)) process.exitCode = 1;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) main();
