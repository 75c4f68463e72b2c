/**
 * Placement decisions (lambdas/shared/placement.ts), table by table: what a
 * sandbox takes, where it fits, in which order hosts are tried, and how a
 * host's allocations are corrected.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  allocatableResources,
  allocationCorrections,
  createImageFor,
  dominantShare,
  fits,
  rankHosts,
  resourcesOf,
  sumAllocations,
  type Allocation,
  type PlacementHost,
  type Resources,
} from '../../lambdas/shared/placement';

const gib = 1024;
const r = (cpu: number, memoryGib: number, diskGib: number, sandboxes: number): Resources => ({
  cpu_milli: cpu * 1000,
  memory_mb: memoryGib * gib,
  disk_mb: diskGib * gib,
  sandboxes,
});
const host = (id: string, capacity: Resources, allocated: Resources, extra: Partial<PlacementHost> = {}): PlacementHost => ({
  host_id: id,
  capacity,
  allocated,
  last_heartbeat_at: 1_000_000,
  ...extra,
});

describe('what a sandbox takes from its host', () => {
  // biome-ignore format: one case per line reads as a table
  const cases: { name: string; config: { cpu: number; memory_mb: number; disk_mb?: number }; defaultDisk?: number; want: Resources }[] = [
    { name: 'its limits, its home and room for its paused /tmp', config: { cpu: 1, memory_mb: 1024, disk_mb: 1024 }, want: { cpu_milli: 1000, memory_mb: 1024, disk_mb: 1536, sandboxes: 1 } },
    { name: 'a quarter CPU in exact thousandths', config: { cpu: 0.25, memory_mb: 256, disk_mb: 64 }, want: { cpu_milli: 250, memory_mb: 256, disk_mb: 192, sandboxes: 1 } },
    { name: 'odd memory rounds the /tmp room up', config: { cpu: 2, memory_mb: 1025, disk_mb: 100 }, want: { cpu_milli: 2000, memory_mb: 1025, disk_mb: 613, sandboxes: 1 } },
    { name: 'a record from before disk_mb takes the default home', config: { cpu: 1, memory_mb: 512 }, defaultDisk: 1024, want: { cpu_milli: 1000, memory_mb: 512, disk_mb: 1280, sandboxes: 1 } },
  ];
  for (const c of cases) {
    it(c.name, () => assert.deepEqual(resourcesOf(c.config, c.defaultDisk), c.want));
  }
});

describe('whether a sandbox fits', () => {
  const capacity = r(2, 3, 19, 3);
  // biome-ignore format: one case per line reads as a table
  const cases: { name: string; allocated: Resources; request: Resources; want: boolean }[] = [
    { name: 'an empty host takes a sandbox', allocated: r(0, 0, 0, 0), request: r(1, 1, 1, 1), want: true },
    { name: 'exactly the last gigabyte of memory is taken', allocated: r(1, 2, 2, 2), request: r(1, 1, 1, 1), want: true },
    { name: 'one megabyte more memory than is free is refused: memory is never overcommitted', allocated: r(0, 2, 0, 1), request: { cpu_milli: 0, memory_mb: 1025, disk_mb: 0, sandboxes: 1 }, want: false },
    { name: 'CPU beyond what is advertised is refused', allocated: r(2, 0, 0, 1), request: { cpu_milli: 1, memory_mb: 0, disk_mb: 0, sandboxes: 1 }, want: false },
    { name: 'disk beyond the state volume is refused', allocated: r(0, 0, 18, 1), request: r(0, 0, 2, 1), want: false },
    { name: 'the sandbox count limit holds even with room left', allocated: r(0, 0, 0, 3), request: { cpu_milli: 1, memory_mb: 1, disk_mb: 1, sandboxes: 1 }, want: false },
  ];
  for (const c of cases) {
    it(c.name, () => assert.equal(fits(capacity, c.allocated, c.request), c.want));
  }

  it('a t4g.medium (2 vCPU, 4 GiB, 768 MiB kept for the host) takes three 1 GiB sandboxes by memory, never three of 2 GiB', () => {
    const medium = allocatableResources(
      { cpus: 2, memoryMb: 3904, stateDiskMb: 20 * gib },
      { cpuOvercommit: 2, reservedMemoryMb: 768, reservedDiskMb: 1024, maxSandboxes: 3 },
    );
    let allocated = r(0, 0, 0, 0);
    const small = resourcesOf({ cpu: 1, memory_mb: 1024, disk_mb: 1024 });
    for (let i = 0; i < 3; i++) {
      assert.ok(fits(medium, allocated, small), `sandbox ${i + 1}`);
      allocated = {
        cpu_milli: allocated.cpu_milli + small.cpu_milli,
        memory_mb: allocated.memory_mb + small.memory_mb,
        disk_mb: allocated.disk_mb + small.disk_mb,
        sandboxes: allocated.sandboxes + 1,
      };
    }
    const big = resourcesOf({ cpu: 1, memory_mb: 2048, disk_mb: 1024 });
    assert.ok(fits(medium, r(0, 0, 0, 0), big));
    assert.ok(!fits(medium, { ...big, sandboxes: 1 }, big), 'a second 2 GiB sandbox would overcommit memory');
  });
});

describe('the order hosts are tried in', () => {
  const cap = r(4, 8, 40, 8);
  const hosts = [host('mi-a', cap, r(3, 6, 10, 3)), host('mi-b', cap, r(1, 2, 5, 1)), host('mi-c', cap, r(2, 4, 8, 2)), host('mi-d', cap, r(4, 8, 40, 8))];
  const request = r(1, 1, 1, 1);
  const ids = (hs: PlacementHost[]) => hs.map((h) => h.host_id);
  // biome-ignore format: one case per line reads as a table
  const cases: { name: string; strategy: 'spread' | 'binpack'; image?: string; hosts: PlacementHost[]; want: string[] }[] = [
    { name: 'spread: emptiest first, full hosts left out', strategy: 'spread', hosts, want: ['mi-b', 'mi-c', 'mi-a'] },
    { name: 'binpack: fullest that fits first', strategy: 'binpack', hosts, want: ['mi-a', 'mi-c', 'mi-b'] },
    {
      name: 'equal load: by host id, so the order is stable',
      strategy: 'spread',
      hosts: [host('mi-z', cap, r(1, 1, 1, 1)), host('mi-y', cap, r(1, 1, 1, 1))],
      want: ['mi-y', 'mi-z'],
    },
    {
      name: 'hosts with the image first, whatever the strategy says',
      strategy: 'spread',
      image: 'repo@sha256:new',
      hosts: [host('mi-a', cap, r(3, 6, 10, 3), { image: 'repo@sha256:new' }), host('mi-b', cap, r(1, 2, 5, 1), { image: 'repo@sha256:old' })],
      want: ['mi-a', 'mi-b'],
    },
    {
      name: 'hosts that resolved the configured reference (repo:tag) to their digest first',
      strategy: 'spread',
      image: 'repo:v2',
      hosts: [
        host('mi-a', cap, r(3, 6, 10, 3), { image: 'repo@sha256:new', image_ref: 'repo:v2' }),
        host('mi-b', cap, r(1, 2, 5, 1), { image: 'repo@sha256:old', image_ref: 'repo:v1' }),
      ],
      want: ['mi-a', 'mi-b'],
    },
    {
      name: 'a host that stopped heartbeating is offered nothing',
      strategy: 'spread',
      hosts: [host('mi-stale', cap, r(0, 0, 0, 0), { last_heartbeat_at: 10 }), host('mi-live', cap, r(3, 6, 10, 3))],
      want: ['mi-live'],
    },
  ];
  for (const c of cases) {
    it(c.name, () => assert.deepEqual(ids(rankHosts(c.hosts, request, { strategy: c.strategy, freshAfter: 1_000, image: c.image })), c.want));
  }

  it('ranks by the scarcest resource: a host with free CPU but little memory is fuller than its CPU says', () => {
    const memoryBound = host('mi-mem', cap, { cpu_milli: 0, memory_mb: 7 * gib, disk_mb: 0, sandboxes: 1 });
    const cpuBound = host('mi-cpu', cap, { cpu_milli: 2000, memory_mb: 0, disk_mb: 0, sandboxes: 1 });
    assert.ok(dominantShare(memoryBound.capacity, memoryBound.allocated) > dominantShare(cpuBound.capacity, cpuBound.allocated));
    assert.deepEqual(ids(rankHosts([memoryBound, cpuBound], request, { strategy: 'spread', freshAfter: 0 })), ['mi-cpu', 'mi-mem']);
  });
});

describe('the image a create names on the host it was placed on', () => {
  const current = 'repo:v2';
  it('a host that resolved the current reference: its digest', () => {
    assert.equal(createImageFor({ image: 'repo@sha256:new', image_ref: 'repo:v2' } as PlacementHost, current), 'repo@sha256:new');
  });
  it('a host still on the previous image during a rollout: the digest it has, not the new tag (no pull inside the create)', () => {
    assert.equal(createImageFor({ image: 'repo@sha256:old', image_ref: 'repo:v1' } as PlacementHost, current), 'repo@sha256:old');
  });
  it('a host that already holds a newer reference than the control plane (the hosts learnt it first): its digest', () => {
    assert.equal(createImageFor({ image: 'repo@sha256:newer', image_ref: 'repo:v3' } as PlacementHost, current), 'repo@sha256:newer');
  });
  it('a host with no image recorded (its pull failed): the reference, pulled at create time', () => {
    assert.equal(createImageFor({} as PlacementHost, current), current);
    assert.equal(createImageFor({ image: '' } as PlacementHost, current), current);
  });
  it('no host yet (a create waiting for capacity): the reference', () => {
    assert.equal(createImageFor(undefined, current), current);
  });
});

describe('what a host advertises', () => {
  const cases: {
    name: string;
    machine: { cpus: number; memoryMb: number; stateDiskMb: number };
    settings: { cpuOvercommit: number; reservedMemoryMb: number; reservedDiskMb: number; maxSandboxes: number };
    overrides?: { cpu?: number; memoryMb?: number; diskMb?: number };
    want: Resources;
  }[] = [
    {
      name: 'its machine less what the host keeps',
      machine: { cpus: 4, memoryMb: 16_000, stateDiskMb: 163_840 },
      settings: { cpuOvercommit: 1, reservedMemoryMb: 768, reservedDiskMb: 1024, maxSandboxes: 12 },
      want: { cpu_milli: 4000, memory_mb: 15_232, disk_mb: 162_816, sandboxes: 12 },
    },
    {
      name: 'CPU overcommitted by the setting, memory never',
      machine: { cpus: 2, memoryMb: 4000, stateDiskMb: 20_480 },
      settings: { cpuOvercommit: 2, reservedMemoryMb: 768, reservedDiskMb: 1024, maxSandboxes: 3 },
      want: { cpu_milli: 4000, memory_mb: 3232, disk_mb: 19_456, sandboxes: 3 },
    },
    {
      name: 'explicit values win (several hosts on one machine)',
      machine: { cpus: 2, memoryMb: 24_000, stateDiskMb: 100_000 },
      settings: { cpuOvercommit: 1, reservedMemoryMb: 768, reservedDiskMb: 1024, maxSandboxes: 4 },
      overrides: { cpu: 2, memoryMb: 2048, diskMb: 8192 },
      want: { cpu_milli: 2000, memory_mb: 2048, disk_mb: 8192, sandboxes: 4 },
    },
    {
      name: 'never below zero on a tiny machine',
      machine: { cpus: 1, memoryMb: 512, stateDiskMb: 500 },
      settings: { cpuOvercommit: 1, reservedMemoryMb: 768, reservedDiskMb: 1024, maxSandboxes: 1 },
      want: { cpu_milli: 1000, memory_mb: 0, disk_mb: 0, sandboxes: 1 },
    },
  ];
  for (const c of cases) {
    it(c.name, () => assert.deepEqual(allocatableResources(c.machine, c.settings, c.overrides), c.want));
  }
});

describe('correcting a host\u2019s allocations', () => {
  const now = 1_000_000;
  const grace = 60_000;
  const a = (at: number): Allocation => ({ cpu_milli: 1000, memory_mb: 1024, disk_mb: 1536, at });
  const share = resourcesOf({ cpu: 1, memory_mb: 1024, disk_mb: 1024 });
  const cases: {
    name: string;
    allocations: Record<string, Allocation>;
    live: string[];
    stillHere?: Record<string, 'here' | 'ended' | 'missing'>;
    want: { release: string[]; add: string[] };
  }[] = [
    {
      name: 'allocations that match the live sandboxes stay',
      allocations: { 'sbx-1': a(0), 'sbx-2': a(0) },
      live: ['sbx-1', 'sbx-2'],
      want: { release: [], add: [] },
    },
    {
      name: 'the share of a sandbox that ended (its release was lost) goes',
      allocations: { 'sbx-1': a(0) },
      live: [],
      stillHere: { 'sbx-1': 'ended' },
      want: { release: ['sbx-1'], add: [] },
    },
    {
      name: 'a create still recording its sandbox keeps its share within the grace',
      allocations: { 'sbx-new': a(now - 5_000) },
      live: [],
      stillHere: { 'sbx-new': 'missing' },
      want: { release: [], add: [] },
    },
    {
      name: 'a create that never recorded its sandbox loses its share after the grace',
      allocations: { 'sbx-dead': a(now - grace - 1) },
      live: [],
      stillHere: { 'sbx-dead': 'missing' },
      want: { release: ['sbx-dead'], add: [] },
    },
    {
      name: 'a sandbox the index does not show yet, but whose record is here, keeps its share',
      allocations: { 'sbx-lag': a(0) },
      live: [],
      stillHere: { 'sbx-lag': 'here' },
      want: { release: [], add: [] },
    },
    { name: 'a live sandbox without a share gets one', allocations: {}, live: ['sbx-1'], want: { release: [], add: ['sbx-1'] } },
    {
      name: 'both at once, in a stable order',
      allocations: { 'sbx-b': a(0), 'sbx-a': a(0), 'sbx-keep': a(0) },
      live: ['sbx-keep', 'sbx-z', 'sbx-y'],
      stillHere: { 'sbx-a': 'ended', 'sbx-b': 'ended' },
      want: { release: ['sbx-a', 'sbx-b'], add: ['sbx-y', 'sbx-z'] },
    },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const out = allocationCorrections(c.allocations, new Map(c.live.map((id) => [id, share])), new Map(Object.entries(c.stillHere ?? {})), now, grace);
      assert.deepEqual({ release: out.release, add: out.add.map((x) => x.sandboxId) }, c.want);
    });
  }

  it('totals are the sum of the entries', () => {
    assert.deepEqual(sumAllocations({ x: a(0), y: { cpu_milli: 500, memory_mb: 256, disk_mb: 100, at: 0 } }), {
      cpu_milli: 1500,
      memory_mb: 1280,
      disk_mb: 1636,
      sandboxes: 2,
    });
  });
});
