/**
 * allEnded (host-agent/src/all-ended.ts): Promise.all whose failure waits for every step, so a clean-up
 * never races a step still running (a create's mounts, a claim's rename).
 * Run: node --import tsx --test test/unit/all-ended.test.ts
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { allEnded } from '../../host-agent/src/all-ended';

const after = <T>(ms: number, value: T, fail = false) =>
  new Promise<T>((resolve, reject) => setTimeout(() => (fail ? reject(new Error(String(value))) : resolve(value)), ms));

describe('allEnded', () => {
  it('answers every value in the steps order', async () => {
    assert.deepEqual(await allEnded([after(20, 'a'), after(5, 1), Promise.resolve(true)]), ['a', 1, true]);
  });

  it('throws a failure only once the slower steps have ended', async () => {
    let slowEnded = false;
    const slow = after(60, 'mounted').then((v) => {
      slowEnded = true;
      return v;
    });
    await assert.rejects(allEnded([after(5, 'no room', true), slow]), /no room/);
    assert.equal(slowEnded, true, 'Promise.all would have thrown while this step still ran');
  });

  it('throws the first failure in the steps order, not in time', async () => {
    await assert.rejects(allEnded([after(40, 'first', true), after(5, 'second', true)]), /first/);
  });
});
