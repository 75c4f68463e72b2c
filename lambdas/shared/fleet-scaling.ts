/**
 * Scaling decisions, as pure functions: the capacity metric published each
 * minute, how many hosts the fleet needs (room for the creates that found
 * none, plus the environment's headroom), when a host may be given back (the
 * group's scale-in policy reads that from the metric), and which hosts ask to
 * be protected from scale-in. fleet.ts and fleet-metric.ts act on them;
 * scripts/simulate-fleet.ts runs the same functions.
 */
import { addResources, dominantShare, fits, freeOf, timesResources, zeroResources, type Resources } from './placement';

/** What the scaling decisions read of a host. */
export interface FleetHost {
  status: 'active' | 'draining' | 'lost';
  capacity: Resources;
  allocated: Resources;
}

export interface CapacityMetric {
  /** Hosts taking placements. */
  activeHosts: number;
  allocatedCpu: number;
  freeCpu: number;
  allocatedMemoryMb: number;
  freeMemoryMb: number;
  /** Creates waiting for a host. */
  pendingCreates: number;
  /**
   * How full the active hosts would be with the waiting creates placed too,
   * by the scarcest resource, in percent (above 100 when they would not fit).
   * The scale-in policy gives back a host when it stays low.
   */
  utilizationPercent: number;
  /**
   * How full the active hosts would be, in percent by the scarcest resource,
   * with one empty host given back (the largest: what holds for it holds for
   * any smaller one); `noScaleInReading` when no host may go (creates wait, or
   * every host holds sandboxes and is protected). The scale-in policy gives
   * back a host while this stays at or below `scaleInThresholdPercent`.
   */
  utilizationWithoutOneHostPercent: number;
}

/**
 * The reading of utilizationWithoutOneHostPercent when no host may go: far
 * above any threshold (a CloudWatch datapoint must be a number, so no Infinity).
 */
export const noScaleInReading = 1000;

/**
 * The most free capacity (percent, by the scarcest resource) a headroom setting
 * may ask for: beyond it the fleet would run mostly empty hosts.
 */
export const maxHeadroomPercent = 90;

/**
 * The scale-in threshold a headroom implies: a host may go when the hosts left
 * would be at most (100 - headroom) % full, so giving it back never takes the
 * fleet below its headroom (and never forces the next scale-out).
 */
export function scaleInThresholdPercent(headroomPercent: number): number {
  return 100 - headroomPercent;
}

/** The metric of the fleet as it stands. With no active host, any waiting create reads 100 % (the create itself asked for a host). */
export function capacityMetric(hosts: readonly FleetHost[], waiting: readonly Resources[]): CapacityMetric {
  const active = hosts.filter((h) => h.status === 'active');
  const capacity = active.reduce((sum, h) => addResources(sum, h.capacity), zeroResources);
  const allocated = active.reduce((sum, h) => addResources(sum, h.allocated), zeroResources);
  const demand = waiting.reduce((sum, w) => addResources(sum, w), allocated);
  const free = freeOf(capacity, allocated);
  const utilization = active.length === 0 ? (waiting.length > 0 ? 100 : 0) : 100 * dominantShare(capacity, demand);
  const withoutOne = utilizationWithoutOneHost(hosts, waiting);
  return {
    activeHosts: active.length,
    allocatedCpu: allocated.cpu_milli / 1000,
    freeCpu: Math.max(0, free.cpu_milli) / 1000,
    allocatedMemoryMb: allocated.memory_mb,
    freeMemoryMb: Math.max(0, free.memory_mb),
    pendingCreates: waiting.length,
    utilizationPercent: Math.round(utilization * 10) / 10,
    // Rounded up: a reading a hair above the threshold must not round down into it.
    utilizationWithoutOneHostPercent: Math.ceil(withoutOne * 10) / 10,
  };
}

/**
 * How full (percent, scarcest resource) the active hosts would be with their
 * largest empty host given back; `noScaleInReading` while creates wait or no
 * active host is empty (hosts with sandboxes are protected from scale-in, so
 * none of them can go). 0 when the fleet holds nothing at all.
 */
export function utilizationWithoutOneHost(hosts: readonly FleetHost[], waiting: readonly Resources[]): number {
  if (waiting.length > 0) return noScaleInReading;
  const active = hosts.filter((h) => h.status === 'active');
  const empty = active
    .filter((h) => h.allocated.sandboxes === 0)
    .sort((a, b) => b.capacity.memory_mb - a.capacity.memory_mb || b.capacity.cpu_milli - a.capacity.cpu_milli);
  const leaving = empty[0];
  if (!leaving) return noScaleInReading;
  const staying = active.filter((h) => h !== leaving);
  const allocated = staying.reduce((sum, h) => addResources(sum, h.allocated), zeroResources);
  if (allocated.sandboxes === 0) return 0;
  const capacity = staying.reduce((sum, h) => addResources(sum, h.capacity), zeroResources);
  return 100 * dominantShare(capacity, allocated);
}

/** Whether the scale-in policy's reading lets a host go under this headroom. */
export function allowsScaleIn(utilizationWithoutOneHostPercent: number, headroomPercent: number): boolean {
  return utilizationWithoutOneHostPercent <= scaleInThresholdPercent(headroomPercent);
}

/**
 * How many hosts of `hostShape` to add so that, with the waiting creates
 * placed, the fleet (active hosts plus `launching` ones) keeps `headroomPercent`
 * of its capacity free by the scarcest resource. 0 when nothing runs or waits:
 * headroom is kept ahead of demand, not of an idle fleet (minHosts is for that).
 *
 * @example hostsForHeadroom([], [oneSandbox], 0, shapeOf4, 20) // 1
 */
export function hostsForHeadroom(
  hosts: readonly FleetHost[],
  waiting: readonly Resources[],
  launching: number,
  hostShape: Resources,
  headroomPercent: number,
): number {
  const active = hosts.filter((h) => h.status === 'active');
  // A create larger than a whole host is counted out, as in hostsToAdd: no number of hosts places it.
  const placeable = waiting.filter((w) => fits(hostShape, zeroResources, w));
  const demand = placeable.reduce(
    (sum, w) => addResources(sum, w),
    active.reduce((sum, h) => addResources(sum, h.allocated), zeroResources),
  );
  if (demand.sandboxes === 0 || hostShape.sandboxes <= 0) return 0;
  const base = active.reduce((sum, h) => addResources(sum, h.capacity), zeroResources);
  const most = 1 - Math.min(headroomPercent, maxHeadroomPercent) / 100;
  // Hosts are few (the group's maximum is tens): counting up is exact and cheap.
  for (let add = 0; add <= 10_000; add++) {
    const capacity = addResources(base, timesResources(hostShape, launching + add));
    if (dominantShare(capacity, demand) <= most + 1e-9) return add;
  }
  return 10_000;
}

/**
 * The hosts to add: enough for every waiting create to fit (hostsToAdd) and
 * for the fleet to keep its headroom, whichever needs more.
 */
export function hostsNeeded(
  hosts: readonly FleetHost[],
  waiting: readonly Resources[],
  launching: number,
  hostShape: Resources,
  headroomPercent: number,
): number {
  return Math.max(hostsToAdd(hosts, waiting, launching, hostShape), hostsForHeadroom(hosts, waiting, launching, hostShape, headroomPercent));
}

/**
 * How many hosts to add so that every waiting create fits: the creates,
 * largest memory first, go into the free room of the active hosts, then into
 * hosts already launching (empty, of `hostShape`), then into new ones. A
 * create larger than a whole host is counted out (it can never be placed:
 * the request limits keep that from happening).
 */
function hostsToAdd(hosts: readonly FleetHost[], waiting: readonly Resources[], launching: number, hostShape: Resources): number {
  const bins = hosts.filter((h) => h.status === 'active').map((h) => ({ capacity: h.capacity, allocated: h.allocated }));
  for (let i = 0; i < launching; i++) bins.push({ capacity: hostShape, allocated: zeroResources });
  let added = 0;
  const sorted = [...waiting].sort((a, b) => b.memory_mb - a.memory_mb || b.cpu_milli - a.cpu_milli);
  for (const request of sorted) {
    if (!fits(hostShape, zeroResources, request) && !bins.some((b) => fits(b.capacity, b.allocated, request))) continue;
    let bin = bins.find((b) => fits(b.capacity, b.allocated, request));
    if (!bin) {
      bin = { capacity: hostShape, allocated: zeroResources };
      bins.push(bin);
      added++;
    }
    bin.allocated = addResources(bin.allocated, request);
  }
  return added;
}

/**
 * The desired capacity that adds `toAdd` hosts (hostsNeeded); undefined when
 * the group already has (or can have) no more. Counted from the hosts running
 * when there are more than desired: a scale-in step lowers the desired capacity
 * even when every host is protected (their sandboxes keep them), and a desired
 * capacity raised from there would launch nothing.
 */
export function desiredForWaiting(group: { desired: number; max: number; running: number }, toAdd: number): number | undefined {
  if (toAdd <= 0) return undefined;
  const from = Math.max(group.desired, group.running);
  const next = Math.min(group.max, from + toAdd);
  return next > group.desired ? next : undefined;
}

/**
 * The shape of a host the group would launch: the largest host seen, or,
 * before any host registered (an environment at rest), what a host is sized
 * for: `slots` sandboxes of the default size.
 */
export function hostShapeOf(hosts: readonly FleetHost[], fallback: { slots: number; defaultSandbox: Resources }): Resources {
  const known = hosts.map((h) => h.capacity).sort((a, b) => b.memory_mb - a.memory_mb)[0];
  if (known) return known;
  const s = fallback.defaultSandbox;
  return { cpu_milli: s.cpu_milli * fallback.slots, memory_mb: s.memory_mb * fallback.slots, disk_mb: s.disk_mb * fallback.slots, sandboxes: fallback.slots };
}

/** Whether a host should be protected from scale-in: it holds sandboxes, so only empty (or drained) hosts go. */
export function wantsScaleInProtection(host: Pick<FleetHost, 'allocated'>): boolean {
  return host.allocated.sandboxes > 0;
}
