/**
 * The host-agent CLI, bundled as it ships, against the real Docker engine:
 * create (hardening, idempotency), exec (bash -lc semantics, sticky cwd,
 * timeouts, capped output, concurrency), pause/resume, status, destroy, and
 * requests staged in S3.
 * Run: node --import tsx --test test/host-agent/sandbox.test.ts
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { HeadObjectCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { userLabelPrefix } from '../../host-agent/src/create';
import { containerLabels, ownerLabelValue, ssmStdoutCap, type ExecResult } from '../../host-agent/src/protocol';
import { startS3Endpoint, type S3Endpoint } from '../../lib/local/s3-endpoint';
import { TestHost, docker, newSandboxId } from './fixture';

const host = new TestHost();
let sandbox: string;

before(async () => {
  await host.start();
  sandbox = await host.createSandbox({ env: { SANDBOX_ID: 'placeholder', GREETING: 'hello from create' } });
});
after(() => host.close());

const exec = (command: string, overrides: Record<string, unknown> = {}) => host.exec(sandbox, command, overrides) as Promise<ExecResult>;

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
    assert.deepEqual(
      info.Mounts.map((m) => m.Destination).sort(),
      ['/data/cold', '/home/agent'],
    );
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

describe('exec', () => {
  it('runs as the agent user in a login shell', async () => {
    const result = await exec('whoami; shopt -q login_shell && echo login; echo "$HOME"');
    assert.equal(result.stdout, 'agent\nlogin\n/home/agent\n');
    assert.equal(result.exitCode, 0);
    assert.equal(result.timedOut, false);
  });

  it('separates stdout from stderr and reports the exit code and byte counts', async () => {
    const result = await exec('echo out; echo err >&2; echo more; exit 3');
    assert.equal(result.stdout, 'out\nmore\n');
    assert.equal(result.stderr, 'err\n');
    assert.equal(result.exitCode, 3);
    assert.equal(result.stdoutBytes, 9);
    assert.equal(result.stderrBytes, 4);
  });

  it('hands quotes, substitutions, backticks, newlines and unicode to bash unchanged', async () => {
    const payload = `single ' double " back \` dollar $HOME $(echo sub) \\n backslash \\ tab\there\nnew line; | & > < * ? ! # é 日本語 🚀 \r end`;
    const quoted = await exec(`cat <<'PAYLOAD_END'\n${payload}\nPAYLOAD_END`);
    assert.equal(quoted.stdout, payload + '\n');
    const evaluated = await exec('echo "$(echo sub)" `echo tick` \'$HOME\' "$HOME" $((6*7)) "é🚀"');
    assert.equal(evaluated.stdout, 'sub tick $HOME /home/agent 42 é🚀\n');
  });

  it('runs nothing of the command on the host', async () => {
    const tag = randomBytes(6).toString('hex');
    const paths = [`/tmp/pwned-on-host-${tag}`, `/tmp/pwned-subst-${tag}`, `/tmp/pwned-tick-${tag}`];
    const result = await exec(`touch ${paths[0]}; echo $(touch ${paths[1]}) \`touch ${paths[2]}\`; ls ${paths.join(' ')}`);
    assert.equal(result.exitCode, 0, result.stderr);
    assert.deepEqual(result.stdout.trim().split('\n'), paths, 'the files exist in the container');
    for (const path of paths) assert.equal(existsSync(path), false, `${path} must not exist on the host`);
  });

  it('runs a 64 KiB heredoc intact', async () => {
    const lines = Array.from({ length: 1500 }, (_, i) => `${String(i).padStart(6, '0')} ${randomBytes(24).toString('base64')} ünï`);
    const body = lines.join('\n');
    assert.ok(Buffer.byteLength(body) >= 64 * 1024);
    const expected = createHash('sha256').update(body + '\n').digest('hex');
    const result = await exec(`cat <<'EOF' | sha256sum\n${body}\nEOF`);
    assert.equal(result.stdout.split(' ')[0], expected);
  });

  it('keeps the working directory between commands', async () => {
    const first = await exec('mkdir -p "/tmp/with space/and\nnewline" && cd "/tmp/with space/and\nnewline"');
    assert.equal(first.cwd, '/tmp/with space/and\nnewline');
    assert.equal(first.stderr, '');
    const second = await exec('pwd', { cwd: first.cwd });
    assert.equal(second.stdout, '/tmp/with space/and\nnewline\n');
    assert.equal(second.cwd, first.cwd);
    const exited = await exec('cd /usr && exit 4');
    assert.deepEqual([exited.cwd, exited.exitCode], ['/usr', 4]);
    const redirected = await exec('exec >/dev/null 2>&1; cd /etc; echo hidden');
    assert.deepEqual([redirected.cwd, redirected.stdout, redirected.stderr], ['/etc', '', '']);
  });

  it("answers bash's own error and a non-zero exit for a working directory that does not exist", async () => {
    const result = await exec('echo should not run', { cwd: '/no/such/dir' });
    assert.notEqual(result.exitCode, 0);
    assert.equal(result.stdout, '');
    assert.match(result.stderr, /cd: \/no\/such\/dir: No such file or directory/);
    assert.equal(result.cwd, '/no/such/dir');
  });

  it('kills the whole process tree at the timeout and answers promptly', async () => {
    const started = Date.now();
    const result = await exec("bash -c 'sleep 61' & sleep 60; echo never", { timeoutSeconds: 2 });
    const elapsed = Date.now() - started;
    assert.equal(result.timedOut, true);
    assert.equal(result.exitCode, 137);
    assert.equal(result.stdout, '');
    assert.ok(elapsed < 10_000, `answered after ${elapsed} ms`);
    const left = await exec('for p in /proc/[0-9]*; do tr "\\0" " " < "$p/cmdline" 2>/dev/null; echo; done');
    assert.doesNotMatch(left.stdout, /sleep 6[01]/);
  });

  it('answers when the shell exits even if a background process keeps the output open', async () => {
    const result = await exec('sleep 30 & echo started');
    assert.equal(result.stdout, 'started\n');
    assert.ok(result.durationMs < 1_800, `took ${result.durationMs} ms`);
  });

  it('caps huge output to head and tail within the envelope limit, with flags and real byte counts', async () => {
    const answer = await host.run('exec', {
      sandboxId: sandbox,
      command: 'head -c 5000000 /dev/zero | tr "\\0" a; echo; head -c 1000000 /dev/urandom >&2',
      cwd: '/home/agent',
      timeoutSeconds: 60,
    });
    assert.equal(answer.exitCode, 0);
    assert.ok(answer.stdout.length < ssmStdoutCap, `printed ${answer.stdout.length} characters`);
    assert.equal(answer.stdout.trim().split('\n').length, 1);
    assert.ok(answer.envelope.ok);
    const result = answer.envelope.result;
    assert.equal(result.stdoutTruncated, true);
    assert.equal(result.stderrTruncated, true);
    assert.equal(result.stdoutBytes, 5_000_001);
    assert.equal(result.stderrBytes, 1_000_000);
    assert.ok(result.stdout.startsWith('aaaa') && result.stdout.endsWith('aaaa\n'));
    assert.match(result.stdout, /bytes truncated/);
  });

  it('runs 20 commands at once', async () => {
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) => host.run('exec', { sandboxId: sandbox, command: `sleep 0.3; echo run-${i}`, cwd: '/tmp', timeoutSeconds: 60 })),
    );
    results.forEach((answer, i) => {
      assert.ok(answer.envelope.ok, JSON.stringify(answer.envelope));
      assert.equal(answer.envelope.result.stdout, `run-${i}\n`);
      assert.equal(answer.exitCode, 0);
    });
  });

  it('answers not_found for a sandbox that has no container', async () => {
    const answer = await host.run('exec', { sandboxId: newSandboxId(), command: 'true', cwd: '/', timeoutSeconds: 5 });
    assert.equal(answer.exitCode, 1);
    assert.deepEqual(answer.envelope.ok, false);
    assert.equal(!answer.envelope.ok && answer.envelope.error.code, 'not_found');
  });
});

describe('requests', () => {
  it('answers bad_request, as one JSON line with exit 1, for an unknown verb, a bad encoding and an invalid request', async () => {
    const cases = [
      host.run('explode' as never, {}),
      host.run('exec', {}, {}, 'b64:not base64!'),
      host.run('exec', { sandboxId: 'not-a-sandbox', command: 'true', cwd: '/', timeoutSeconds: 1 }),
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
      const command = `cat <<'EOF' | wc -c\n${'z'.repeat(40_000)}\nEOF`;
      await client.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: JSON.stringify({ sandboxId: sandbox, command, cwd: '/', timeoutSeconds: 10 }) }));
      const env = {
        STORAGE_BUCKET: bucket,
        AWS_ENDPOINT_URL_S3: s3.url,
        S3_FORCE_PATH_STYLE: 'true',
        AWS_REGION: 'us-east-1',
        AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
        AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
      };
      const answer = await host.run('exec', undefined, env, `s3:${key}`);
      assert.ok(answer.envelope.ok, JSON.stringify(answer.envelope));
      assert.equal(answer.envelope.result.stdout, '40001\n');
      await assert.rejects(client.send(new HeadObjectCommand({ Bucket: bucket, Key: key })));
      const again = await host.run('exec', undefined, env, `s3:${key}`);
      assert.equal(!again.envelope.ok && again.envelope.error.code, 'bad_request');
      client.destroy();
    });

    it('refuses keys outside the staging prefix', async () => {
      const answer = await host.run('exec', undefined, { STORAGE_BUCKET: bucket }, 's3:tenants/acme/users/u1/hot/secret');
      assert.equal(!answer.envelope.ok && answer.envelope.error.code, 'bad_request');
    });
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
    const refused = await host.run('exec', { sandboxId: id, command: 'true', cwd: '/', timeoutSeconds: 5 });
    assert.equal(!refused.envelope.ok && refused.envelope.error.code, 'bad_request');
    assert.equal((await host.ok('resume', { sandboxId: id })).resumed, true);
    const read = (await host.exec(id, 'cat keep.txt')) as ExecResult;
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
    const busy = host.run('exec', { sandboxId: id, command: 'sleep 100', cwd: '/', timeoutSeconds: 100 });
    await new Promise((r) => setTimeout(r, 500));
    assert.deepEqual(await host.ok('destroy', { sandboxId: id, graceful: false }), { removed: true });
    const answer = await busy;
    assert.ok(answer.envelope.ok ? answer.envelope.result.exitCode !== 0 : true);
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
