/**
 * Sandbox hardening on the real local stack and real Docker: what a sandbox
 * process is (not root, no capabilities, no new privileges, seccomp on),
 * what its container is given (and never given), and that a fork bomb and a
 * memory hog stay inside their own sandbox while the host and the other
 * sandboxes carry on.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { startLocalStack, type LocalStack } from '../../lib/local/stack';
import { apiClient, type ApiClient } from '../support/api-client';
import { containerExists, inspect } from '../support/docker';

let stack: LocalStack;
let api: ApiClient;
const created: string[] = [];

async function createSandbox(config?: Record<string, unknown>): Promise<string> {
  const res = await api.create('hardening-user', config);
  assert.equal(res.status, 201, res.text);
  created.push(res.body.sandbox_id);
  return res.body.sandbox_id;
}

async function run(id: string, command: string, extra: Record<string, unknown> = {}) {
  const res = await api.exec(id, command, extra);
  assert.equal(res.status, 200, res.text);
  return res.body as { exit_code: number; stdout: string; stderr: string; timed_out: boolean };
}

/** The host is fine: the API answers, and the host can still start processes. */
async function assertHostHealthy(): Promise<void> {
  const health = await apiClient(stack.url, undefined).call('GET', '/health');
  assert.equal(health.status, 200);
  assert.equal(health.body.status, 'healthy');
  const forked = spawnSync('/bin/sh', ['-c', 'echo alive'], { encoding: 'utf8', timeout: 10_000 });
  assert.equal(forked.stdout, 'alive\n');
}

/** The pids cgroup of a container (cgroup v1 with the cgroupfs driver, or v2). */
function pidsCurrent(containerId: string): number | undefined {
  for (const path of [`/sys/fs/cgroup/pids/docker/${containerId}/pids.current`, `/sys/fs/cgroup/system.slice/docker-${containerId}.scope/pids.current`]) {
    try {
      return Number(readFileSync(path, 'utf8').trim());
    } catch {
      // not this layout
    }
  }
  return undefined;
}

before(async () => {
  stack = await startLocalStack({ port: 0, reaperIntervalMs: 0 });
  api = apiClient(stack.url, stack.apiKey);
});
after(async () => {
  for (const id of created) await api.destroy(id, false).catch(() => undefined);
  await stack?.close();
});

describe('what runs in a sandbox', () => {
  let id: string;
  before(async () => {
    id = await createSandbox();
  });

  it('is not root', async () => {
    const out = await run(id, 'id -u; id -g; id -un');
    assert.equal(out.stdout, '1000\n1000\nagent\n');
  });

  it('has no capabilities at all, no new privileges, and a seccomp filter', async () => {
    const out = await run(id, 'grep -E "^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp):" /proc/self/status');
    const status = Object.fromEntries(
      out.stdout
        .trim()
        .split('\n')
        .map((l) => l.split(/:\s+/) as [string, string]),
    );
    assert.deepEqual(status, {
      CapInh: '0000000000000000',
      CapPrm: '0000000000000000',
      CapEff: '0000000000000000',
      CapBnd: '0000000000000000',
      CapAmb: '0000000000000000',
      NoNewPrivs: '1',
      // 2 = SECCOMP_MODE_FILTER: Docker's default profile is loaded.
      Seccomp: '2',
    });
  });

  it('shows the same through capsh when the image has it', async () => {
    const out = await run(id, 'command -v capsh >/dev/null || { echo no-capsh; exit 0; }; capsh --print');
    if (out.stdout.trim() === 'no-capsh') return; // the image ships no libcap2-bin: /proc/self/status above is the proof
    assert.match(out.stdout, /^Current: =?\s*$/m);
    assert.match(out.stdout, /^Bounding set =\s*$/m);
  });

  it('cannot become root: setuid programs do not elevate, and exec as root is refused by the API', async () => {
    const out = await run(id, 'su -c "id -u" root </dev/null 2>&1; echo "rc=$?"');
    assert.doesNotMatch(out.stdout, /^0$/m);
    assert.match(out.stdout, /rc=[1-9]/);
    const asRoot = await api.exec(id, 'id -u', { user: 'root' });
    assert.equal(asRoot.status, 400);
    assert.equal(asRoot.body.error.code, 'validation_error');
    assert.match(asRoot.body.error.message, /user: must not be root/);
  });

  it('has a read-only root, a small noexec-free tmpfs /tmp, and no docker socket', async () => {
    const out = await run(
      id,
      [
        'touch /usr/local/bin/x 2>&1 | grep -q "Read-only file system" && echo ro-root',
        'touch /etc/x 2>&1 | grep -q "Read-only file system" && echo ro-etc',
        'grep " /tmp " /proc/mounts',
        'for s in /var/run/docker.sock /run/docker.sock /docker.sock; do [ -e $s ] && echo "socket $s"; done',
        'grep -c docker.sock /proc/mounts || true',
      ].join('; '),
    );
    assert.match(out.stdout, /^ro-root$/m);
    assert.match(out.stdout, /^ro-etc$/m);
    assert.match(out.stdout, /^tmpfs \/tmp tmpfs rw,nosuid,nodev,.*size=\d+k/m);
    assert.doesNotMatch(out.stdout, /socket /);
    assert.match(out.stdout, /^0$/m);
  });

  it('is given exactly the hardened container the checklist asks for', async () => {
    const info = await inspect(id);
    const h = info.HostConfig as any;
    assert.equal(h.Privileged, false);
    assert.deepEqual(h.CapDrop, ['ALL']);
    assert.ok(!h.CapAdd || h.CapAdd.length === 0, `CapAdd: ${h.CapAdd}`);
    assert.ok(h.SecurityOpt.includes('no-new-privileges:true'));
    assert.ok(!h.SecurityOpt.some((o: string) => /seccomp=unconfined|apparmor=unconfined|label=disable/.test(o)), h.SecurityOpt.join(','));
    assert.equal(h.ReadonlyRootfs, true);
    assert.equal(h.PidsLimit, Number(stack.env.SANDBOX_PIDS_LIMIT ?? 512));
    assert.ok(h.Memory > 0);
    assert.equal(h.MemorySwap, h.Memory, 'no swap on top of the memory limit');
    assert.ok(h.NanoCpus > 0);
    assert.match(h.Tmpfs['/tmp'], /nosuid/);
    assert.match(h.Tmpfs['/tmp'], /nodev/);
    assert.match(h.Tmpfs['/tmp'], /size=\d+m/);
    assert.ok(!h.Devices || h.Devices.length === 0);
    assert.equal(h.PublishAllPorts, false);
    assert.deepEqual(Object.keys(h.PortBindings ?? {}), [], 'no published ports: nothing inbound');
    assert.notEqual(h.NetworkMode, 'host');
    assert.notEqual(h.PidMode, 'host');
    assert.notEqual(h.IpcMode, 'host');
    assert.notEqual(h.UsernsMode, 'host');
    assert.equal(info.Config.User, '1000:1000');
    const sources = info.Mounts.map((m: any) => `${m.Source}:${m.Destination}`);
    assert.ok(!sources.some((s: string) => s.includes('docker.sock')), sources.join('\n'));
    assert.deepEqual(info.Mounts.map((m: any) => m.Destination).sort(), ['/data/cold', '/home/agent', '/run/sandbox/io']);
    // The commands' stdio pipes: the sandbox can open the FIFOs in it, never add to or change the directory.
    assert.equal(info.Mounts.find((m: any) => m.Destination === '/run/sandbox/io')?.RW, false);
    assert.ok(
      info.Mounts.every((m: any) => m.Source.startsWith(stack.stateDir + '/')),
      'only its own state is mounted',
    );
  });
});

describe('captured output', () => {
  it('is capped at 1 MiB per stream in the answer, head and tail kept, says how much there was, and keeps it all', async () => {
    const id = await createSandbox();
    const res = await api.exec(id, "head -c 3000000 /dev/zero | tr '\\0' a; echo; head -c 2000000 /dev/zero | tr '\\0' e >&2; echo END");
    assert.equal(res.status, 200, res.text.slice(0, 300));
    const out = res.body;
    assert.equal(out.exit_code, 0);
    assert.equal(out.stdout_truncated, true);
    assert.equal(out.stderr_truncated, true);
    assert.equal(out.stdout_bytes, 3_000_000 + 1 + 4);
    assert.equal(out.stderr_bytes, 2_000_000);
    // 1 MiB of each stream's own bytes, with a line between head and tail that says how much is left out.
    const kept = (text: string) => Buffer.byteLength(text.replace(/\n\[\.\.\. \d+ bytes truncated \.\.\.\]\n/, ''));
    assert.match(out.stdout, /\n\[\.\.\. \d+ bytes truncated \.\.\.\]\n/);
    assert.ok(kept(out.stdout) <= 1 << 20 && kept(out.stderr) <= 1 << 20, `${out.stdout.length} + ${out.stderr.length} characters came back`);
    assert.ok(out.stdout.startsWith('aaaa') && out.stdout.endsWith('END\n'), 'head and tail are kept');
    // Not capped by SSM's 24,000 characters, and the whole of it is kept: read from the middle by offset.
    const middle = await api.call('GET', `/sandboxes/${id}/commands/${out.command_id}?stdout_offset=2999990&stderr_offset=1999999`);
    assert.equal(middle.status, 200, middle.text.slice(0, 300));
    assert.equal(middle.body.stdout, 'aaaaaaaaaa\nEND\n');
    assert.equal(middle.body.stderr, 'e');
  });
});

describe('a fork bomb', () => {
  let bombed: string;
  let bystander: string;
  before(async () => {
    [bombed, bystander] = await Promise.all([createSandbox(), createSandbox()]);
  });

  it('is held at the pids limit while the host and the other sandboxes carry on', async () => {
    const limit = (await inspect(bombed)).HostConfig.PidsLimit!;
    const containerId = (await inspect(bombed)).Id;
    const bomb = api.exec(bombed, ':(){ :|:& };:', { timeout: 20 });
    // Let it grow into the limit, then look around while it rages.
    let peak = 0;
    const started = Date.now();
    while (Date.now() - started < 8_000) {
      peak = Math.max(peak, pidsCurrent(containerId) ?? 0);
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.ok(peak <= limit, `pids ${peak} > limit ${limit}`);
    assert.ok(peak >= limit * 0.5, `the bomb reached ${peak} of ${limit} pids: it did run`);
    await assertHostHealthy();
    const other = await run(bystander, 'echo still here; ls / | wc -l');
    assert.match(other.stdout, /^still here\n\d+\n$/);
    // The bomb's first call backgrounds itself, so the exec may answer while the bomb goes on.
    const answer = await bomb;
    assert.equal(answer.status, 200, answer.text);
  });

  it('ends with its sandbox: destroy removes every process, the host is fine', async () => {
    assert.equal((await api.destroy(bombed, false)).status, 204);
    assert.equal(await containerExists(bombed), false);
    await assertHostHealthy();
    assert.equal((await run(bystander, 'echo ok')).stdout, 'ok\n');
  });
});

describe('a memory hog', () => {
  let hog: string;
  let bystander: string;
  before(async () => {
    [hog, bystander] = await Promise.all([createSandbox({ memory_mb: 256 }), createSandbox({ memory_mb: 256 })]);
  });

  it('is OOM-killed inside its own sandbox, which stays usable', async () => {
    // Touches every page (bytes of 1s, not calloc'd zeros), 32 MiB at a time, with no end.
    const hogScript = 'python3 -c "b=[]\nwhile True: b.append(b\'\\x01\' * (32 << 20))"';
    const out = await run(hog, hogScript, { timeout: 60 });
    assert.equal(out.timed_out, false);
    assert.equal(out.exit_code, 137, `killed by SIGKILL (the OOM killer): ${out.stderr}`);
    const info = await inspect(hog);
    assert.equal(info.State.Running, true, 'the sandbox itself is still up');
    assert.equal(info.HostConfig.Memory, 256 * 1024 * 1024);
    const after = await run(hog, 'echo alive');
    assert.equal(after.stdout, 'alive\n');
    assert.equal((await api.get(hog)).body.status, 'ready');
  });

  it('left the host and the other sandbox untouched', async () => {
    await assertHostHealthy();
    const other = await run(bystander, 'python3 -c "x = bytearray(b\'\\x01\' * (64 << 20)); print(len(x))"');
    assert.equal(other.exit_code, 0, other.stderr);
    assert.equal(other.stdout, `${64 << 20}\n`);
    assert.equal((await inspect(bystander)).State.Running, true);
  });
});

describe('disk', () => {
  it('/tmp is capped by its tmpfs size', async () => {
    const id = await createSandbox({ memory_mb: 1024 });
    const out = await run(id, 'dd if=/dev/zero of=/tmp/fill bs=1M count=2000 2>&1; echo "rc=$?"; rm -f /tmp/fill', { timeout: 120 });
    assert.match(out.stdout, /No space left on device/);
    assert.match(out.stdout, /rc=1/);
    assert.equal((await run(id, 'echo ok')).stdout, 'ok\n');
  });

  it('the home is a file system of its own, disk_mb in size; the root is read-only, so nothing else on disk is writable', async () => {
    const id = await createSandbox({ disk_mb: 64 });
    const out = await run(id, "df -m ~ | awk 'NR==2{print $1, $2}'; touch /usr/x 2>&1; touch /var/x 2>&1; echo done");
    assert.match(out.stdout, /^\/dev\/loop\d+ (6[0-4])\n/);
    assert.match(out.stdout, /touch: cannot touch '\/usr\/x': Read-only file system\ntouch: cannot touch '\/var\/x': Read-only file system\ndone\n$/);
  });

  it('documents why no per-container disk quota is set on this engine', async () => {
    // Docker's --storage-opt size needs overlay2 over xfs mounted with pquota; say plainly when it is not there.
    const probe = spawnSync(
      'docker',
      ['run', '--rm', '--label', 'dev.ephemeral-sandbox.owner=ephemeral-sandbox', '--storage-opt', 'size=1G', '--entrypoint', 'true', stack.env.SANDBOX_IMAGE!],
      { encoding: 'utf8', timeout: 60_000 },
    );
    if (probe.status === 0) {
      console.log('# this engine supports --storage-opt size: the host-agent could set a root-disk quota here');
      return;
    }
    assert.match(probe.stderr, /--storage-opt is supported only for overlay over xfs with 'pquota' mount option/);
  });
});
