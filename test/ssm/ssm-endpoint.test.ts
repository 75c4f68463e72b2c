/**
 * The local SSM endpoint, driven by the real @aws-sdk/client-ssm client: commands
 * really run on this machine and answer in SSM's shapes, caps and statuses.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  CancelCommandCommand,
  GetCommandInvocationCommand,
  GetParameterCommand,
  ParameterAlreadyExists,
  ParameterNotFound,
  PutParameterCommand,
  InvalidDocument,
  InvalidInstanceId,
  InvalidParameters,
  InvocationDoesNotExist,
  ListCommandInvocationsCommand,
  SendCommandCommand,
  SSMClient,
  ThrottlingException,
  type GetCommandInvocationCommandOutput,
} from '@aws-sdk/client-ssm';
import { startSsmEndpoint, type SsmEndpoint } from '../../lib/local/ssm-endpoint';
import { createAgent } from '../../lib/local/ssm/agent';
import { newInvocation } from '../../lib/local/ssm/invocation';
import { signedFetch } from '../support/sigv4';

const instanceId = 'i-0123456789abcdef0';
const terminal = new Set(['Success', 'Failed', 'TimedOut', 'Cancelled']);

function clientFor(endpoint: SsmEndpoint): SSMClient {
  return new SSMClient({
    endpoint: endpoint.url,
    region: 'us-east-1',
    credentials: endpoint.credentials,
    maxAttempts: 1,
  });
}

async function send(ssm: SSMClient, commands: string[], parameters: Record<string, string[]> = {}): Promise<string> {
  const out = await ssm.send(
    new SendCommandCommand({
      DocumentName: 'AWS-RunShellScript',
      InstanceIds: [instanceId],
      Parameters: { commands, ...parameters },
    }),
  );
  assert.ok(out.Command?.CommandId);
  return out.Command.CommandId;
}

async function waitFor(
  ssm: SSMClient,
  commandId: string,
  done: (inv: GetCommandInvocationCommandOutput) => boolean = (inv) => terminal.has(inv.Status ?? ''),
): Promise<GetCommandInvocationCommandOutput> {
  const giveUpAt = Date.now() + 15_000;
  for (;;) {
    try {
      const inv = await ssm.send(new GetCommandInvocationCommand({ CommandId: commandId, InstanceId: instanceId }));
      if (done(inv)) return inv;
    } catch (err) {
      if (!(err instanceof InvocationDoesNotExist)) throw err;
    }
    if (Date.now() > giveUpAt) throw new Error(`command ${commandId} did not reach the expected state`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Alive means running: a zombie left for init to reap counts as dead. */
function isAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

async function eventuallyDead(pid: number): Promise<boolean> {
  for (let i = 0; i < 100; i++) {
    if (!isAlive(pid)) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return false;
}

describe('local SSM endpoint', () => {
  let endpoint: SsmEndpoint;
  let ssm: SSMClient;
  let scratch: string;

  before(async () => {
    scratch = await mkdtemp(join(tmpdir(), 'ssm-endpoint-test-'));
    endpoint = await startSsmEndpoint({ instanceIds: [instanceId], env: { ...process.env, SSM_TEST_MARKER: 'from-endpoint-env' } });
    ssm = clientFor(endpoint);
  });

  after(async () => {
    ssm?.destroy();
    await endpoint?.close();
    await rm(scratch, { recursive: true, force: true });
  });

  it('listens on loopback only', () => {
    assert.match(endpoint.url, /^http:\/\/127\.0\.0\.1:\d+$/);
  });

  it('runs the commands as one shell script and reports Success with the output', async () => {
    const sent = await ssm.send(
      new SendCommandCommand({
        DocumentName: 'AWS-RunShellScript',
        InstanceIds: [instanceId],
        Parameters: { commands: ['x=shared-between-lines', 'echo "$x in $(pwd)"', 'echo "$SSM_TEST_MARKER"', 'echo warn >&2'], workingDirectory: [scratch] },
        TimeoutSeconds: 30,
        Comment: 'endpoint test',
      }),
    );
    const command = sent.Command!;
    assert.match(command.CommandId!, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    assert.equal(command.Status, 'Pending');
    assert.ok(command.RequestedDateTime instanceof Date);
    assert.deepEqual(command.InstanceIds, [instanceId]);
    assert.equal(command.TimeoutSeconds, 30);

    const inv = await waitFor(ssm, command.CommandId!);
    assert.equal(inv.Status, 'Success');
    assert.equal(inv.StatusDetails, 'Success');
    assert.equal(inv.ResponseCode, 0);
    assert.equal(inv.StandardOutputContent, `shared-between-lines in ${scratch}\nfrom-endpoint-env\n`);
    assert.equal(inv.StandardErrorContent, 'warn\n');
    assert.equal(inv.DocumentName, 'AWS-RunShellScript');
    assert.equal(inv.PluginName, 'aws:runShellScript');
    assert.equal(inv.Comment, 'endpoint test');
    assert.ok(!Number.isNaN(Date.parse(inv.ExecutionStartDateTime!)));
    assert.ok(!Number.isNaN(Date.parse(inv.ExecutionEndDateTime!)));
    assert.match(inv.ExecutionElapsedTime!, /^PT\d+\.\d{3}S$/);
  });

  it('reports a non-zero exit as Failed with the exit code as ResponseCode', async () => {
    const commandId = await send(ssm, ['echo partial', 'exit 7']);
    const inv = await waitFor(ssm, commandId);
    assert.equal(inv.Status, 'Failed');
    assert.equal(inv.ResponseCode, 7);
    assert.equal(inv.StandardOutputContent, 'partial\n');
    assert.match(inv.StandardErrorContent!, /failed to run commands: exit status 7/);
  });

  it('keeps the first 24,000 characters of stdout and 8,000 of stderr, as SSM does', async () => {
    const commandId = await send(ssm, [
      'printf BEGIN-OUT; head -c 100000 /dev/zero | tr "\\0" o',
      'printf BEGIN-ERR >&2; head -c 50000 /dev/zero | tr "\\0" e >&2',
    ]);
    const inv = await waitFor(ssm, commandId);
    assert.equal(inv.Status, 'Success');
    assert.equal(inv.StandardOutputContent!.length, 24_000);
    assert.ok(inv.StandardOutputContent!.startsWith('BEGIN-OUTooo'));
    assert.equal(inv.StandardErrorContent!.length, 8_000);
    assert.ok(inv.StandardErrorContent!.startsWith('BEGIN-ERReee'));
  });

  it('stops a command at its executionTimeout, reports TimedOut and kills the whole process group', async () => {
    const pidFile = join(scratch, 'timeout.pids');
    const commandId = await send(ssm, [`sleep 30 & echo "$$ $!" > ${pidFile}`, 'wait'], { executionTimeout: ['1'] });
    const inv = await waitFor(ssm, commandId);
    assert.equal(inv.Status, 'TimedOut');
    assert.equal(inv.StatusDetails, 'ExecutionTimedOut');
    assert.equal(inv.ResponseCode, -1);
    const pids = (await readFile(pidFile, 'utf8')).trim().split(' ').map(Number);
    assert.equal(pids.length, 2);
    for (const pid of pids) assert.ok(await eventuallyDead(pid), `process ${pid} is still running`);
  });

  it('cancels a running command with CancelCommand and kills it', async () => {
    const pidFile = join(scratch, 'cancel.pids');
    const commandId = await send(ssm, [`sleep 30 & echo "$$ $!" > ${pidFile}`, 'wait']);
    await waitFor(ssm, commandId, (inv) => inv.Status === 'InProgress');
    for (let i = 0; i < 100 && !(await readFile(pidFile, 'utf8').catch(() => '')).includes(' '); i++) {
      await new Promise((r) => setTimeout(r, 20));
    }
    await ssm.send(new CancelCommandCommand({ CommandId: commandId }));
    const inv = await waitFor(ssm, commandId);
    assert.equal(inv.Status, 'Cancelled');
    assert.equal(inv.ResponseCode, -1);
    const pids = (await readFile(pidFile, 'utf8')).trim().split(' ').map(Number);
    for (const pid of pids) assert.ok(await eventuallyDead(pid), `process ${pid} is still running`);
  });

  it('lists invocations with plugin details', async () => {
    const commandId = await send(ssm, ['echo listed']);
    await waitFor(ssm, commandId);
    const listed = await ssm.send(new ListCommandInvocationsCommand({ CommandId: commandId, InstanceId: instanceId, Details: true }));
    assert.equal(listed.CommandInvocations?.length, 1);
    const [inv] = listed.CommandInvocations!;
    assert.equal(inv!.Status, 'Success');
    assert.ok(inv!.RequestedDateTime instanceof Date);
    assert.equal(inv!.CommandPlugins?.[0]?.Name, 'aws:runShellScript');
    assert.equal(inv!.CommandPlugins?.[0]?.Output, 'listed\n');
    assert.equal(inv!.CommandPlugins?.[0]?.ResponseCode, 0);
  });

  it('answers InvalidInstanceId for an instance it does not know', async () => {
    await assert.rejects(
      ssm.send(new SendCommandCommand({ DocumentName: 'AWS-RunShellScript', InstanceIds: ['i-00000000deadbeef0'], Parameters: { commands: ['true'] } })),
      (err) => err instanceof InvalidInstanceId,
    );
  });

  it('answers typed errors for bad documents, parameters, ids and operations', async () => {
    await assert.rejects(
      ssm.send(new SendCommandCommand({ DocumentName: 'AWS-RunPowerShellScript', InstanceIds: [instanceId], Parameters: { commands: ['true'] } })),
      (err) => err instanceof InvalidDocument,
    );
    await assert.rejects(
      ssm.send(
        new SendCommandCommand({
          DocumentName: 'AWS-RunShellScript',
          InstanceIds: [instanceId],
          Parameters: { commands: ['true'], executionTimeout: ['172801'] },
        }),
      ),
      (err) => err instanceof InvalidParameters,
    );
    await assert.rejects(
      ssm.send(new GetCommandInvocationCommand({ CommandId: '00000000-0000-4000-8000-000000000000', InstanceId: instanceId })),
      (err) => err instanceof InvocationDoesNotExist,
    );
    await assert.rejects(ssm.send(new CancelCommandCommand({ CommandId: 'not-a-command' })), (err) => (err as Error).name === 'InvalidCommandId');
    const raw = await signedFetch(
      endpoint.url,
      { headers: { 'content-type': 'application/x-amz-json-1.1', 'x-amz-target': 'AmazonSSM.DescribeInstanceInformation' }, body: '{}' },
      endpoint.credentials,
      'ssm',
    );
    assert.equal(raw.status, 400);
    assert.equal(raw.headers.get('x-amzn-errortype'), 'UnknownOperationException');
    assert.equal(((await raw.json()) as { __type: string }).__type, 'UnknownOperationException');
  });

  it('answers ThrottlingException for as many requests as injected, then serves again', async () => {
    endpoint.injectThrottling(2);
    for (let i = 0; i < 2; i++) {
      await assert.rejects(ssm.send(new ListCommandInvocationsCommand({})), (err) => err instanceof ThrottlingException);
    }
    await ssm.send(new ListCommandInvocationsCommand({}));
  });
});

describe('local SSM endpoint with eventual consistency', () => {
  it('answers InvocationDoesNotExist for invisibleMs after SendCommand, then the invocation', async () => {
    const endpoint = await startSsmEndpoint({ instanceIds: [instanceId], invisibleMs: 300 });
    const ssm = clientFor(endpoint);
    try {
      const commandId = await send(ssm, ['echo visible']);
      await assert.rejects(
        ssm.send(new GetCommandInvocationCommand({ CommandId: commandId, InstanceId: instanceId })),
        (err) => err instanceof InvocationDoesNotExist,
      );
      const inv = await waitFor(ssm, commandId);
      assert.equal(inv.StandardOutputContent, 'visible\n');
    } finally {
      ssm.destroy();
      await endpoint.close();
    }
  });

  it('forgets finished commands after recordTtlMs so a long-running stack does not grow', async () => {
    const endpoint = await startSsmEndpoint({ instanceIds: [instanceId], recordTtlMs: 200 });
    const ssm = clientFor(endpoint);
    const get = () => ssm.send(new GetCommandInvocationCommand({ CommandId: commandId, InstanceId: instanceId }));
    let commandId = '';
    try {
      // Read while it runs; then polled until it is gone. Not "done, then 250 ms later gone": on a busy machine one
      // poll can take longer than the 200 ms the finished record is kept, and the test saw neither state.
      const sent = Date.now();
      commandId = await send(ssm, ['sleep 1']);
      assert.ok(['Pending', 'InProgress'].includes((await get()).Status ?? ''), 'kept while it runs');
      const giveUpAt = Date.now() + 15_000;
      let last = '';
      for (;;) {
        try {
          last = (await get()).Status ?? '';
        } catch (err) {
          if (err instanceof InvocationDoesNotExist) break;
          throw err;
        }
        assert.ok(Date.now() < giveUpAt, `still there 15 s later (${last})`);
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.ok(Date.now() - sent >= 1000, 'forgotten only once it had finished (it ran 1 s)');
    } finally {
      ssm.destroy();
      await endpoint.close();
    }
  });

  it('kills commands still running when it closes', async () => {
    const scratch = await mkdtemp(join(tmpdir(), 'ssm-endpoint-close-'));
    const endpoint = await startSsmEndpoint({ instanceIds: [] });
    endpoint.registerInstance(instanceId);
    const ssm = clientFor(endpoint);
    try {
      const pidFile = join(scratch, 'pid');
      const commandId = await send(ssm, [`echo $$ > ${pidFile}`, 'sleep 30']);
      await waitFor(ssm, commandId, (inv) => inv.Status === 'InProgress');
      let pid = 0;
      for (let i = 0; i < 100 && !pid; i++) {
        pid = Number((await readFile(pidFile, 'utf8').catch(() => '')).trim());
        if (!pid) await new Promise((r) => setTimeout(r, 20));
      }
      assert.ok(pid > 0);
      await endpoint.close();
      assert.ok(await eventuallyDead(pid), `process ${pid} is still running`);
    } finally {
      ssm.destroy();
      await endpoint.close();
      await rm(scratch, { recursive: true, force: true });
    }
  });
});

describe('local SSM endpoint: String parameters (the fleet\u2019s current sandbox image)', () => {
  it('answers GetParameter with what PutParameter or the stack wrote, a new version each write; unknown names are ParameterNotFound', async () => {
    const endpoint = await startSsmEndpoint({ instanceIds: [] });
    const ssm = clientFor(endpoint);
    const name = '/ephemeral-sandbox/local/sandbox-image';
    try {
      await assert.rejects(ssm.send(new GetParameterCommand({ Name: name })), ParameterNotFound);
      endpoint.putParameter(name, 'repo:v1');
      const first = await ssm.send(new GetParameterCommand({ Name: name }));
      assert.equal(first.Parameter?.Value, 'repo:v1');
      assert.equal(first.Parameter?.Version, 1);
      assert.equal(first.Parameter?.Type, 'String');
      await assert.rejects(ssm.send(new PutParameterCommand({ Name: name, Value: 'repo:v2', Type: 'String' })), ParameterAlreadyExists);
      assert.equal((await ssm.send(new PutParameterCommand({ Name: name, Value: 'repo:v2', Type: 'String', Overwrite: true }))).Version, 2);
      const second = await ssm.send(new GetParameterCommand({ Name: name }));
      assert.equal(second.Parameter?.Value, 'repo:v2');
      assert.equal(second.Parameter?.Version, 2);
    } finally {
      ssm.destroy();
      await endpoint.close();
    }
  });
});

/** The first whole number a script wrote to `file`, once it has. */
async function readPid(file: string): Promise<number> {
  for (let i = 0; i < 250; i++) {
    const pid = Number((await readFile(file, 'utf8').catch(() => '')).trim());
    if (pid > 0) return pid;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`nothing was written to ${file}`);
}

describe('local SSM endpoint: the process that starts scripts (lib/local/ssm/spawner.mjs)', () => {
  let scratch: string;
  before(async () => {
    scratch = await mkdtemp(join(tmpdir(), 'ssm-starter-'));
  });
  after(async () => {
    await rm(scratch, { recursive: true, force: true });
  });

  it("starts each script from a small process of its own, never by forking the endpoint's process, and ends it on close", async () => {
    const endpoint = await startSsmEndpoint({ instanceIds: [instanceId] });
    const ssm = clientFor(endpoint);
    try {
      const inv = await waitFor(ssm, await send(ssm, ['echo $PPID']));
      assert.equal(inv.Status, 'Success');
      const starter = Number(inv.StandardOutputContent?.trim());
      assert.notEqual(starter, process.pid, "the script's parent is the endpoint's own process");
      assert.match(readFileSync(`/proc/${starter}/cmdline`, 'utf8'), /spawner\.mjs/);
      assert.equal(readFileSync(`/proc/${starter}/stat`, 'utf8').split(') ')[1]?.split(' ')[1], String(process.pid), 'the starter is a child of the endpoint');
      await endpoint.close();
      assert.ok(await eventuallyDead(starter), `the starter ${starter} is still running after close`);
    } finally {
      ssm.destroy();
      await endpoint.close();
    }
  });

  it('fails a running invocation, and kills its script, when the starter dies (its end could no longer be told)', async () => {
    const endpoint = await startSsmEndpoint({ instanceIds: [instanceId] });
    const ssm = clientFor(endpoint);
    try {
      const ppidFile = join(scratch, 'ppid');
      const pidFile = join(scratch, 'pid');
      const commandId = await send(ssm, [`echo $PPID > ${ppidFile}`, `echo $$ > ${pidFile}`, 'sleep 30']);
      const starter = await readPid(ppidFile);
      const script = await readPid(pidFile);
      process.kill(starter, 'SIGKILL');
      const inv = await waitFor(ssm, commandId);
      assert.equal(inv.Status, 'Failed');
      assert.match(inv.StandardErrorContent ?? '', /process starter exited/);
      assert.ok(await eventuallyDead(script), `the script ${script} is still running`);
      // The next command gets a new starter.
      const next = await waitFor(ssm, await send(ssm, ['echo again']));
      assert.equal(next.Status, 'Success');
      assert.equal(next.StandardOutputContent, 'again\n');
    } finally {
      ssm.destroy();
      await endpoint.close();
    }
  });

  it('kills a script cancelled after it was handed to the starter and before its pid came back', async () => {
    const agent = createAgent({ scriptRoot: scratch, workersLimit: 1, envFor: () => process.env });
    const marker = join(scratch, 'ran-on');
    const inv = newInvocation({
      commandId: 'cancelled-early',
      instanceId,
      comment: '',
      documentVersion: '1',
      requestedAt: Date.now(),
      visibleAt: 0,
      commands: [`sleep 0.5; touch ${marker}`],
      workingDirectory: '',
      executionTimeoutSeconds: 30,
    });
    try {
      agent.deliver(inv);
      while (!inv.child) await new Promise((r) => setImmediate(r));
      assert.equal(inv.child.pid, undefined, 'the pid is told a moment after the start');
      agent.cancel(inv);
      await inv.finished;
      assert.equal(inv.status, 'Cancelled');
      await new Promise((r) => setTimeout(r, 1_000));
      assert.equal(existsSync(marker), false, 'the script ran on after its cancel');
    } finally {
      agent.close();
    }
  });
});
