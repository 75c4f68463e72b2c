import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ssmStdoutCap } from '../../contract/host-protocol';
import { readInvocation } from '../../lambdas/shared/host-answer';
import { HostDispatchError, isThrottling, isTransient, ssmFailure } from '../../lambdas/shared/host-dispatch-error';
import { assertHostVerb } from '../../lambdas/shared/host-request';

const instanceId = 'i-0123456789abcdef0';

type Reading = Parameters<typeof readInvocation>[2];

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof HostDispatchError, `expected a HostDispatchError, got ${String(err)}`);
    return err.code;
  }
  assert.fail('expected a HostDispatchError');
}

const read = (inv: Reading) => readInvocation(instanceId, 'status', { CommandId: 'c-1', ...inv });

describe('reading an SSM invocation of the host-agent', () => {
  it('is not done while the command waits, runs or is being cancelled', () => {
    for (const Status of ['Pending', 'InProgress', 'Delayed', 'Cancelling'] as const) {
      assert.deepEqual(read({ Status }), { done: false }, Status);
    }
  });

  it("answers the host's result from its envelope, whichever way the script exited", () => {
    const stdout = 'noise\n{"ok":true,"result":{"exitCode":0}}\n';
    assert.deepEqual(read({ Status: 'Success', StandardOutputContent: stdout }), { done: true, result: { exitCode: 0 } });
    assert.deepEqual(read({ Status: 'Failed', StandardOutputContent: stdout }), { done: true, result: { exitCode: 0 } });
  });

  it("passes the host's own refusal on with its code", () => {
    try {
      read({ Status: 'Failed', StandardOutputContent: '{"ok":false,"error":{"code":"not_found","message":"no such sandbox"}}' });
      assert.fail('expected a refusal');
    } catch (err) {
      assert.ok(err instanceof HostDispatchError);
      assert.equal(err.code, 'host_error');
      assert.equal(err.hostCode, 'not_found');
    }
  });

  it("maps SSM's endings: timeout, unreachable, cancelled, cut, failed", () => {
    assert.equal(
      code(() => read({ Status: 'TimedOut', StatusDetails: 'ExecutionTimedOut' })),
      'host_timeout',
    );
    assert.equal(
      code(() => read({ Status: 'TimedOut', StatusDetails: 'DeliveryTimedOut' })),
      'host_unreachable',
    );
    assert.equal(
      code(() => read({ Status: 'Failed', StatusDetails: 'Undeliverable' })),
      'host_unreachable',
    );
    assert.equal(
      code(() => read({ Status: 'Cancelled', StatusDetails: 'Cancelled' })),
      'host_cancelled',
    );
    assert.equal(
      code(() => read({ Status: 'Success', StandardOutputContent: 'x'.repeat(ssmStdoutCap) })),
      'output_too_large',
    );
    assert.equal(
      code(() => read({ Status: 'Failed', ResponseCode: 2, StandardErrorContent: 'boom' })),
      'host_failed',
    );
    assert.equal(
      code(() => read({ Status: 'Success', StandardOutputContent: '' })),
      'host_failed',
    );
  });
});

describe('mapping SSM errors', () => {
  const sdkError = (name: string, extra: Record<string, unknown> = {}) => Object.assign(new Error(name), { name, ...extra });

  it("treats throttling by name or by the SDK's retryable flag as throttling", () => {
    assert.ok(isThrottling(sdkError('ThrottlingException')));
    assert.ok(isThrottling(sdkError('Whatever', { $retryable: { throttling: true } })));
    assert.ok(!isThrottling(sdkError('InvalidInstanceId')));
  });

  it('asks again after throttling, a 5xx or a dropped connection, not after a refusal', () => {
    assert.ok(isTransient(sdkError('InternalServerError')));
    assert.ok(isTransient(sdkError('Whatever', { $metadata: { httpStatusCode: 503 } })));
    assert.ok(isTransient(Object.assign(new Error('reset'), { code: 'ECONNRESET' })));
    assert.ok(!isTransient(sdkError('InvalidCommandId', { $metadata: { httpStatusCode: 400 } })));
  });

  it('says an unknown instance is unreachable and anything else is an SSM error, not delivered', () => {
    const unreachable = ssmFailure('SendCommand', instanceId, sdkError('InvalidInstanceId'));
    assert.equal(unreachable.code, 'host_unreachable');
    assert.ok(unreachable.notDelivered);
    const other = ssmFailure('SendCommand', instanceId, sdkError('AccessDeniedException'));
    assert.equal(other.code, 'ssm_error');
    assert.match(other.message, /SendCommand failed \(AccessDeniedException\)/);
    assert.ok(other.notDelivered);
    const passed = new HostDispatchError('throttled', 'x');
    assert.equal(ssmFailure('SendCommand', instanceId, passed), passed);
  });

  it('counts an SSM error on a command already sent as possibly delivered', () => {
    assert.ok(!new HostDispatchError('ssm_error', 'x', { commandId: 'c-1' }).notDelivered);
  });

  it('refuses a verb the host-agent does not have', () => {
    assert.equal(
      code(() => assertHostVerb('rm -rf')),
      'invalid_dispatch',
    );
  });
});
