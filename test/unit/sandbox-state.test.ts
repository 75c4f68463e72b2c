import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { allowedFrom, isActive, isTerminal, nextStatus, sandboxStatuses } from '../../lambdas/shared/sandbox-state';

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
      for (const e of ['created', 'heartbeat', 'begin_shutdown', 'stopped', 'expired', 'fail', 'pause', 'resume'] as const) {
        assert.equal(nextStatus(s, e), null, `${e} from ${s}`);
      }
    }
  });

  it('accepts exec only in ready and running', () => {
    assert.deepEqual(sandboxStatuses.filter(isActive), ['ready', 'running']);
  });

  it('pauses only a live sandbox and resumes only a paused one', () => {
    assert.deepEqual([...allowedFrom('pause')], ['ready', 'running']);
    assert.deepEqual([...allowedFrom('resume')], ['paused']);
    assert.equal(nextStatus('paused', 'resume'), 'ready');
  });
});
