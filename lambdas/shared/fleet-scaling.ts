/**
 * Scaling decisions, as pure functions: the capacity metric published each
 * minute (the group's scale-in policy gives back hosts when it is low), how many
 * hosts creates that found no room need, and which hosts ask to be protected
 * from scale-in. fleet.ts acts on them; the fleet simulation runs them too.
 */
import { addResources, dominantShare, fits, freeOf, zeroResources, type Resources } from './placement';

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
}

/** The metric of the fleet as it stands. With no active host, any waiting create reads 100 % (the create itself asked for a host). */
export function capacityMetric(hosts: readonly FleetHost[], waiting: readonly Resources[]): CapacityMetric {
  const active = hosts.filter((h) => h.status === 'active');
  const capacity = active.reduce((sum, h) => addResources(sum, h.capacity), zeroResources);
  const allocated = active.reduce((sum, h) => addResources(sum, h.allocated), zeroResources);
  const demand = waiting.reduce((sum, w) => addResources(sum, w), allocated);
  const free = freeOf(capacity, allocated);
  const utilization = active.length === 0 ? (waiting.length > 0 ? 100 : 0) : 100 * dominantShare(capacity, demand);
  return {
    activeHosts: active.length,
    allocatedCpu: allocated.cpu_milli / 1000,
    freeCpu: Math.max(0, free.cpu_milli) / 1000,
    allocatedMemoryMb: allocated.memory_mb,
    freeMemoryMb: Math.max(0, free.memory_mb),
    pendingCreates: waiting.length,
    utilizationPercent: Math.round(utilization * 10) / 10,
  };
}

/**
 * How many hosts to add so that every waiting create fits: the creates,
 * largest memory first, go into the free room of the active hosts, then into
 * hosts already launching (empty, of `hostShape`), then into new ones. A
 * create larger than a whole host is counted out (it can never be placed:
 * the request limits keep that from happening).
 */
export function hostsToAdd(hosts: readonly FleetHost[], waiting: readonly Resources[], launching: number, hostShape: Resources): number {
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
 * The desired capacity that makes room for the waiting creates; undefined when
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
