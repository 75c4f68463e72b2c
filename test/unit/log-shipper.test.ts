/**
 * The host daemon's lines to CloudWatch Logs: whole lines, in order, in
 * batches; a refused batch is kept and sent again; an overflow is counted
 * and said, never dropped silently. CloudWatch Logs has no local engine: its
 * client is a recording fake here (the suite's name says so); the IAM the
 * calls need is checked against the daemon's bundle in
 * test/cdk/handler-permissions.test.ts.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { CloudWatchLogsClient } from '@aws-sdk/client-cloudwatch-logs';
import { LogShipper } from '../../host-agent/src/log-shipper';

/** A CloudWatch Logs client that records calls; the first `failures` PutLogEvents fail with `errorName`. */
function fakeClient(failures = 0, errorName = 'ThrottlingException') {
  const calls: { name: string; input: any }[] = [];
  let left = failures;
  const client = {
    send: async (command: { constructor: { name: string }; input: unknown }) => {
      calls.push({ name: command.constructor.name, input: command.input });
      if (command.constructor.name === 'PutLogEventsCommand' && left > 0) {
        left -= 1;
        throw Object.assign(new Error(errorName), { name: errorName });
      }
      return {};
    },
  } as unknown as CloudWatchLogsClient;
  return { client, calls, sent: () => calls.filter((c) => c.name === 'PutLogEventsCommand').flatMap((c) => c.input.logEvents.map((e: any) => e.message)) };
}

/** Runs `act` with stderr (the shipper's own complaints) silenced. */
async function quietly(act: () => Promise<void>): Promise<void> {
  const write = process.stderr.write;
  process.stderr.write = (() => true) as typeof process.stderr.write;
  try {
    await act();
  } finally {
    process.stderr.write = write;
  }
}

describe('the host log shipper (CloudWatch Logs faked: no local engine)', () => {
  it('sends whole lines in order to the host stream, made once', async () => {
    const fake = fakeClient();
    const shipper = new LogShipper({ logGroup: '/ephemeral-sandbox/dev/hosts', stream: 'i-0abc', client: fake.client });
    shipper.capture('stdout', '{"a":1}\n{"b"');
    shipper.capture('stdout', ':2}\n');
    shipper.capture('stderr', '{"level":"ERROR"}\n');
    await shipper.flush();
    assert.deepEqual(fake.sent(), ['{"a":1}', '{"b":2}', '{"level":"ERROR"}']);
    assert.deepEqual(fake.calls[0], { name: 'CreateLogStreamCommand', input: { logGroupName: '/ephemeral-sandbox/dev/hosts', logStreamName: 'i-0abc' } });
    shipper.capture('stdout', 'next\n');
    await shipper.flush();
    assert.equal(fake.calls.filter((c) => c.name === 'CreateLogStreamCommand').length, 1);
  });

  it('keeps a refused batch and sends it with the next flush', async () => {
    const fake = fakeClient(1);
    const shipper = new LogShipper({ logGroup: 'g', stream: 's', client: fake.client });
    await quietly(async () => {
      shipper.capture('stdout', 'one\ntwo\n');
      await shipper.flush();
      assert.deepEqual(fake.sent(), ['one', 'two']); // the refused attempt
      await shipper.flush();
      assert.deepEqual(fake.sent(), ['one', 'two', 'one', 'two']);
    });
  });

  it('drops a batch CloudWatch rejects for good, says how many lines, and ships the lines after it', async () => {
    const fake = fakeClient(1, 'InvalidParameterException');
    const shipper = new LogShipper({ logGroup: 'g', stream: 's', client: fake.client });
    await quietly(async () => {
      shipper.capture('stdout', 'too old\n');
      await shipper.flush();
      shipper.capture('stdout', 'fresh\n');
      await shipper.flush();
    });
    const sent = fake.sent();
    assert.equal(sent[0], 'too old'); // the rejected attempt
    assert.match(sent[1]!, /"dropped":1/);
    assert.equal(sent[2], 'fresh');
  });

  it('makes its stream again when it was deleted', async () => {
    const fake = fakeClient(1, 'ResourceNotFoundException');
    const shipper = new LogShipper({ logGroup: 'g', stream: 's', client: fake.client });
    await quietly(async () => {
      shipper.capture('stdout', 'line\n');
      await shipper.flush();
      await shipper.flush();
    });
    assert.deepEqual(
      fake.calls.map((c) => c.name),
      ['CreateLogStreamCommand', 'PutLogEventsCommand', 'CreateLogStreamCommand', 'PutLogEventsCommand'],
    );
    assert.deepEqual(fake.sent(), ['line', 'line']);
  });

  it('copies what the process writes to stdout, still writing it, until stopped', async () => {
    const fake = fakeClient();
    const shipper = new LogShipper({ logGroup: 'g', stream: 's', client: fake.client, flushMs: 60_000 });
    const stop = shipper.start();
    process.stdout.write('{"level":"INFO","message":"shipped"}\n');
    await stop();
    process.stdout.write('# not shipped\n');
    await shipper.flush();
    assert.deepEqual(fake.sent(), ['{"level":"INFO","message":"shipped"}']);
  });

  it('drops the oldest lines past its buffer and says how many', async () => {
    const fake = fakeClient();
    const shipper = new LogShipper({ logGroup: 'g', stream: 's', client: fake.client, maxBuffered: 2 });
    shipper.capture('stdout', 'a\nb\nc\nd\n');
    await shipper.flush();
    const sent = fake.sent();
    assert.equal(sent.length, 3);
    assert.match(sent[0]!, /"dropped":2/);
    assert.deepEqual(sent.slice(1), ['c', 'd']);
  });
});
