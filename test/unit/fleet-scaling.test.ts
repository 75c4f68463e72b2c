/**
 * Scaling decisions (lambdas/shared/fleet-scaling.ts): the desired capacity a
 * create that waits for room asks the group for, the hosts the headroom needs,
 * and the reading the scale-in policy gives back a host on.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  allowsScaleIn,
  capacityMetric,
  desiredForWaiting,
  hostsForHeadroom,
  hostsNeeded,
  noScaleInReading,
  scaleInThresholdPercent,
  utilizationWithoutOneHost,
  type FleetHost,
} from '../../lambdas/shared/fleet-scaling';
import { addResources, zeroResources, type Resources } from '../../lambdas/shared/placement';

/** A host of 4 CPUs, 4 GiB, 4 slots; sandboxes of 1 CPU, 1 GiB: each sandbox is 25 % of a host by every resource. */
const shape: Resources = { cpu_milli: 4000, memory_mb: 4096, disk_mb: 40_960, sandboxes: 4 };
const sandbox: Resources = { cpu_milli: 1000, memory_mb: 1024, disk_mb: 1536, sandboxes: 1 };
const times = (n: number): Resources => Array.from({ length: n }).reduce<Resources>((sum) => addResources(sum, sandbox), zeroResources);
const host = (sandboxes: number, status: FleetHost['status'] = 'active'): FleetHost => ({ status, capacity: shape, allocated: times(sandboxes) });
const waiting = (n: number): Resources[] => Array.from({ length: n }, () => sandbox);

describe('desiredForWaiting', () => {
  it('raises the desired capacity by the hosts the waiting creates need', () => {
    assert.equal(desiredForWaiting({ desired: 1, max: 5, running: 1 }, 2), 3);
  });

  it('asks from zero when the environment rests with no host', () => {
    assert.equal(desiredForWaiting({ desired: 0, max: 3, running: 0 }, 1), 1);
  });

  it('stops at the group maximum, and asks nothing once there', () => {
    assert.equal(desiredForWaiting({ desired: 2, max: 3, running: 2 }, 4), 3);
    assert.equal(desiredForWaiting({ desired: 3, max: 3, running: 3 }, 1), undefined);
  });

  it('asks nothing when no host is needed', () => {
    assert.equal(desiredForWaiting({ desired: 1, max: 3, running: 1 }, 0), undefined);
  });

  it('counts from the hosts running when scale-in lowered the desired capacity below them (protected hosts stay)', () => {
    // Two protected hosts run with desired 0: one more host means desired 3, not 1 (1 would launch nothing).
    assert.equal(desiredForWaiting({ desired: 0, max: 5, running: 2 }, 1), 3);
  });
});

describe('hostsForHeadroom', () => {
  it('asks nothing of an idle fleet, even with headroom (minHosts keeps hosts for that)', () => {
    assert.equal(hostsForHeadroom([], [], 0, shape, 20), 0);
    assert.equal(hostsForHeadroom([host(0), host(0)], [], 0, shape, 20), 0);
  });

  it('adds a host when less than the headroom is free by the scarcest resource', () => {
    // 4 of 8 slots used: 50 % free, enough for 20 %, not for 60 %.
    assert.equal(hostsForHeadroom([host(2), host(2)], [], 0, shape, 20), 0);
    assert.equal(hostsForHeadroom([host(2), host(2)], [], 0, shape, 60), 1);
    // 7 of 8 used (12.5 % free) < 20 %: one more host makes 7 of 12 (42 % free).
    assert.equal(hostsForHeadroom([host(4), host(3)], [], 0, shape, 20), 1);
  });

  it('counts waiting creates as demand and launching hosts as capacity', () => {
    // 4 used + 4 waiting = 8 of 8: full. 20 % free needs 10 slots' worth of capacity: 3 hosts, so one more.
    assert.equal(hostsForHeadroom([host(4), host(0)], waiting(4), 0, shape, 20), 1);
    assert.equal(hostsForHeadroom([host(4), host(0)], waiting(4), 1, shape, 20), 0);
  });

  it('with no headroom asks only for what the demand needs (dev)', () => {
    assert.equal(hostsForHeadroom([host(4)], [], 0, shape, 0), 0);
    assert.equal(hostsForHeadroom([host(4)], waiting(1), 0, shape, 0), 1);
  });

  it('counts out a create larger than a whole host (no number of hosts places it), as hostsToAdd does', () => {
    const tooBig: Resources = { cpu_milli: 1000, memory_mb: 8192, disk_mb: 1536, sandboxes: 1 };
    assert.equal(hostsForHeadroom([host(1)], [tooBig], 0, shape, 0), 0);
    assert.equal(hostsNeeded([host(1)], [tooBig], 0, shape, 20), 0);
  });

  it('leaves draining and lost hosts out of the capacity', () => {
    assert.equal(hostsForHeadroom([host(4), host(0, 'draining')], [], 0, shape, 20), 1);
  });
});

describe('hostsNeeded', () => {
  it('is the larger of room for the waiting creates and the headroom', () => {
    // A fleet at rest: one create waiting needs one host; 20 % headroom is kept by it too (1 of 4 used).
    assert.equal(hostsNeeded([], waiting(1), 0, shape, 20), 1);
    // 3 + 1 waiting fits the one host, but leaves nothing free: headroom asks one more.
    assert.equal(hostsNeeded([host(3)], waiting(1), 0, shape, 0), 0);
    assert.equal(hostsNeeded([host(3)], waiting(1), 0, shape, 20), 1);
    // Fragmentation: a create of 3 CPUs fits no host with 2 free each, whatever the totals say.
    const big: Resources = { cpu_milli: 3000, memory_mb: 1024, disk_mb: 1536, sandboxes: 1 };
    assert.equal(hostsNeeded([host(2), host(2)], [big], 0, shape, 0), 1);
  });
});

describe('utilizationWithoutOneHost and the scale-in threshold', () => {
  it('derives the threshold from the headroom', () => {
    assert.equal(scaleInThresholdPercent(20), 80);
    assert.equal(scaleInThresholdPercent(0), 100);
  });

  it('reads how full the hosts left would be with an empty host given back', () => {
    // 3 used on hosts of 4+4+4 with one empty: without it 3 of 8 = 37.5 %.
    assert.equal(utilizationWithoutOneHost([host(2), host(1), host(0)], []), 37.5);
    assert.ok(allowsScaleIn(37.5, 20));
  });

  it('lets a host go only when the hosts left keep the headroom (no scale-in that the next minute undoes)', () => {
    // 7 used on 3 hosts, one empty: without it 7 of 8 = 87.5 % > 80 %: keeps it, and the headroom wants it too.
    const fleet = [host(4), host(3), host(0)];
    const reading = utilizationWithoutOneHost(fleet, []);
    assert.equal(reading, 87.5);
    assert.equal(allowsScaleIn(reading, 20), false);
    assert.equal(hostsForHeadroom(fleet.slice(0, 2), [], 0, shape, 20), 1, 'the host it keeps is the one the headroom would ask back');
    // With no headroom (dev) the same host may go: what runs still fits.
    assert.equal(allowsScaleIn(reading, 0), true);
  });

  it('never lets a host go while creates wait, or when every host holds sandboxes (protected)', () => {
    assert.equal(utilizationWithoutOneHost([host(1), host(0)], waiting(1)), noScaleInReading);
    assert.equal(utilizationWithoutOneHost([host(1), host(1)], []), noScaleInReading);
    assert.equal(allowsScaleIn(noScaleInReading, 0), false);
  });

  it('lets the last empty host of an idle fleet go (dev rests at zero)', () => {
    assert.equal(utilizationWithoutOneHost([host(0)], []), 0);
    assert.ok(allowsScaleIn(0, 0));
  });

  it('is published with the capacity metric, rounded up so it never rounds into the threshold', () => {
    const hosts: FleetHost[] = [
      { status: 'active', capacity: { ...shape, sandboxes: 3 }, allocated: { cpu_milli: 1000, memory_mb: 1024, disk_mb: 1536, sandboxes: 1 } },
      host(0),
    ];
    const metric = capacityMetric(hosts, []);
    // 1 of 3 slots: 33.33...% -> 33.4, never 33.3.
    assert.equal(metric.utilizationWithoutOneHostPercent, 33.4);
    assert.equal(capacityMetric([host(1)], waiting(1)).utilizationWithoutOneHostPercent, noScaleInReading);
  });
});
