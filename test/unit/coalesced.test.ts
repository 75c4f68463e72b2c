/**
 * coalesced(): a burst of calls costs at most two runs, never two at once,
 * and every caller waits for a run that began after it asked.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { coalesced } from '../../host-agent/src/coalesced';

/** A job whose runs end when the test says so; it records when each began and whether two overlapped. */
function controlledJob() {
  const runs: { began: number; finish: (err?: Error) => void }[] = [];
  let running = 0;
  let overlapped = false;
  let clock = 0;
  const run = () =>
    new Promise<void>((resolve, reject) => {
      running++;
      if (running > 1) overlapped = true;
      runs.push({
        began: ++clock,
        finish: (err) => {
          running--;
          if (err) reject(err);
          else resolve();
        },
      });
    });
  return { run, runs, tick: () => ++clock, overlapped: () => overlapped };
}

const settle = () => new Promise((resolve) => setImmediate(resolve));

describe('coalesced()', () => {
  it('runs once for a lone call', async () => {
    const job = controlledJob();
    const call = coalesced(job.run);
    const p = call();
    assert.equal(job.runs.length, 1);
    job.runs[0]!.finish();
    await p;
  });

  it('folds a burst into the running run and one more, never two at once', async () => {
    const job = controlledJob();
    const call = coalesced(job.run);
    const first = call();
    const asked = job.tick();
    const burst = Array.from({ length: 50 }, () => call());
    assert.equal(job.runs.length, 1, 'the burst waits for the run under way');
    job.runs[0]!.finish();
    await first;
    await settle();
    assert.equal(job.runs.length, 2, 'one more run serves all fifty');
    assert.ok(job.runs[1]!.began > asked, 'it began after they asked');
    job.runs[1]!.finish();
    await Promise.all(burst);
    assert.equal(job.overlapped(), false);
  });

  it('a call made while the queued run waits joins it; one made while it runs queues another', async () => {
    const job = controlledJob();
    const call = coalesced(job.run);
    void call();
    const queued = call();
    const joined = call();
    assert.equal(queued, joined);
    job.runs[0]!.finish();
    await settle();
    assert.equal(job.runs.length, 2);
    const later = call();
    assert.notEqual(later, queued);
    job.runs[1]!.finish();
    await queued;
    await settle();
    assert.equal(job.runs.length, 3);
    job.runs[2]!.finish();
    await later;
  });

  it('a failed run rejects its own callers only; the queued run still happens', async () => {
    const job = controlledJob();
    const call = coalesced(job.run);
    const first = call();
    const second = call();
    job.runs[0]!.finish(new Error('iptables-restore failed'));
    await assert.rejects(first, /iptables-restore failed/);
    await settle();
    assert.equal(job.runs.length, 2);
    job.runs[1]!.finish();
    await second;
    // And the next lone call starts a fresh run.
    const third = call();
    assert.equal(job.runs.length, 3);
    job.runs[2]!.finish();
    await third;
  });
});
