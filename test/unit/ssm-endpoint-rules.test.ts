import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ssmStdoutCap } from '../../contract/host-protocol';
import { AwsJsonError } from '../../lib/local/aws-json';
import { pluginOutput } from '../../lib/local/ssm/answers';
import { CappedText, commandStatus, exitOutcome, isTerminal, newInvocation, type Invocation, type InvocationStatus } from '../../lib/local/ssm/invocation';
import { parsePage, parseSendCommand, takePage, type RequestBody } from '../../lib/local/ssm/requests';

const instance = 'i-0123456789abcdef0';

function invocation(status: InvocationStatus): Invocation {
  const inv = newInvocation({
    commandId: '00000000-0000-4000-8000-000000000000',
    instanceId: instance,
    comment: '',
    documentVersion: '$DEFAULT',
    requestedAt: 0,
    visibleAt: 0,
    commands: ['true'],
    workingDirectory: '',
    executionTimeoutSeconds: 60,
  });
  inv.status = status;
  return inv;
}

function refusal(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof AwsJsonError, `expected an AwsJsonError, got ${String(err)}`);
    return err.code;
  }
  assert.fail('expected a refusal');
}

const send = (extra: RequestBody = {}): RequestBody => ({
  DocumentName: 'AWS-RunShellScript',
  InstanceIds: [instance],
  Parameters: { commands: ['echo hi'] },
  ...extra,
});

describe('the local SSM endpoint: invocation rules', () => {
  it('counts only Success, Failed, TimedOut and Cancelled as terminal', () => {
    const terminal = (['Pending', 'InProgress', 'Success', 'Failed', 'TimedOut', 'Cancelling', 'Cancelled'] as const).filter(isTerminal);
    assert.deepEqual(terminal, ['Success', 'Failed', 'TimedOut', 'Cancelled']);
  });

  it('ends a killed script by why it was killed, whatever its exit status', () => {
    assert.deepEqual(exitOutcome('timeout', null, ''), { status: 'TimedOut', details: 'ExecutionTimedOut', responseCode: -1 });
    assert.deepEqual(exitOutcome('gone', 0, ''), { status: 'Failed', details: 'Undeliverable', responseCode: -1 });
    assert.deepEqual(exitOutcome('cancel', 137, ''), { status: 'Cancelled', details: 'Cancelled', responseCode: -1 });
  });

  it("ends an exit 0 as Success and any other as Failed with the agent's stderr line", () => {
    assert.deepEqual(exitOutcome(undefined, 0, ''), { status: 'Success', details: 'Success', responseCode: 0 });
    assert.deepEqual(exitOutcome(undefined, 3, 'oops'), {
      status: 'Failed',
      details: 'Failed',
      responseCode: 3,
      stderrLine: '\nfailed to run commands: exit status 3',
    });
    assert.equal(exitOutcome(undefined, null, 'line\n').stderrLine, 'failed to run commands: exit status -1');
  });

  it('keeps the first characters of a stream up to its cap, never half a surrogate pair', () => {
    const text = new CappedText(5);
    text.push(Buffer.from('abcd'));
    text.push(Buffer.from('😀xyz'));
    text.end();
    assert.equal(text.text, 'abcd');
    const full = new CappedText(ssmStdoutCap);
    full.push(Buffer.from('x'.repeat(ssmStdoutCap + 10)));
    assert.equal(full.text.length, ssmStdoutCap);
  });

  it('joins a character split across chunks', () => {
    const text = new CappedText(10);
    const bytes = Buffer.from('é');
    text.push(bytes.subarray(0, 1));
    text.push(bytes.subarray(1));
    text.end();
    assert.equal(text.text, 'é');
  });

  it('says a command is InProgress until every invocation ends, then Success only if all succeeded', () => {
    assert.equal(commandStatus([invocation('Success'), invocation('InProgress')]), 'InProgress');
    assert.equal(commandStatus([invocation('Success'), invocation('Success')]), 'Success');
    assert.equal(commandStatus([invocation('Success'), invocation('Cancelled')]), 'Failed');
  });

  it("puts stderr after stdout in the plugin output and cuts it at 2,500 characters with SSM's marker", () => {
    assert.equal(pluginOutput('out', ''), 'out');
    assert.equal(pluginOutput('out', 'err'), 'out\n----------ERROR-------\nerr');
    const long = pluginOutput('x'.repeat(3_000), '');
    assert.equal(long.length, 2_500);
    assert.ok(long.endsWith('\n---Output truncated---'));
  });
});

describe('the local SSM endpoint: requests', () => {
  it("reads a SendCommand with SSM's defaults", () => {
    const r = parseSendCommand(send(), () => true);
    assert.equal(r.documentVersion, '$DEFAULT');
    assert.deepEqual(r.commands, ['echo hi']);
    assert.equal(r.workingDirectory, '');
    assert.equal(r.executionTimeoutSeconds, 3600);
    assert.equal(r.timeoutSeconds, 3600);
    assert.equal(r.maxConcurrency, '50');
    assert.equal(r.maxErrors, '0');
  });

  it("refuses what SSM refuses, in SSM's words", () => {
    assert.equal(
      refusal(() => parseSendCommand(send(), () => false)),
      'InvalidInstanceId',
    );
    assert.equal(
      refusal(() => parseSendCommand(send({ DocumentName: 'AWS-RunPowerShellScript' }), () => true)),
      'InvalidDocument',
    );
    assert.equal(
      refusal(() => parseSendCommand(send({ InstanceIds: [instance, instance] }), () => true)),
      'DuplicateInstanceId',
    );
    assert.equal(
      refusal(() => parseSendCommand(send({ Targets: [] }), () => true)),
      'ValidationException',
    );
    assert.equal(
      refusal(() => parseSendCommand(send({ TimeoutSeconds: 29 }), () => true)),
      'ValidationException',
    );
    assert.equal(
      refusal(() => parseSendCommand(send({ Parameters: { commands: ['x'], executionTimeout: ['172801'] } }), () => true)),
      'InvalidParameters',
    );
    assert.equal(
      refusal(() => parseSendCommand(send({ Parameters: { commands: ['x'], other: ['y'] } }), () => true)),
      'InvalidParameters',
    );
    assert.equal(
      refusal(() => parseSendCommand(send({ Comment: 7 }), () => true)),
      'SerializationException',
    );
  });

  it('refuses a malformed MaxConcurrency before the command exists', () => {
    assert.equal(
      refusal(() => parseSendCommand(send({ MaxConcurrency: 5 }), () => true)),
      'SerializationException',
    );
  });

  it('pages a listing by offset, with a token only while more follow', () => {
    const all = [1, 2, 3, 4, 5];
    const first = takePage(all, parsePage({ MaxResults: 2 }));
    assert.deepEqual(first.items, [1, 2]);
    const second = takePage(all, parsePage({ MaxResults: 2, NextToken: first.nextToken }));
    assert.deepEqual(second.items, [3, 4]);
    const last = takePage(all, parsePage({ MaxResults: 2, NextToken: second.nextToken }));
    assert.deepEqual(last, { items: [5] });
  });

  it('refuses a page size outside 1..50 and a token it did not make', () => {
    assert.equal(
      refusal(() => parsePage({ MaxResults: 51 })),
      'ValidationException',
    );
    assert.equal(
      refusal(() => parsePage({ MaxResults: 0 })),
      'ValidationException',
    );
    assert.equal(
      refusal(() => parsePage({ NextToken: 'not-a-number' })),
      'InvalidNextToken',
    );
  });
});
