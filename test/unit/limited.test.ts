/**
 * limited(n): at most n jobs at once, the rest in the order they asked; a job
 * that fails frees its turn and fails only its own caller.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { limited } from '../../host-agent/src/limited';

/** Jobs that end when the test says so, recording the order they began in and the most that ran at once. */
function controlledJobs() {
  const began: number[] = [];
  const finish = new Map<number, (err?: Error) => void>();
  let running = 0;
  let most = 0;
  const job = (id: number) => () =>
    new Promise<number>((resolve, reject) => {
      began.push(id);
      most = Math.max(most, ++running);
      finish.set(id, (err) => {
        running--;
        if (err) reject(err);
        else resolve(id);
      });
    });
  return { job, began, end: (id: number, err?: Error) => finish.get(id)!(err), most: () => most };
}

const settle = () => new Promise((resolve) => setImmediate(resolve));

describe('limited()', () => {
  it('runs at most n at once and the rest first come, first served', async () => {
    const jobs = controlledJobs();
    const inTurn = limited(2);
    const answers = [1, 2, 3, 4, 5].map((id) => inTurn(jobs.job(id)));
    await settle();
    assert.deepEqual(jobs.began, [1, 2], 'two begin at once; three wait');
    jobs.end(2);
    await settle();
    assert.deepEqual(jobs.began, [1, 2, 3], 'the job that asked first of those waiting is next');
    jobs.end(1);
    jobs.end(3);
    await settle();
    assert.deepEqual(jobs.began, [1, 2, 3, 4, 5]);
    jobs.end(4);
    jobs.end(5);
    assert.deepEqual(await Promise.all(answers), [1, 2, 3, 4, 5], "each caller gets its own job's answer");
    assert.equal(jobs.most(), 2);
  });

  it('a failed job frees its turn and fails only its own caller', async () => {
    const jobs = controlledJobs();
    const inTurn = limited(1);
    const first = inTurn(jobs.job(1));
    const second = inTurn(jobs.job(2));
    await settle();
    jobs.end(1, new Error('docker said no'));
    await assert.rejects(first, /docker said no/);
    await settle();
    assert.deepEqual(jobs.began, [1, 2]);
    jobs.end(2);
    assert.equal(await second, 2);
  });

  it('a job that throws before it awaits anything frees its turn too', async () => {
    const inTurn = limited(1);
    await assert.rejects(
      inTurn(() => {
        throw new Error('bad request');
      }),
      /bad request/,
    );
    assert.equal(await inTurn(async () => 'next'), 'next');
  });

  it('a job still running after its turn gives the turn to the next one and goes on', async () => {
    const jobs = controlledJobs();
    const inTurn = limited(1, { turnMs: 250 });
    const hung = inTurn(jobs.job(1));
    const next = inTurn(jobs.job(2));
    await settle();
    assert.deepEqual(jobs.began, [1], 'the next waits while the turn lasts');
    await new Promise((r) => setTimeout(r, 300));
    await settle();
    assert.deepEqual(jobs.began, [1, 2], 'the turn is over: the next begins');
    jobs.end(2);
    assert.equal(await next, 2);
    jobs.end(1);
    assert.equal(await hung, 1, 'the first still ends with its own answer');
    // It gave its turn up once; its end does not free a second one.
    const after = [inTurn(jobs.job(3)), inTurn(jobs.job(4))];
    await settle();
    assert.deepEqual(jobs.began, [1, 2, 3]);
    jobs.end(3);
    await settle();
    assert.deepEqual(jobs.began, [1, 2, 3, 4]);
    jobs.end(4);
    assert.deepEqual(await Promise.all(after), [3, 4]);
  });

  it('refuses a limit that is not a whole number of at least 1', () => {
    for (const n of [0, -1, 1.5, Number.NaN]) assert.throws(() => limited(n), RangeError);
  });
});
