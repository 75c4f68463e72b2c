import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { allowedFrom, isActive, isTerminal, nextStatus, sandboxEvents, sandboxStatuses, targetOf } from '../../lambdas/shared/sandbox-state';

describe('the sandbox state machine', () => {
  it('moves creating -> ready -> running -> shutting_down -> stopped', () => {
    assert.equal(nextStatus('creating', 'created'), 'ready');
    assert.equal(nextStatus('ready', 'heartbeat'), 'running');
    assert.equal(nextStatus('running', 'begin_shutdown'), 'shutting_down');
    assert.equal(nextStatus('shutting_down', 'stopped'), 'stopped');
    assert.equal(nextStatus('shutting_down', 'expired'), 'expired');
  });

  it('refuses every event from a terminal status', () => {
    for (const s of ['stopped', 'expired', 'failed'] as const) {
      assert.ok(isTerminal(s));
      for (const e of sandboxEvents) {
        assert.equal(nextStatus(s, e), null, `${e} from ${s}`);
      }
    }
  });

  it('accepts exec only in ready and running', () => {
    assert.deepEqual(sandboxStatuses.filter(isActive), ['ready', 'running']);
  });

  it('pauses only an active sandbox and resumes only a paused one, through pausing and resuming', () => {
    assert.deepEqual([...allowedFrom('pause')], ['ready', 'running']);
    assert.equal(nextStatus('running', 'pause'), 'pausing');
    assert.equal(nextStatus('pausing', 'paused'), 'paused');
    assert.equal(nextStatus('pausing', 'pause_failed'), 'ready');
    assert.deepEqual([...allowedFrom('resume')], ['paused']);
    assert.equal(nextStatus('paused', 'resume'), 'resuming');
    assert.equal(nextStatus('resuming', 'resumed'), 'ready');
    assert.equal(nextStatus('resuming', 'resume_failed'), 'paused');
  });

  it('lets a destroy win over a pause or resume at work, and nothing but the host finish one', () => {
    assert.equal(nextStatus('pausing', 'begin_shutdown'), 'shutting_down');
    assert.equal(nextStatus('resuming', 'begin_shutdown'), 'shutting_down');
    assert.equal(nextStatus('pausing', 'pause'), null);
    assert.equal(nextStatus('shutting_down', 'paused'), null);
    assert.equal(nextStatus('pausing', 'heartbeat'), null);
  });

  it('reaches every status from creating, and every live status can still end', () => {
    const reached = new Set<string>(['creating']);
    for (let grew = true; grew; ) {
      grew = false;
      for (const e of sandboxEvents) {
        for (const from of allowedFrom(e)) {
          if (reached.has(from) && !reached.has(targetOf(e))) {
            reached.add(targetOf(e));
            grew = true;
          }
        }
      }
    }
    assert.deepEqual(
      [...sandboxStatuses].filter((s) => !reached.has(s)),
      [],
    );
    for (const s of sandboxStatuses.filter((x) => !isTerminal(x))) {
      assert.ok(
        sandboxEvents.some((e) => nextStatus(s, e) !== null && (isTerminal(nextStatus(s, e)!) || nextStatus(s, e) === 'shutting_down')),
        `${s} has a way to its end`,
      );
    }
  });
});
