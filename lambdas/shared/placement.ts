/**
 * Placement decisions, as pure functions: what a sandbox takes from a host,
 * which hosts it fits on and in what order they are tried, and how a host's
 * recorded allocations are corrected against the sandboxes it really holds.
 * host-store.ts acts on these decisions with conditional writes; the fleet
 * simulation (scripts/simulate-fleet.ts) runs the same functions.
 */

/** CPU in thousandths (integers add exactly), memory and disk in MB, and a count of sandboxes. */
export interface Resources {
  cpu_milli: number;
  memory_mb: number;
  disk_mb: number;
  sandboxes: number;
}

/** One sandbox's share of a host, as recorded on the host item. */
export interface Allocation {
  cpu_milli: number;
  memory_mb: number;
  disk_mb: number;
  /** Epoch ms it was taken (a create still recording its sandbox is given time). */
  at: number;
}

export const placementStrategies = ['spread', 'binpack'] as const;
/**
 * spread: the emptiest host first (a host's loss or drain touches fewest
 * sandboxes); binpack: the fullest host that fits first (empty hosts stay
 * empty, so scale-in finds them).
 */
export type PlacementStrategy = (typeof placementStrategies)[number];

export const zeroResources: Resources = { cpu_milli: 0, memory_mb: 0, disk_mb: 0, sandboxes: 0 };

/**
 * What a sandbox takes from its host: its CPU and memory limits, its home's
 * file system (preallocated, `disk_mb`) plus room for its /tmp archive while
 * it is paused (at most half its memory), and one of the host's sandboxes.
 * A paused sandbox keeps its share, so its resume never fails for room.
 *
 * @example resourcesOf({ cpu: 1, memory_mb: 1024, disk_mb: 1024 }) // { cpu_milli: 1000, memory_mb: 1024, disk_mb: 1536, sandboxes: 1 }
 */
export function resourcesOf(config: { cpu: number; memory_mb: number; disk_mb?: number | undefined }, defaultDiskMb = 0): Resources {
  return {
    cpu_milli: Math.round(config.cpu * 1000),
    memory_mb: config.memory_mb,
    disk_mb: (config.disk_mb ?? defaultDiskMb) + Math.ceil(config.memory_mb / 2),
    sandboxes: 1,
  };
}

/** What a host may still hand out. */
export function freeOf(capacity: Resources, allocated: Resources): Resources {
  return {
    cpu_milli: capacity.cpu_milli - allocated.cpu_milli,
    memory_mb: capacity.memory_mb - allocated.memory_mb,
    disk_mb: capacity.disk_mb - allocated.disk_mb,
    sandboxes: capacity.sandboxes - allocated.sandboxes,
  };
}

/** True when `request` fits in what is free: never more memory (or disk, or CPU, or sandboxes) than the host has. */
export function fits(capacity: Resources, allocated: Resources, request: Resources): boolean {
  const free = freeOf(capacity, allocated);
  return request.cpu_milli <= free.cpu_milli && request.memory_mb <= free.memory_mb && request.disk_mb <= free.disk_mb && request.sandboxes <= free.sandboxes;
}

/**
 * How full a host is by its scarcest resource (0-1): the share that decides
 * whether the next sandbox fits.
 */
export function dominantShare(capacity: Resources, allocated: Resources): number {
  const share = (used: number, total: number) => (total <= 0 ? 1 : used / total);
  return Math.max(
    share(allocated.cpu_milli, capacity.cpu_milli),
    share(allocated.memory_mb, capacity.memory_mb),
    share(allocated.disk_mb, capacity.disk_mb),
    share(allocated.sandboxes, capacity.sandboxes),
  );
}

/** What placement reads of a host. */
export interface PlacementHost {
  host_id: string;
  capacity: Resources;
  allocated: Resources;
  last_heartbeat_at: number;
  /** Image (by digest) the host has pulled and serves creates with. */
  image?: string | undefined;
  /** The reference (SANDBOX_IMAGE) the host resolved to `image`. */
  image_ref?: string | undefined;
}

/** True when the host has pulled `image` (named by the reference it resolved, or by its digest). */
function hostHasImage(host: Pick<PlacementHost, 'image' | 'image_ref'>, image: string): boolean {
  return host.image === image || host.image_ref === image;
}

/**
 * The image a create placed on `host` names: the digest the host recorded, whatever
 * reference it resolved. During a rollout a host still on the previous image runs
 * that one (it is pulled, checked, and the old image is what the fleet served a
 * minute ago) rather than being sent the new tag and pulling it inside the create;
 * its image loop pre-pulls the new one and the next creates name that. Only a host
 * that has recorded no image at all (its pull failed) is sent `current`, the
 * control plane's reference, and pulls it at create time.
 */
export function createImageFor(host: Pick<PlacementHost, 'image'> | undefined, current: string): string {
  return host?.image || current;
}

export interface PlacementOptions {
  strategy: PlacementStrategy;
  /** Hosts whose last heartbeat is older than this (epoch ms) are not offered anything. */
  freshAfter: number;
  /** Hosts that already hold this image are tried first (a create there never waits for a pull). */
  image?: string | undefined;
}

/**
 * The hosts `request` fits on, in the order placement tries them: hosts that
 * already have the image first, then by the strategy (ties by host id, so the
 * order is stable). Hosts that heartbeat too long ago, or lack room, are left out.
 */
export function rankHosts<H extends PlacementHost>(hosts: readonly H[], request: Resources, o: PlacementOptions): H[] {
  const candidates = hosts.filter((h) => h.last_heartbeat_at >= o.freshAfter && fits(h.capacity, h.allocated, request));
  const after = (h: H) => dominantShare(h.capacity, addResources(h.allocated, request));
  return candidates.sort((a, b) => {
    if (o.image !== undefined) {
      const hasA = hostHasImage(a, o.image) ? 0 : 1;
      const hasB = hostHasImage(b, o.image) ? 0 : 1;
      if (hasA !== hasB) return hasA - hasB;
    }
    const byShare = o.strategy === 'spread' ? after(a) - after(b) : after(b) - after(a);
    return byShare !== 0 ? byShare : a.host_id < b.host_id ? -1 : a.host_id > b.host_id ? 1 : 0;
  });
}

export function addResources(a: Resources, b: Resources): Resources {
  return {
    cpu_milli: a.cpu_milli + b.cpu_milli,
    memory_mb: a.memory_mb + b.memory_mb,
    disk_mb: a.disk_mb + b.disk_mb,
    sandboxes: a.sandboxes + b.sandboxes,
  };
}

/** `n` of `r`: what n hosts (or sandboxes) of one shape hold together. */
export function timesResources(r: Resources, n: number): Resources {
  return { cpu_milli: r.cpu_milli * n, memory_mb: r.memory_mb * n, disk_mb: r.disk_mb * n, sandboxes: r.sandboxes * n };
}

/** The totals of a host's allocations (what `allocated` must equal). */
export function sumAllocations(allocations: Record<string, Allocation>): Resources {
  let total = zeroResources;
  for (const a of Object.values(allocations)) total = addResources(total, { cpu_milli: a.cpu_milli, memory_mb: a.memory_mb, disk_mb: a.disk_mb, sandboxes: 1 });
  return total;
}

/**
 * What a host's allocations should become, given the sandboxes the control
 * plane says live on it (`live`: sandbox id -> what it takes) and, for
 * allocations with no live sandbox in that list, whether the sandbox's own
 * record still places it here (`stillHere`, read consistently: the list comes
 * from an eventually consistent index).
 *
 * - an allocation whose sandbox ended, or lives elsewhere, goes;
 * - an allocation with no record at all goes once it is older than `graceMs`
 *   (a create takes the allocation just before it writes its record);
 * - a live sandbox with no allocation gets one (even past the host's
 *   capacity: it is there, and placement must see it).
 */
export function allocationCorrections(
  allocations: Record<string, Allocation>,
  live: ReadonlyMap<string, Resources>,
  stillHere: ReadonlyMap<string, 'here' | 'ended' | 'missing'>,
  now: number,
  graceMs: number,
): { release: string[]; add: { sandboxId: string; resources: Resources }[] } {
  const release: string[] = [];
  for (const [sandboxId, a] of Object.entries(allocations)) {
    if (live.has(sandboxId)) continue;
    const state = stillHere.get(sandboxId) ?? 'missing';
    if (state === 'here') continue;
    if (state === 'ended' || now - a.at > graceMs) release.push(sandboxId);
  }
  const add = [...live].filter(([sandboxId]) => allocations[sandboxId] === undefined).map(([sandboxId, resources]) => ({ sandboxId, resources }));
  return { release: release.sort(), add: add.sort((a, b) => (a.sandboxId < b.sandboxId ? -1 : 1)) };
}

/**
 * What a host advertises: its CPUs (times `cpuOvercommit`: CPU limits are
 * quotas, compressible, so hosts may promise more than they have), its memory
 * minus what the host itself needs (never overcommitted: memory is the one
 * resource a sandbox cannot be made to give back), its state volume minus a
 * reserve, and its sandbox count limit. Explicit overrides win (tests, and
 * several hosts sharing one machine).
 */
export function allocatableResources(
  machine: { cpus: number; memoryMb: number; stateDiskMb: number },
  settings: { cpuOvercommit: number; reservedMemoryMb: number; reservedDiskMb: number; maxSandboxes: number },
  overrides: { cpu?: number | undefined; memoryMb?: number | undefined; diskMb?: number | undefined } = {},
): Resources {
  return {
    cpu_milli: Math.round((overrides.cpu ?? machine.cpus * settings.cpuOvercommit) * 1000),
    memory_mb: Math.max(0, Math.floor(overrides.memoryMb ?? machine.memoryMb - settings.reservedMemoryMb)),
    disk_mb: Math.max(0, Math.floor(overrides.diskMb ?? machine.stateDiskMb - settings.reservedDiskMb)),
    sandboxes: settings.maxSandboxes,
  };
}
