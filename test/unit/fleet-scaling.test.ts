/**
 * Scaling decisions (lambdas/shared/fleet-scaling.ts): the desired capacity a
 * create that waits for room asks the group for.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { desiredForWaiting } from '../../lambdas/shared/fleet-scaling';

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
