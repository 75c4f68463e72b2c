/**
 * The fleet simulation (scripts/simulate-fleet.ts) on a short window: the
 * real placement and scaling decisions under synthetic traffic keep their
 * invariants (no overcommit, no host with sandboxes scaled in, every create
 * placed or failed no_capacity once its wait is over, capacity asked for
 * whenever the headroom is short and the group may grow), and the replay is
 * deterministic for a seed.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { capacityWaitSeconds } from '../../lib/constructs/control-plane-functions';
import type { DeploymentEnvironment } from '../../lib/environment';
import { environmentFromCdkJson, simulate, timings, trafficProfiles, type SimulationResult, type TrafficProfile } from '../../scripts/simulate-fleet';

/** Twelve hours from midnight: the night, the morning ramp and the first bursts (08:00-20:00). */
const hours = 12;

function run(
  env: 'dev' | 'prod',
  o: { seed?: number; hosts?: Partial<DeploymentEnvironment['hosts']>; traffic?: Partial<TrafficProfile> } = {},
): SimulationResult {
  const e = environmentFromCdkJson(env);
  return simulate({
    environment: { ...e, hosts: { ...e.hosts, ...o.hosts } },
    traffic: { ...trafficProfiles[env]!, ...o.traffic },
    seed: o.seed ?? 1,
    hours,
  });
}

function assertAccounted(r: SimulationResult): void {
  assert.deepEqual(r.violations, [], `${r.environment}: invariants`);
  assert.ok(r.creates > 0, 'the window has traffic');
  assert.equal(r.placedAtOnce + r.waitedForCapacity, r.creates, 'every create was placed at once or waited');
  assert.equal(
    r.createWaits.length + r.failedNoCapacity + r.stillWaitingAtEnd,
    r.creates,
    'every create got a host, failed no_capacity, or is still within its wait',
  );
  const longest = r.createWaits.at(-1) ?? 0;
  assert.ok(longest <= capacityWaitSeconds + timings.createColdContainerSeconds, `no create got a host after its wait (longest ${longest} s)`);
  assert.ok(r.waitP50 <= r.waitP95 && r.waitP95 <= r.waitP99);
}

describe('simulate-fleet on a short window', () => {
  for (const env of ['dev', 'prod'] as const) {
    it(`keeps every invariant with the ${env} settings of cdk.json`, () => {
      const r = run(env);
      assertAccounted(r);
      const e = environmentFromCdkJson(env);
      assert.ok(r.peakHosts <= e.hosts.maxHosts, 'never past the group maximum');
      assert.ok(r.hostHours > 0 && r.costUsd > 0);
    });
  }

  it('rests at zero in dev: the first create waits for a host to boot, and idle hosts are given back', () => {
    const r = run('dev');
    assert.ok(r.waitedForCapacity > 0);
    assert.ok(r.scaleIns > 0, 'hosts go when nothing needs them');
    assert.ok(r.hostHours < hours * environmentFromCdkJson('dev').hosts.maxHosts);
  });

  it('keeps the invariants under a flood the maximum cannot hold (creates fail no_capacity, none is lost)', () => {
    const r = run('prod', { traffic: { peakCreatesPerMinute: 5, burstSize: 60 } });
    assertAccounted(r);
    assert.ok(r.failedNoCapacity > 0, 'the flood outruns the maximum');
  });

  it('with headroom, fewer creates wait than without it (capacity is added ahead of demand)', () => {
    const withHeadroom = run('prod', { hosts: { headroomPercent: 30, maxHosts: 30 } });
    const without = run('prod', { hosts: { headroomPercent: 0, maxHosts: 30 } });
    assertAccounted(withHeadroom);
    assertAccounted(without);
    assert.ok(
      withHeadroom.waitedForCapacity < without.waitedForCapacity,
      `${withHeadroom.waitedForCapacity} waited with 30 % headroom, ${without.waitedForCapacity} without`,
    );
    assert.ok(withHeadroom.hostHours >= without.hostHours, 'headroom costs host-hours');
  });

  it('is deterministic for a seed, and another seed replays another day', () => {
    const a = run('prod', { seed: 5 });
    const b = run('prod', { seed: 5 });
    const c = run('prod', { seed: 6 });
    assert.deepEqual(a, b);
    assert.notDeepEqual(a.createWaits, c.createWaits);
  });
});
