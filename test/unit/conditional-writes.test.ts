/**
 * conditionally() and transactionally(): a refused condition or a cancelled
 * transaction is an answer the caller reads (with the item as it stood), and
 * every other failure is still thrown. The SDK's own exception classes stand
 * in for DynamoDB's answers.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConditionalCheckFailedException, ProvisionedThroughputExceededException, TransactionCanceledException } from '@aws-sdk/client-dynamodb';
import { conditionally, transactionally } from '../../lambdas/shared/clients/dynamodb';

const metadata = { $metadata: {} };

describe('conditionally', () => {
  it('answers applied with the output of a write that went through', async () => {
    assert.deepEqual(await conditionally(Promise.resolve({ Attributes: { a: 1 } })), { applied: true, output: { Attributes: { a: 1 } } });
  });

  it('answers refused with the item as it stood when the condition did not hold', async () => {
    const refused = new ConditionalCheckFailedException({
      message: 'The conditional request failed',
      ...metadata,
      Item: { status: { S: 'paused' }, n: { N: '3' } },
    });
    assert.deepEqual(await conditionally(Promise.reject(refused)), { applied: false, current: { status: 'paused', n: 3 } });
    const bare = new ConditionalCheckFailedException({ message: 'The conditional request failed', ...metadata });
    assert.deepEqual(await conditionally(Promise.reject(bare)), { applied: false, current: undefined });
  });

  it('throws every other failure', async () => {
    const throttled = new ProvisionedThroughputExceededException({ message: 'slow down', ...metadata });
    await assert.rejects(conditionally(Promise.reject(throttled)), throttled);
  });
});

describe('transactionally', () => {
  it('answers applied with the output of a transaction that went through', async () => {
    assert.deepEqual(await transactionally(Promise.resolve({})), { applied: true, output: {} });
  });

  it('answers each item of a cancelled transaction in order: fine, condition refused (with the item), or another reason', async () => {
    const cancelled = new TransactionCanceledException({
      message: 'Transaction cancelled',
      ...metadata,
      CancellationReasons: [{ Code: 'None' }, { Code: 'ConditionalCheckFailed', Item: { status: { S: 'ending' } } }, { Code: 'TransactionConflict' }],
    });
    const answer = await transactionally(Promise.reject(cancelled));
    assert.equal(answer.applied, false);
    assert.ok(!answer.applied);
    assert.deepEqual(answer.items, [
      { code: 'None', conditionFailed: false, current: undefined },
      { code: 'ConditionalCheckFailed', conditionFailed: true, current: { status: 'ending' } },
      { code: 'TransactionConflict', conditionFailed: false, current: undefined },
    ]);
    assert.equal(answer.error, cancelled, 'the SDK error is kept for reasons the caller does not expect');
  });

  it('throws every other failure, a single write refused included', async () => {
    const refused = new ConditionalCheckFailedException({ message: 'The conditional request failed', ...metadata });
    await assert.rejects(transactionally(Promise.reject(refused)), refused);
  });
});
