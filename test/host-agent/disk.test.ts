/**
 * Disk limits through the host-agent CLI bundled as it ships, against the
 * real Docker engine on this ext4 host: a home of diskMb is its own
 * loop-mounted file system (writes past it fail with ENOSPC inside the
 * sandbox while another sandbox and the host keep writing), with fewer
 * inodes than the hot sync carries; /tmp is half the sandbox's memory, so a
 * small sandbox that fills it keeps working, stops and starts.
 * Run: node --import tsx --test test/host-agent/disk.test.ts
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readFile, rm, statfs, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { defaultMaxEntries } from '../../host-agent/src/storage/index';
import { TestHost } from './fixture';
import type { ShellResult } from './fixture';

const host = new TestHost();
before(() => host.start());
after(() => host.close());

const homeOf = (id: string) => join(host.stateDir, 'sandboxes', id, 'home');
const imageOf = (id: string) => join(host.stateDir, 'sandboxes', id, 'home.img');

async function run(id: string, command: string): Promise<ShellResult> {
  return host.exec(id, command, { timeoutSeconds: 120 });
}

async function mountedAt(path: string): Promise<string | undefined> {
  const line = (await readFile('/proc/self/mounts', 'utf8')).split('\n').find((l) => l.split(' ')[1] === path);
  return line?.split(' ').slice(2, 4).join(' ');
}

describe('a home of diskMb', () => {
  let full: string;
  let neighbour: string;
  before(async () => {
    full = await host.createSandbox({ diskMb: 64 });
    neighbour = await host.createSandbox({ diskMb: 64 });
  });

  it('is its own ext4 file system of that size, mounted nosuid and nodev, owned by the sandbox user and empty', async () => {
    assert.match((await mountedAt(homeOf(full))) ?? 'not mounted', /^ext4 rw,nosuid,nodev,noatime/);
    const fs = await statfs(homeOf(full));
    const sizeMb = (fs.blocks * fs.bsize) / 1024 / 1024;
    assert.ok(sizeMb > 60 && sizeMb <= 64, `${sizeMb} MB`);
    // Nothing of the file system's own (no lost+found): the login shell's dotfiles are all there is.
    const inside = await run(full, 'stat -c "%U %a" ~; ls -A ~');
    assert.equal(inside.stdout, 'agent 755\n.bash_logout\n.bashrc\n.profile\n');
  });

  it('has fewer inodes than the hot sync carries entries, so it can never hold a home the sync refuses', async () => {
    const big = await host.createSandbox({ diskMb: 4096 });
    for (const id of [full, big]) {
      const fs = await statfs(homeOf(id));
      assert.ok(fs.files < defaultMaxEntries, `${fs.files} inodes`);
    }
    // 4096 MB is preallocated on the host: give it back now.
    await host.ok('destroy', { sandboxId: big, graceful: false });
    assert.equal(existsSync(imageOf(big)), false);
  });

  it('fails writes past its size with ENOSPC inside the sandbox, while another sandbox and the host keep writing', async () => {
    const fill = await run(full, 'echo first > ~/small.txt && dd if=/dev/zero of=~/fill.bin bs=1M count=100 status=none; echo "dd=$?"');
    assert.match(fill.stderr, /No space left on device/);
    assert.match(fill.stdout, /dd=1/);
    const more = await run(full, 'head -c 4M /dev/zero > ~/more.bin; echo "rc=$?"; cat ~/small.txt');
    assert.equal(more.stdout, 'rc=1\nfirst\n');
    assert.match(more.stderr, /No space left on device/);
    // The neighbour's home and the host are untouched by it.
    const other = await run(neighbour, 'dd if=/dev/zero of=~/ok.bin bs=1M count=20 status=none && echo ok');
    assert.equal(other.stdout, 'ok\n', other.stderr);
    const hostFile = join(host.stateDir, 'host-write-check.bin');
    await writeFile(hostFile, Buffer.alloc(20 * 1024 * 1024));
    await rm(hostFile);
    // /tmp is a separate space.
    assert.equal((await run(full, 'echo t > /tmp/t && cat /tmp/t')).stdout, 't\n');
    // And freeing space in the home makes it writable again.
    assert.equal((await run(full, 'rm ~/fill.bin && head -c 4M /dev/zero > ~/more.bin && stat -c %s ~/more.bin')).stdout, '4194304\n');
  });

  it('is unmounted and removed, image and all, when the sandbox is destroyed', async () => {
    await host.ok('destroy', { sandboxId: full, graceful: false });
    assert.equal(await mountedAt(homeOf(full)), undefined);
    assert.equal(existsSync(join(host.stateDir, 'sandboxes', full)), false);
  });

  it('survives a stop and start with its files, and is mounted again if the host lost the mount meanwhile', async () => {
    await run(neighbour, 'echo kept > ~/kept.txt');
    await host.ok('pause', { sandboxId: neighbour });
    // A host reboot loses mounts; the image stays.
    const { execFileSync } = await import('node:child_process');
    execFileSync('umount', [homeOf(neighbour)]);
    await host.ok('resume', { sandboxId: neighbour });
    const after = await run(neighbour, 'cat ~/kept.txt; stat -c %s ~/ok.bin');
    assert.equal(after.stdout, 'kept\n20971520\n', after.stderr);
  });

  it('refuses a size below the minimum', async () => {
    const answer = await host.run('create', host.createRequest({ diskMb: 8 }));
    assert.equal(answer.envelope.ok, false);
    assert.match(JSON.stringify(answer.envelope), /diskMb/);
  });
});

describe('/tmp sized by memory', () => {
  it('gives a 128 MB sandbox a 64 MB /tmp that, full, leaves it able to run commands, stop and start', async () => {
    const id = await host.createSandbox({ memoryMb: 128 });
    assert.equal((await run(id, "df -m /tmp | awk 'NR==2{print $2}'")).stdout, '64\n');
    const fill = await run(id, 'dd if=/dev/zero of=/tmp/fill bs=1M count=100 status=none; echo "dd=$?"');
    assert.match(fill.stderr, /No space left on device/);
    assert.equal((await run(id, 'echo alive')).stdout, 'alive\n');
    const paused = await host.ok('pause', { sandboxId: id });
    assert.equal(paused.paused, true);
    await host.ok('resume', { sandboxId: id });
    assert.equal((await run(id, 'stat -c %s /tmp/fill')).stdout, String(64 * 1024 * 1024) + '\n');
  });

  it('is half the memory up to SANDBOX_TMP_MB', async () => {
    const id = await host.createSandbox({ memoryMb: 2048 });
    assert.equal((await run(id, "df -m /tmp | awk 'NR==2{print $2}'")).stdout, '1024\n');
    const request = host.createRequest({ memoryMb: 2048 });
    await host.ok('create', request, { SANDBOX_TMP_MB: '256' });
    assert.equal((await run(request.sandboxId as string, "df -m /tmp | awk 'NR==2{print $2}'")).stdout, '256\n');
  });
});
