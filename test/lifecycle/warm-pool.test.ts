/**
 * Issue 15 on the real local stack: the host daemon keeps warm containers of
 * the default shape; a create claims one and gets what a cold create gets
 * (hardening, resources, hostname, env and token, home and cold tier, network
 * policy); a claimed container is never handed out again; destroy, pause/resume
 * and a restarted daemon handle pool containers; and the SSM wrapper reaches
 * the daemon through its loopback door without starting a process.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { s3 } from '../../lambdas/shared/clients/s3';
import { getHost } from '../../lambdas/shared/host-store';
import { encodeInline } from '../../contract/host-protocol';
import { applyIdentity } from '../../host-agent/src/claim';
import { DockerClient } from '../../host-agent/src/docker';
import { poolLabel } from '../../host-agent/src/warm-pool';
import { startLocalStack, type LocalStack } from '../../lib/local/stack';
import { repoRoot } from '../../lib/paths';
import { apiClient, type ApiClient } from '../support/api-client';
import { containerExists, docker, inspect } from '../support/docker';
import { hotPrefix, uniqueUser, waitFor } from './lifecycle-support';

const depth = 2;
/** Longer than the default (1 s), so that the test below sees the deferral whatever the machine's load. */
const refillDelayMs = 3000;
let stack: LocalStack;
let api: ApiClient;
const made: string[] = [];

before(async () => {
  stack = await startLocalStack({
    port: 0,
    reaperIntervalMs: 0,
    hostHeartbeatMs: 1000,
    warmContainers: depth,
    env: { RECONCILE_GRACE_SECONDS: '2', WARM_POOL_REFILL_DELAY_MS: String(refillDelayMs) },
  });
  api = apiClient(stack.url, stack.apiKey);
});
after(async () => {
  for (const id of made) await api?.destroy(id, false).catch(() => undefined);
  await stack?.close();
});

/** Unclaimed pool containers of this stack's host that are running. */
async function readyPool(): Promise<{ Id: string; Names: string[] }[]> {
  const list = await docker.listContainers({ filters: { label: [poolLabel, `dev.ephemeral-sandbox.host-id=${stack.hostId}`] } });
  return list.filter((c) => c.Names[0]!.startsWith('/sbxpool-'));
}

function poolFull(): Promise<unknown> {
  return waitFor('the warm pool to be full', async () => (await readyPool()).length >= depth, 120_000, 100);
}

async function create(user: string, config?: Record<string, unknown>): Promise<string> {
  const res = await api.createReady(user, config);
  assert.equal(res.status, 201, res.text);
  made.push(res.body.sandbox_id);
  return res.body.sandbox_id;
}

async function sh(id: string, command: string): Promise<string> {
  const res = await api.exec(id, command);
  assert.equal(res.status, 200, res.text);
  assert.equal(res.body.exit_code, 0, `${command}: ${res.body.stderr}`);
  return res.body.stdout;
}

/** What a sandbox's container must have alike, however it was made. */
function hardening(info: Awaited<ReturnType<typeof inspect>>) {
  const h = info.HostConfig;
  return {
    user: info.Config.User,
    capDrop: h.CapDrop,
    capAdd: h.CapAdd ?? null,
    securityOpt: h.SecurityOpt,
    readonlyRootfs: h.ReadonlyRootfs,
    privileged: h.Privileged,
    init: h.Init,
    ipcMode: h.IpcMode,
    oomScoreAdj: h.OomScoreAdj,
    ulimits: h.Ulimits,
    networkMode: h.NetworkMode,
    dns: h.Dns,
    publishAll: h.PublishAllPorts,
    restart: h.RestartPolicy?.Name,
    pids: h.PidsLimit,
    nanoCpus: h.NanoCpus,
    binds: (h.Binds ?? []).map((b: string) => b.split(':')[1]).sort(),
  };
}

describe('the warm pool', () => {
  it('keeps warm containers that are no sandboxes: not counted, not named as one, not reconciled away', async () => {
    await poolFull();
    const before = (await readyPool()).map((c) => c.Id).sort();
    // Several reconcile passes (1 s apart, 2 s grace): none takes a pool container for an orphan.
    await new Promise((r) => setTimeout(r, 4000));
    assert.deepEqual((await readyPool()).map((c) => c.Id).sort(), before);
    for (const c of await readyPool()) assert.doesNotMatch(c.Names[0]!, /sbx-[a-z0-9]{20}$/);
    const host = await waitFor(
      'a heartbeat with the pool figure',
      async () => {
        const h = await getHost(stack.hostId);
        return h?.warm_containers === depth ? h : undefined;
      },
      20_000,
    );
    assert.equal(host.running_sandboxes, 0, 'pool containers are not sandboxes');
    assert.deepEqual(host.allocations ?? {}, {}, 'pool containers hold no allocation');
  });

  it('gives a create a claimed container with what a cold create gives: hardening, resources, hostname, env, token, home and cold tier', async () => {
    await poolFull();
    const pool = new Set((await readyPool()).map((c) => c.Id));
    const user = uniqueUser('pool');
    const id = await create(user, { env: { GREETING: 'hello pool' }, cpu: 1, memory_mb: 1024 });
    const info = await inspect(id);
    assert.ok(pool.has(info.Id), 'the sandbox runs in a container that was in the pool');
    assert.equal(info.Name, `/${id}`);
    assert.equal(info.HostConfig.Memory, 1024 * 1024 * 1024);
    assert.equal(info.HostConfig.MemorySwap, 1024 * 1024 * 1024);
    // allow_all (the default): its address is on the firewall's fast path as the create answers (the refresh ran
    // while the engine renamed the container; an unclaimed pool container's address is never there).
    const ip = Object.values(info.NetworkSettings.Networks as Record<string, { IPAddress: string }>)[0]!.IPAddress;
    assert.ok(
      execFileSync('iptables-save', ['-t', 'filter'], { encoding: 'utf8' })
        .split('\n')
        .some((line) => line.includes(` -s ${ip}/32 `)),
      `the claimed sandbox's address ${ip} is open`,
    );

    const cold = await create(uniqueUser('cold'), { memory_mb: 2048 });
    const coldInfo = await inspect(cold);
    assert.ok(!coldInfo.Config.Labels[poolLabel], 'a shape the pool does not hold is made cold');
    assert.deepEqual(hardening(info), hardening(coldInfo));

    const out = await sh(
      id,
      'hostname; cat /etc/hostname; echo "$HOSTNAME|$SANDBOX_ID|$GREETING|${#SANDBOX_TOKEN}"; whoami; grep -c "[[:space:]]$(hostname)$" /etc/hosts; df --output=size -m /tmp | tail -1',
    );
    const [hostname, etcHostname, env, who, hostsLines, tmpMb] = out.trim().split('\n');
    assert.equal(hostname, id);
    assert.equal(etcHostname, id);
    const [h, sid, greeting, tokenLength] = env!.split('|');
    assert.deepEqual([h, sid, greeting], [id, id, 'hello pool']);
    assert.ok(Number(tokenLength) > 20, 'the sandbox token is delivered');
    assert.equal(who, 'agent');
    assert.equal(hostsLines, '1');
    assert.equal(Number(tmpMb), 512, '/tmp is half the memory, as for a cold create');

    // The home and cold tier are the user's, mounted as for a cold create (the home nosuid,nodev).
    const mounts = await sh(id, 'awk \'$5=="/home/agent"||$5=="/data/cold"{print $5, $6, $(NF-2)}\' /proc/self/mountinfo | tail -2');
    assert.match(mounts, /\/home\/agent rw,nosuid,nodev\S* ext4/);
    assert.match(mounts, /\/data\/cold \S+ fuse\.s3fs/);
    await sh(id, 'echo kept > ~/note.txt && echo cold > /data/cold/pool-cold.txt');
    const token = (await api.call('POST', `/sandboxes/${id}/heartbeat`)).status;
    assert.equal(token, 200);

    // Another create never gets this container, and the pool fills up again behind the claim. This one asks for
    // other limits than the pool's (the default shape, which the claim above had and kept without a `docker update`):
    // its claim sets them.
    await poolFull();
    const pool2 = new Set((await readyPool()).map((c) => c.Id));
    const other = await create(uniqueUser('pool2'), { cpu: 0.5 });
    const otherInfo = await inspect(other);
    assert.notEqual(otherInfo.Id, info.Id);
    assert.ok(pool2.has(otherInfo.Id), 'a shape with the pool /tmp size is claimed whatever its CPU');
    assert.equal(otherInfo.HostConfig.NanoCpus, 0.5e9, 'the claim set the CPU asked for');
    assert.equal(info.HostConfig.NanoCpus, 1e9);

    // The next sandbox of the same user sees the home and the cold tier.
    const destroyed = await api.destroyAndWait(id, true);
    assert.equal(destroyed.final.body.status, 'stopped', destroyed.final.text);
    assert.equal(await containerExists(info.Id), false, 'a claimed container is removed, never reused');
    await poolFull();
    const again = await create(user);
    assert.equal(await sh(again, 'cat ~/note.txt /data/cold/pool-cold.txt'), 'kept\ncold\n');
  });

  it('fails a create whose home cannot be made with nothing left behind, and leaves the pool alone', async () => {
    await poolFull();
    const pool = new Set((await readyPool()).map((c) => c.Id));
    // A stored home larger than the requested disk: the home fails on the host (quota_exceeded), the cold
    // tier being made beside it; a claim comes only after both.
    const user = uniqueUser('pool-no-home');
    const mib = Buffer.alloc(1024 * 1024);
    for (let part = 0; part < 65; part += 13) {
      await Promise.all(
        Array.from({ length: 13 }, (_, i) =>
          s3().send(new PutObjectCommand({ Bucket: stack.env.STORAGE_BUCKET, Key: `${hotPrefix(stack, user)}part-${part + i}.bin`, Body: mib })),
        ),
      );
    }
    const res = await api.create(user, { disk_mb: 64 });
    assert.equal(res.status, 409, res.text);
    assert.equal(res.body.error.code, 'quota_exceeded');
    assert.deepEqual(new Set((await readyPool()).map((c) => c.Id)), pool, 'no warm container was taken');
    const listed = await api.call('GET', `/sandboxes?user_id=${user}`);
    const [failed] = listed.body.sandboxes as { sandbox_id: string; status: string }[];
    assert.equal(failed?.status, 'failed', listed.text);
    const id = failed!.sandbox_id;
    assert.equal(await containerExists(id), false);
    const mounts = readFileSync('/proc/mounts', 'utf8');
    assert.ok(!mounts.includes(join(stack.stateDir, 'sandboxes', id)), 'no mount of the failed sandbox stays');
    assert.equal(existsSync(join(stack.stateDir, 'sandboxes', id)), false, 'nor its state');
  });

  it('keeps a claimed sandbox whole across pause and resume, and leaves no mount behind at its end', async () => {
    await poolFull();
    const id = await create(uniqueUser('pause'));
    assert.ok((await inspect(id)).Config.Labels[poolLabel], 'claimed from the pool');
    await sh(id, 'echo before > ~/f.txt; echo tmp > /tmp/t.txt');
    const stop = await api.call('POST', `/sandboxes/${id}/pause`);
    assert.ok([200, 202].includes(stop.status), stop.text);
    const start = await api.call('POST', `/sandboxes/${id}/resume`);
    assert.ok([200, 202].includes(start.status), start.text);
    await waitFor('the sandbox to be ready again', async () => (await api.get(id)).body.status === 'ready', 60_000);
    assert.equal(await sh(id, 'hostname; cat ~/f.txt /tmp/t.txt; echo "$SANDBOX_ID"'), `${id}\nbefore\ntmp\n${id}\n`);
    const poolDir = join(stack.stateDir, 'pool', (await inspect(id)).Config.Labels[poolLabel]!);
    const destroyed = await api.destroyAndWait(id, false);
    assert.equal(destroyed.final.body.status, 'stopped', destroyed.final.text);
    const mounts = readFileSync('/proc/mounts', 'utf8');
    assert.ok(!mounts.includes(poolDir), 'the pool directory is unmounted');
    assert.ok(!mounts.includes(join(stack.stateDir, 'sandboxes', id)), 'the sandbox state is unmounted');
  });

  it('refills after a claim that left the pool a container only once the new sandbox had its first moments to itself', async () => {
    await poolFull();
    const started = Date.now();
    const id = await create(uniqueUser('refill'));
    const first = await api.exec(id, 'true');
    assert.equal(first.status, 200, first.text);
    const all = await docker.listContainers({ all: true, filters: { label: [poolLabel, `dev.ephemeral-sandbox.host-id=${stack.hostId}`] } });
    const unclaimed = all.filter((c) => c.Names[0]!.startsWith('/sbxpool-'));
    if (Date.now() - started < refillDelayMs - 500) {
      assert.equal(unclaimed.length, depth - 1, 'no pool container is being made while the claimed sandbox runs its first command');
    }
    await poolFull();
  });

  it('sets a claimed hostname only in the container: a remembered pid that is no longer its init is not entered', async () => {
    await poolFull();
    const id = await create(uniqueUser('identity'));
    const info = await inspect(id);
    // Another UTS namespace standing in for a process that took a pool container's pid after it was remembered.
    const stranger = spawn('unshare', ['--uts', 'sleep', '60'], { stdio: 'ignore' });
    try {
      await waitFor(
        'the stranger to be in its own namespace',
        async () => {
          try {
            return readFileSync(`/proc/${stranger.pid}/comm`, 'utf8').trim() === 'sleep';
          } catch {
            return false;
          }
        },
        10_000,
      );
      const strangerName = () => execFileSync('nsenter', ['--target', String(stranger.pid), '--uts', 'hostname'], { encoding: 'utf8' }).trim();
      const before = strangerName();
      await applyIdentity(new DockerClient('/var/run/docker.sock'), info.Id, id, {
        pid: stranger.pid!,
        hostname: 'remembered',
        hostnamePath: '',
        hostsPath: '',
      });
      assert.equal(strangerName(), before, 'the process outside the container keeps its hostname');
      assert.equal((await sh(id, 'hostname')).trim(), id, 'the container was found by asking the engine');
    } finally {
      stranger.kill('SIGKILL');
    }
  });

  it('removes the pool containers of a daemon that died and fills a fresh pool when it is back', async () => {
    await poolFull();
    const old = (await readyPool()).map((c) => c.Id);
    await stack.stopDaemon();
    stack.startDaemon();
    await waitFor(
      'the old pool containers to go',
      async () => {
        for (const c of old) if (await containerExists(c)) return false;
        return true;
      },
      60_000,
    );
    await poolFull();
  });
});

describe('the SSM wrapper (bin/host-agent)', () => {
  it('reaches the host daemon through its loopback door with no process of its own (no curl, no node on PATH)', async () => {
    await waitFor('the daemon to listen', async () => (await readyPool()).length > 0, 60_000);
    const out = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      const child = spawn(join(repoRoot, 'host-agent', 'bin', 'host-agent'), ['status', encodeInline({})], {
        env: { AGENT_SOCKET: stack.env.AGENT_SOCKET!, PATH: '/nonexistent' },
      });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (c) => (stdout += c));
      child.stderr.on('data', (c) => (stderr += c));
      child.on('close', (code) => resolve({ code, stdout, stderr }));
    });
    assert.equal(out.code, 0, out.stderr);
    const envelope = JSON.parse(out.stdout);
    assert.equal(envelope.ok, true);
    assert.ok(Array.isArray(envelope.result.containers));
  });

  it('refuses a request on the loopback door without the daemon token', async () => {
    const [port] = readFileSync(`${stack.env.AGENT_SOCKET}.endpoint`, 'utf8').trim().split(' ');
    const status = await new Promise<number>((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port: Number(port), method: 'POST', path: '/v1/status', headers: { Authorization: 'Bearer nope' } }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', reject);
      req.end(encodeInline({}));
    });
    assert.equal(status, 403);
  });
});
