/**
 * The host dispatcher against the local SSM endpoint (real SSMClient), a real
 * local S3 (s3rver) and a fixture host-agent that decodes requests as the
 * protocol says and answers envelopes.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { GetCommandInvocationCommand, SSMClient } from '@aws-sdk/client-ssm';
import { ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { boundByCallDeadline, withCallDeadline } from '../../lambdas/shared/clients/deadline';
import { startSsmEndpoint, type SsmEndpoint } from '../../lib/local/ssm-endpoint';
import {
  assertHostAgentCommand,
  buildHostCommandLine,
  createHostDispatcher,
  HostDispatchError,
  parseHostEnvelope,
  pollDelayMs,
  throttleBackoffMs,
  type HostDispatcherOptions,
} from '../../lambdas/shared/host-dispatch';
import { maxInlineRequestChars, stagedRequestPrefix } from '../../contract/host-protocol';

interface S3rverInstance {
  run(): Promise<{ address: string; port: number }>;
  close(): Promise<void>;
}
// s3rver ships no type declarations.
const S3rver = createRequire(import.meta.url)('s3rver') as new (opts: Record<string, unknown>) => S3rverInstance;

const instanceId = 'i-0123456789abcdef0';
const bucket = 'test-bucket';
const fakeHostAgent = fileURLToPath(new URL('../fixtures/fake-host-agent.mjs', import.meta.url));
const hostAgentCommand = `${process.execPath} ${fakeHostAgent}`;

interface Echo {
  verb: string;
  requestSha256: string;
  request?: unknown;
  via: 'inline' | 's3';
  argc: number;
}

const sha256 = (text: string) => createHash('sha256').update(text, 'utf8').digest('hex');

function dispatchError(code: string, check: (err: HostDispatchError) => void = () => {}) {
  return (err: unknown) => {
    assert.ok(err instanceof HostDispatchError, `expected HostDispatchError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    check(err);
    return true;
  };
}

describe('host dispatcher', () => {
  let scratch: string;
  let s3rver: S3rverInstance;
  let s3: S3Client;
  let endpoint: SsmEndpoint;
  let ssm: SSMClient;

  const dispatcher = (extra: Partial<HostDispatcherOptions> = {}) => createHostDispatcher({ ssm, s3, bucket, hostAgentCommand, ...extra });

  before(async () => {
    scratch = await mkdtemp(join(tmpdir(), 'host-dispatch-test-'));
    s3rver = new S3rver({ port: 0, address: '127.0.0.1', silent: true, directory: join(scratch, 's3'), configureBuckets: [{ name: bucket }] });
    const { port } = await s3rver.run();
    const s3Url = `http://127.0.0.1:${port}`;
    s3 = new S3Client({
      endpoint: s3Url,
      region: 'us-east-1',
      forcePathStyle: true,
      requestChecksumCalculation: 'WHEN_REQUIRED',
      credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
    });
    endpoint = await startSsmEndpoint({
      instanceIds: [instanceId],
      // What the fixture host-agent needs to fetch staged requests.
      env: {
        ...process.env,
        AWS_ENDPOINT_URL_S3: s3Url,
        AWS_ACCESS_KEY_ID: 'S3RVER',
        AWS_SECRET_ACCESS_KEY: 'S3RVER',
        AWS_REGION: 'us-east-1',
        HOST_AGENT_BUCKET: bucket,
      },
    });
    // Like the control plane's client: throttling is the dispatcher's to retry.
    ssm = new SSMClient({ endpoint: endpoint.url, region: 'us-east-1', credentials: endpoint.credentials, maxAttempts: 1 });
  });

  after(async () => {
    ssm?.destroy();
    s3?.destroy();
    await endpoint?.close();
    await s3rver?.close();
    await rm(scratch, { recursive: true, force: true });
  });

  it('delivers a request full of shell syntax byte-identical, as one argument, and runs none of it', async () => {
    const canary = join(scratch, 'pwned');
    const request = {
      command: `echo "double" 'single' $(touch ${canary}) \`touch ${canary}\` ; touch ${canary} && exit 1 | cat > /dev/null`,
      multiline: 'line one\nline two\r\n\ttabbed\\backslash\u0000nul',
      unicode: 'héllo wörld ✓ 日本語 🚀 \u202e',
      dollar: '$HOME ${PATH} $((1+1)) !!',
      glob: '* ? [a-z] ~',
    };
    const echo = await dispatcher().dispatch(instanceId, 'sync', request, { timeoutSeconds: 30 });
    const answer = echo as unknown as Echo;
    assert.equal(answer.requestSha256, sha256(JSON.stringify(request)));
    assert.deepEqual(answer.request, request);
    assert.equal(answer.verb, 'sync');
    assert.equal(answer.via, 'inline');
    assert.equal(answer.argc, 2);
    assert.equal(existsSync(canary), false, 'caller text was executed by the shell');
  });

  it('stages a request too large for a command in S3 and the host-agent receives it intact', async () => {
    const request = { payload: 'ü"$(x)`y`\n'.repeat(3_000), marker: 'end' };
    const echo = (await dispatcher().dispatch(instanceId, 'create', request, { timeoutSeconds: 30 })) as unknown as Echo;
    assert.equal(echo.via, 's3');
    assert.equal(echo.requestSha256, sha256(JSON.stringify(request)));
    const left = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: stagedRequestPrefix }));
    assert.equal(left.KeyCount ?? 0, 0, 'staged request was left behind');
  });

  it('refuses a large request plainly when no bucket is configured', async () => {
    const hosts = createHostDispatcher({ ssm, hostAgentCommand });
    await assert.rejects(
      hosts.dispatch(instanceId, 'create', { payload: 'x'.repeat(maxInlineRequestChars) }, { timeoutSeconds: 30 }),
      dispatchError('config_error', (err) => assert.match(err.message, /bucket/)),
    );
  });

  it('reads the envelope from the last non-empty line of stdout', async () => {
    const echo = (await dispatcher().dispatch(instanceId, 'status', { fake: 'chatty' }, { timeoutSeconds: 30 })) as unknown as Echo;
    assert.deepEqual(echo.request, { fake: 'chatty' });
  });

  it('turns an error envelope into host_error with the host code and message', async () => {
    await assert.rejects(
      dispatcher().dispatch(instanceId, 'destroy', { fake: 'error', code: 'not_found', message: 'no container for sbx-1' }, { timeoutSeconds: 30 }),
      dispatchError('host_error', (err) => {
        assert.equal(err.hostCode, 'not_found');
        assert.equal(err.message, 'no container for sbx-1');
      }),
    );
  });

  it('reports output_too_large when the answer was cut at the SSM stdout cap', async () => {
    await assert.rejects(
      dispatcher().dispatch(instanceId, 'sync', { fake: 'huge', chars: 30_000 }, { timeoutSeconds: 30 }),
      dispatchError('output_too_large', (err) => assert.match(err.message, /24000 characters/)),
    );
  });

  it('reports host_failed with a stderr excerpt when the host-agent dies without an answer', async () => {
    await assert.rejects(
      dispatcher().dispatch(instanceId, 'status', { fake: 'crash' }, { timeoutSeconds: 30 }),
      dispatchError('host_failed', (err) => {
        assert.match(err.message, /exit code 3/);
        assert.match(err.message, /crashed on purpose/);
      }),
    );
  });

  it('reports host_timeout when the command outruns its execution timeout', async () => {
    await assert.rejects(
      dispatcher({ executionMarginSeconds: 0 }).dispatch(instanceId, 'sync', { fake: 'sleep', seconds: 10 }, { timeoutSeconds: 1 }),
      dispatchError('host_timeout', (err) => assert.match(err.message, /execution timeout/)),
    );
  });

  it("leaves a sent command running (still_running, not a host failure) when the request's deadline cuts a poll", async () => {
    // As in a handler: every SSM call bounded by the request's deadline; SSM answers slowly, the host takes longer.
    const bounded = boundByCallDeadline(
      new SSMClient({ endpoint: endpoint.url, region: 'us-east-1', credentials: endpoint.credentials, maxAttempts: 1 }),
      'SSM',
    );
    endpoint.setLatency(300);
    try {
      const hosts = createHostDispatcher({ ssm: bounded, s3, bucket, hostAgentCommand });
      const started = Date.now();
      let commandId: string | undefined;
      await assert.rejects(
        withCallDeadline(started + 1_000, () => hosts.dispatch(instanceId, 'sync', { fake: 'sleep', seconds: 2 }, { timeoutSeconds: 30 })),
        dispatchError('still_running', (err) => {
          assert.match(err.message, /this request's time ran out/);
          commandId = err.commandId;
        }),
      );
      assert.ok(Date.now() - started < 2_000, 'answered at the deadline');
      // Not cancelled: the host finishes it.
      endpoint.setLatency(0);
      for (let i = 0; ; i++) {
        const inv = await ssm.send(new GetCommandInvocationCommand({ CommandId: commandId, InstanceId: instanceId }));
        if (inv.Status === 'Success') break;
        assert.ok(['Pending', 'InProgress'].includes(inv.Status ?? '') && i < 100, `the command ended ${inv.Status}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    } finally {
      endpoint.setLatency(0);
      bounded.destroy();
    }
  });

  it('reports host_unreachable for an instance SSM does not know', async () => {
    await assert.rejects(dispatcher().dispatch('i-00000000deadbeef0', 'status', {}, { timeoutSeconds: 30 }), dispatchError('host_unreachable'));
  });

  it('retries throttled SSM calls with backoff', async () => {
    const waits: number[] = [];
    const hosts = dispatcher({ sleep: (ms) => (waits.push(ms), new Promise((r) => setTimeout(r, ms))), random: () => 0 });
    endpoint.injectThrottling(3);
    const echo = (await hosts.dispatch(instanceId, 'status', {}, { timeoutSeconds: 30 })) as unknown as Echo;
    assert.deepEqual(echo.request, {});
    assert.deepEqual(waits.slice(0, 3), [throttleBackoffMs(0, () => 0), throttleBackoffMs(1, () => 0), throttleBackoffMs(2, () => 0)]);
  });

  it('gives up with throttled once the retry budget is spent', async () => {
    endpoint.injectThrottling(5);
    try {
      await assert.rejects(
        dispatcher({ maxThrottleRetries: 2, sleep: async () => {} }).dispatch(instanceId, 'status', {}, { timeoutSeconds: 30 }),
        dispatchError('throttled'),
      );
    } finally {
      endpoint.injectThrottling(0);
    }
  });

  it('refuses invalid dispatches before calling SSM', async () => {
    const hosts = dispatcher();
    await assert.rejects(hosts.dispatch(instanceId, 'rm -rf' as 'status', {}, { timeoutSeconds: 5 }), dispatchError('invalid_dispatch'));
    await assert.rejects(hosts.dispatch('i-1; reboot', 'status', {}, { timeoutSeconds: 5 }), dispatchError('invalid_dispatch'));
    await assert.rejects(hosts.dispatch(instanceId, 'status', undefined, { timeoutSeconds: 5 }), dispatchError('invalid_dispatch'));
    await assert.rejects(hosts.dispatch(instanceId, 'status', {}, { timeoutSeconds: 0 }), dispatchError('invalid_dispatch'));
  });
});

describe('host dispatcher with eventual consistency', () => {
  let endpoint: SsmEndpoint;
  let ssm: SSMClient;

  before(async () => {
    endpoint = await startSsmEndpoint({ instanceIds: [instanceId], invisibleMs: 250 });
    ssm = new SSMClient({ endpoint: endpoint.url, region: 'us-east-1', credentials: endpoint.credentials, maxAttempts: 1 });
  });

  after(async () => {
    ssm?.destroy();
    await endpoint?.close();
  });

  it('keeps polling through InvocationDoesNotExist right after sending', async () => {
    const hosts = createHostDispatcher({ ssm, hostAgentCommand });
    const echo = (await hosts.dispatch(instanceId, 'pause', { sandboxId: 'sbx-x' }, { timeoutSeconds: 30 })) as unknown as Echo;
    assert.deepEqual(echo.request, { sandboxId: 'sbx-x' });
  });

  it('cancels the command and reports host_timeout when no answer comes before the deadline', async () => {
    const hosts = createHostDispatcher({ ssm, hostAgentCommand, executionMarginSeconds: 0, deadlineSlackSeconds: 0 });
    await assert.rejects(
      hosts.dispatch(instanceId, 'sync', { fake: 'sleep', seconds: 10 }, { timeoutSeconds: 1 }),
      dispatchError('host_timeout', (err) => assert.match(err.message, /the command was cancelled/)),
    );
  });
});

describe('host dispatch helpers', () => {
  it('polls from 10 ms growing by 3 ms a poll up to 250 ms', () => {
    const delays = Array.from({ length: 10 }, (_, i) => pollDelayMs(i));
    assert.deepEqual(delays, [10, 13, 16, 19, 22, 25, 28, 31, 34, 37]);
    assert.equal(pollDelayMs(1000), 250);
  });

  it('backs off exponentially with jitter, never to zero, capped', () => {
    assert.equal(
      throttleBackoffMs(0, () => 0),
      25,
    );
    assert.equal(
      throttleBackoffMs(0, () => 0.999999),
      50,
    );
    assert.equal(
      throttleBackoffMs(3, () => 0),
      200,
    );
    assert.equal(
      throttleBackoffMs(20, () => 0.999999),
      2_000,
    );
  });

  it('accepts plain host-agent commands and refuses anything a shell would interpret', () => {
    assertHostAgentCommand('/opt/ephemeral-sandbox/bin/host-agent');
    assertHostAgentCommand('env LOG_LEVEL=debug /usr/bin/node /opt/host-agent.mjs');
    for (const bad of ['', 'agent; reboot', 'agent $(id)', 'agent `id`', 'a  b', 'agent\nreboot', 'agent > /tmp/x', 'agent &', "agent 'x'"]) {
      assert.throws(() => assertHostAgentCommand(bad), dispatchError('config_error'), JSON.stringify(bad));
    }
    assert.throws(() => createHostDispatcher({ ssm: new SSMClient({}), hostAgentCommand: 'agent | sh' }), dispatchError('config_error'));
  });

  it('builds one command line from the command, the verb and an inert argument', () => {
    assert.equal(buildHostCommandLine('/bin/host-agent', 'run', 'b64:eyJ9'), '/bin/host-agent run b64:eyJ9');
    assert.equal(buildHostCommandLine('/bin/host-agent', 'create', 's3:host-requests/a.json'), '/bin/host-agent create s3:host-requests/a.json');
    assert.throws(() => buildHostCommandLine('/bin/host-agent', 'run', 'b64:$(id)'), dispatchError('invalid_dispatch'));
  });

  it('parses envelopes and ignores anything that is not one', () => {
    assert.deepEqual(parseHostEnvelope('log\n{"ok":true,"result":{"a":1}}\n\n'), { ok: true, result: { a: 1 } });
    assert.deepEqual(parseHostEnvelope('{"ok":false,"error":{"code":"docker_error","message":"m"}}'), {
      ok: false,
      error: { code: 'docker_error', message: 'm' },
    });
    assert.equal(parseHostEnvelope('{"ok":true,"result":{"a":'), undefined);
    assert.equal(parseHostEnvelope('{"result":1}'), undefined);
    assert.equal(parseHostEnvelope(''), undefined);
    const unknown = parseHostEnvelope('{"ok":false,"error":{"code":"weird","message":"m"}}');
    assert.equal(unknown?.ok === false && unknown.error.code, 'internal_error');
  });
});
