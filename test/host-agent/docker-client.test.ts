/**
 * DockerClient.startExecWithStdin against the real engine: an exec's stdin fed
 * over the hijacked connection, its output demultiplexed, EOF on end(), an
 * exec that leaves without reading, and an engine refusal.
 * Run: node --import tsx --test test/host-agent/docker-client.test.ts
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import type { Duplex } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { userLabelPrefix } from '../../host-agent/src/create';
import { DockerApiError, DockerClient, DockerStreamDemuxer } from '../../host-agent/src/docker';
import { containerLabels, ownerLabelValue } from '../../contract/host-protocol';
import { newSandboxId } from '../../contract/ids';
import { docker, runLabel, sandboxImage } from './fixture';

const client = new DockerClient('/var/run/docker.sock');
const runId = randomBytes(4).toString('hex');
let containerId = '';

before(async () => {
  const container = await docker.createContainer({
    name: newSandboxId(),
    Image: await sandboxImage(),
    User: '1000:1000',
    Cmd: ['sleep', 'infinity'],
    Labels: { [containerLabels.owner]: ownerLabelValue, [`${userLabelPrefix}${runLabel}`]: runId },
    HostConfig: { NetworkMode: 'none', CapDrop: ['ALL'] },
  });
  containerId = container.id;
  await container.start();
});
after(async () => {
  if (containerId) await docker.getContainer(containerId).remove({ force: true });
});

/** Reads the socket to its end, split into stdout and stderr. */
async function collect(socket: Duplex): Promise<{ stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const demuxer = new DockerStreamDemuxer(
    (c) => (stdout += c),
    (c) => (stderr += c),
  );
  for await (const chunk of socket) demuxer.push(chunk as Buffer);
  demuxer.end();
  return { stdout, stderr };
}

async function startWithStdin(cmd: string[]): Promise<{ execId: string; socket: Duplex }> {
  const { Id } = await client.createExec(containerId, { Cmd: cmd, AttachStdin: true, AttachStdout: true, AttachStderr: true });
  return { execId: Id, socket: await client.startExecWithStdin(Id) };
}

describe('DockerClient.startExecWithStdin', () => {
  it('feeds 8 MiB to the command byte for byte, and end() gives it EOF', async () => {
    const payload = randomBytes(8 * 1024 * 1024);
    const { execId, socket } = await startWithStdin(['sh', '-c', 'cat > /tmp/in; sha256sum < /tmp/in; wc -c < /tmp/in >&2; exit 3']);
    const output = collect(socket);
    socket.end(payload);
    const { stdout, stderr } = await output;
    assert.equal(stdout, `${createHash('sha256').update(payload).digest('hex')}  -\n`);
    assert.equal(stderr, `${payload.length}\n`);
    let info = await client.inspectExec(execId);
    for (let i = 0; i < 50 && info.Running; i += 1) info = await client.inspectExec(execId);
    assert.equal(info.ExitCode, 3);
  });

  it('ends the stream when the command exits without reading its stdin', async () => {
    const { socket } = await startWithStdin(['sh', '-c', 'echo gone']);
    const output = collect(socket);
    socket.write(randomBytes(4 * 1024 * 1024));
    socket.on('error', () => undefined); // the engine may close under the writer: that is the point
    assert.equal((await output).stdout, 'gone\n');
  });

  it('answers a DockerApiError 404 for an exec that does not exist', async () => {
    await assert.rejects(client.startExecWithStdin('0'.repeat(64)), (error: unknown) => error instanceof DockerApiError && error.statusCode === 404);
  });
});
