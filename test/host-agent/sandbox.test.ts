/**
 * The host-agent CLI, bundled as it ships, against the real Docker engine:
 * create (hardening, idempotency), pause/resume, status, destroy, requests
 * staged in S3, and the command verbs the CLI leaves to the host daemon.
 * (Commands themselves are tested through the API: test/commands/.)
 * Run: node --import tsx --test test/host-agent/sandbox.test.ts
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { HeadObjectCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { userLabelPrefix } from '../../host-agent/src/create';
import { containerLabels, ownerLabelValue } from '../../contract/host-protocol';
import { startS3Endpoint, type S3Endpoint } from '../../lib/local/s3-endpoint';
import { newSandboxId } from '../../contract/ids';
import { TestHost, docker } from './fixture';

const host = new TestHost();
let sandbox: string;

before(async () => {
  await host.start();
  sandbox = await host.createSandbox({ env: { SANDBOX_ID: 'placeholder', GREETING: 'hello from create' } });
});
after(() => host.close());

const exec = (command: string, overrides: { cwd?: string } = {}) => host.exec(sandbox, command, overrides);

describe('create', () => {
  it('answers a running container with the hardening applied', async () => {
    const info = await docker.getContainer(sandbox).inspect();
    assert.equal(info.State.Running, true);
    assert.equal(info.Config.User, '1000:1000');
    assert.deepEqual(info.HostConfig.CapDrop, ['ALL']);
    assert.deepEqual(info.HostConfig.CapAdd ?? null, null);
    assert.ok((info.HostConfig.SecurityOpt ?? []).some((o: string) => o.startsWith('no-new-privileges')));
    assert.ok(!(info.HostConfig.SecurityOpt ?? []).some((o: string) => o.includes('unconfined')));
    assert.equal(info.HostConfig.Privileged, false);
    assert.equal(info.HostConfig.ReadonlyRootfs, true);
    assert.equal(info.HostConfig.Memory, 256 * 1024 * 1024);
    assert.equal(info.HostConfig.MemorySwap, info.HostConfig.Memory);
    assert.equal(info.HostConfig.PidsLimit, 256);
    assert.equal(info.HostConfig.NanoCpus, 1e9);
    assert.equal(info.HostConfig.Init, true);
    assert.equal(info.HostConfig.NetworkMode, host.network);
    assert.match(info.HostConfig.Tmpfs?.['/tmp'] ?? '', /nosuid,nodev/);
    assert.deepEqual(info.HostConfig.PortBindings ?? {}, {});
    assert.ok(!JSON.stringify(info.Mounts).includes('docker.sock'));
    assert.deepEqual(info.Mounts.map((m) => m.Destination).sort(), ['/data/cold', '/home/agent', '/run/sandbox/io']);
    // Commands' stdio FIFOs: the sandbox may open them, never add, remove or replace one.
    assert.equal(info.Mounts.find((m) => m.Destination === '/run/sandbox/io')?.RW, false);
    assert.equal(info.Config.Labels[containerLabels.owner], ownerLabelValue);
    assert.equal(info.Config.Labels[containerLabels.sandboxId], sandbox);
    assert.equal(info.Config.Labels[containerLabels.tenantId], 'tenant-test');
    assert.equal(info.Config.Labels[containerLabels.userId], 'user-test');
    assert.equal(info.Config.Labels[`${userLabelPrefix}test-run`], host.runId);
  });

  it('applies the limits inside the container too: read-only root, no capabilities, no swap', async () => {
    const result = await exec(
      'touch /etc/x 2>&1; grep -E "^(CapEff|NoNewPrivs|Seccomp):" /proc/self/status; ulimit -n; cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory.swap.max',
    );
    assert.match(result.stdout, /Read-only file system/);
    assert.match(result.stdout, /CapEff:\s+0000000000000000/);
    assert.match(result.stdout, /NoNewPrivs:\s+1/);
    assert.match(result.stdout, /Seccomp:\s+2/);
    assert.match(result.stdout, /\n8192\n/);
    assert.match(result.stdout, /268435456\n(268435456|0)\n$/);
  });

  it('answers the same container when a create is retried', async () => {
    const request = host.createRequest();
    const first = await host.ok('create', request);
    const second = await host.ok('create', request);
    assert.equal(second.containerId, first.containerId);
    const named = await docker.listContainers({ all: true, filters: { name: [`^/${request.sandboxId}$`] } });
    assert.equal(named.length, 1);
    await host.ok('destroy', { sandboxId: request.sandboxId, graceful: false });
  });

  it('passes the environment from the request to the container', async () => {
    const result = await exec('printf "%s|%s" "$GREETING" "$SANDBOX_ID"');
    assert.equal(result.stdout, 'hello from create|placeholder');
  });
});

describe('requests', () => {
  it('answers bad_request, as one JSON line with exit 1, for an unknown verb, a bad encoding and an invalid request', async () => {
    const cases = [
      host.run('explode' as never, {}),
      host.run('destroy', {}, {}, 'b64:not base64!'),
      host.run('destroy', { sandboxId: 'not-a-sandbox', graceful: true }),
    ];
    for (const answer of await Promise.all(cases)) {
      assert.equal(answer.exitCode, 1);
      assert.equal(answer.stdout.split('\n').filter(Boolean).length, 1);
      assert.equal(!answer.envelope.ok && answer.envelope.error.code, 'bad_request');
    }
  });

  describe('staged in S3', () => {
    let s3: S3Endpoint;
    const bucket = 'host-agent-staging';
    before(async () => {
      s3 = await startS3Endpoint({ buckets: [bucket] });
    });
    after(() => s3?.close());

    it('fetches an s3: request, runs it, and deletes it', async () => {
      const key = `host-requests/${randomBytes(8).toString('hex')}.json`;
      const client = new S3Client({ endpoint: s3.url, region: 'us-east-1', forcePathStyle: true, credentials: s3.credentials });
      // A create (the verb always staged: its env and token are secrets) with 60 KB of env values.
      const request = host.createRequest({ env: { BIG: 'z'.repeat(30_000), BIGGER: 'y'.repeat(30_000) } });
      await client.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: JSON.stringify(request) }));
      const env = {
        STORAGE_BUCKET: bucket,
        AWS_ENDPOINT_URL_S3: s3.url,
        S3_FORCE_PATH_STYLE: 'true',
        AWS_REGION: 'us-east-1',
        AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
        AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
      };
      const answer = await host.run('create', undefined, env, `s3:${key}`);
      assert.ok(answer.envelope.ok, JSON.stringify(answer.envelope));
      assert.equal((await host.exec(request.sandboxId as string, 'printf %s "$BIG$BIGGER" | wc -c')).stdout, '60000\n');
      await assert.rejects(client.send(new HeadObjectCommand({ Bucket: bucket, Key: key })));
      await host.ok('destroy', { sandboxId: request.sandboxId, graceful: false });
      const again = await host.run('create', undefined, env, `s3:${key}`);
      assert.equal(!again.envelope.ok && again.envelope.error.code, 'bad_request');
      client.destroy();
    });

    it('refuses keys outside the staging prefix', async () => {
      const answer = await host.run('create', undefined, { STORAGE_BUCKET: bucket }, 's3:tenants/acme/users/u1/hot/secret');
      assert.equal(!answer.envelope.ok && answer.envelope.error.code, 'bad_request');
    });
  });
});

describe('command verbs without the host daemon', () => {
  it('answers unavailable: a command outlives the SSM call, so only the daemon may own one', async () => {
    for (const verb of ['run', 'kill', 'stdin'] as const) {
      const answer = await host.run(verb, { sandboxId: sandbox, commandId: 'c1' });
      assert.equal(answer.exitCode, 1);
      assert.equal(!answer.envelope.ok && answer.envelope.error.code, 'unavailable', verb);
    }
  });
});

describe('pause, resume, status, destroy', () => {
  it('pause stops the container and keeps the home; resume brings it back with the files', async () => {
    const id = await host.createSandbox();
    await host.exec(id, 'echo kept > /home/agent/keep.txt');
    const pause = await host.ok('pause', { sandboxId: id });
    assert.equal(pause.paused, true);
    assert.ok(pause.tmp, '/tmp was archived (test/host-agent/pause-tmp.test.ts covers what it keeps)');
    const paused = await host.ok('status', {});
    assert.equal(paused.containers.find((c) => c.sandboxId === id)?.state, 'exited');
    assert.notEqual((await host.exec(id, 'true')).exitCode, 0, 'a stopped container runs nothing');
    assert.equal((await host.ok('resume', { sandboxId: id })).resumed, true);
    const read = await host.exec(id, 'cat keep.txt');
    assert.equal(read.stdout, 'kept\n');
    await host.ok('destroy', { sandboxId: id, graceful: false });
  });

  it("status lists this host's sandboxes with their state", async () => {
    const status = await host.ok('status', {});
    const mine = status.containers.find((c) => c.sandboxId === sandbox);
    assert.equal(mine?.state, 'running');
    assert.match(mine?.containerId ?? '', /^[0-9a-f]{64}$/);
  });

  it('destroy removes the container and its host state; a second destroy answers removed: false', async () => {
    const id = await host.createSandbox();
    const home = join(host.stateDir, 'sandboxes', id);
    assert.equal(existsSync(home), true);
    assert.deepEqual(await host.ok('destroy', { sandboxId: id, graceful: true }), { removed: true });
    await assert.rejects(docker.getContainer(id).inspect(), /no such container/i);
    assert.equal(existsSync(home), false);
    assert.deepEqual(await host.ok('destroy', { sandboxId: id, graceful: true }), { removed: false });
  });

  it('a forced destroy kills a busy sandbox at once', async () => {
    const id = await host.createSandbox();
    const busy = host.exec(id, 'sleep 100; echo survived', { timeoutSeconds: 100 });
    await new Promise((r) => setTimeout(r, 500));
    const started = Date.now();
    assert.deepEqual(await host.ok('destroy', { sandboxId: id, graceful: false }), { removed: true });
    assert.ok(Date.now() - started < 10_000);
    const answer = await busy;
    assert.notEqual(answer.exitCode, 0);
    assert.doesNotMatch(answer.stdout, /survived/);
  });

  it('refuses to touch a container with a sandbox name that is not ours', async () => {
    const id = newSandboxId();
    const foreign = await docker.createContainer({
      name: id,
      Image: host.image,
      Cmd: ['sleep', 'infinity'],
      // No owner label: that is what makes it not ours. The run label lets cleanup find it.
      Labels: { [`${userLabelPrefix}test-run`]: host.runId },
    });
    try {
      const answer = await host.run('destroy', { sandboxId: id, graceful: false });
      assert.equal(!answer.envelope.ok && answer.envelope.error.code, 'bad_request');
      await foreign.inspect();
    } finally {
      await foreign.remove({ force: true });
    }
  });
});
