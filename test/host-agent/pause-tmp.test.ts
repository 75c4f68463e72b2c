/**
 * /tmp across pause and resume, through the host-agent CLI bundled as it
 * ships, against the real Docker engine: files, nested directories, modes,
 * links and sparse files come back byte for byte; symlinks stay symlinks and
 * nothing on the host changes; empty and full tmpfs; unreadable files are
 * reported; the archive is bounded, root-only, kept when a restore fails and
 * removed by resume and destroy.
 * Run: node --import tsx --test test/host-agent/pause-tmp.test.ts
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readdir, readFile, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { TestHost, docker, hostCommand } from './fixture';

const host = new TestHost();
before(() => host.start());
after(() => host.close());

async function sh(id: string, command: string, user = 'agent'): Promise<string> {
  const result = await host.exec(id, command, { cwd: '/tmp', user });
  assert.equal(result.exitCode, 0, `${command}\n${result.stderr}`);
  return result.stdout;
}

/** Every entry below /tmp: type, mode, size, mtime, link target, and a hash of each regular file. */
const snapshotCommand = "find /tmp -mindepth 1 -printf '%y %m %s %T@ %n %p -> %l\\n' | sort; find /tmp -type f -exec sha256sum {} + | sort";

const archivePath = (id: string) => join(host.stateDir, 'sandboxes', id, 'tmp.tar');
const running = async (id: string) => (await docker.getContainer(id).inspect()).State.Running;
const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

describe('/tmp across pause and resume', () => {
  it('brings back files, nested directories, modes, mtimes, hard links, FIFOs and sparse files byte for byte', async () => {
    const id = await host.createSandbox();
    await sh(
      id,
      [
        'mkdir -p /tmp/work/deep/er "/tmp/name with space"',
        'head -c 3000000 /dev/urandom > /tmp/work/deep/er/blob.bin',
        'printf "hello\\n" > /tmp/note.txt && ln /tmp/note.txt /tmp/work/note-link',
        'printf "#!/bin/sh\\necho ran from tmp\\n" > /tmp/work/run.sh && chmod 0755 /tmp/work/run.sh',
        'echo inside > "/tmp/name with space/-rf" && touch -- /tmp/--remove-files',
        'truncate -s 200M /tmp/sparse.img && printf tail >> /tmp/sparse.img',
        'mkfifo -m 0620 /tmp/fifo',
        'chmod 0640 /tmp/note.txt && chmod 0604 /tmp/work/deep/er/blob.bin && chmod 0700 /tmp/work/deep && chmod 0750 /tmp/work',
        'touch -d "2001-02-03 04:05:06" /tmp/note.txt /tmp/work/deep/er',
      ].join(' && '),
    );
    const before = await sh(id, snapshotCommand);

    const paused = await host.ok('pause', { sandboxId: id });
    assert.equal(paused.paused, true);
    assert.ok(
      paused.tmp && paused.tmp.bytes > 3_000_000 && paused.tmp.bytes < 4_000_000,
      `archive of ${paused.tmp?.bytes} bytes (the sparse file must stay sparse)`,
    );
    assert.deepEqual(paused.tmp.warnings, []);
    assert.equal(await running(id), false);
    const archive = await stat(archivePath(id));
    assert.equal(archive.mode & 0o777, 0o600);
    assert.equal(archive.uid, process.getuid!());

    const resumed = await host.ok('resume', { sandboxId: id });
    assert.deepEqual({ resumed: resumed.resumed, bytes: resumed.tmp?.bytes }, { resumed: true, bytes: archive.size });
    assert.equal(existsSync(archivePath(id)), false, 'the archive is deleted once restored');
    assert.equal(await sh(id, snapshotCommand), before);
    assert.equal(await sh(id, '/tmp/work/run.sh; du -k /tmp/sparse.img | cut -f1; stat -c %U:%G /tmp/work/deep/er/blob.bin'), 'ran from tmp\n4\nagent:agent\n');
    await host.ok('destroy', { sandboxId: id, graceful: false });
  });

  it('restores a symlink to /etc/passwd as a symlink, and nothing on the host changes', async () => {
    const id = await host.createSandbox();
    const tag = randomBytes(6).toString('hex');
    const hostOnly = `/tmp/planted-by-restore-${tag}`;
    const passwdBefore = await stat('/etc/passwd');
    const passwdHash = sha256(await readFile('/etc/passwd'));
    const sandboxState = join(host.stateDir, 'sandboxes', id);
    await sh(
      id,
      [
        'ln -s /etc/passwd /tmp/passwd',
        'ln -s / /tmp/rootlink',
        `ln -s ${hostOnly} /tmp/dangling`,
        `ln -s ${sandboxState} /tmp/statelink`,
        'mkdir /tmp/d && ln -s ../passwd /tmp/d/relative',
      ].join(' && '),
    );

    const paused = await host.ok('pause', { sandboxId: id });
    assert.equal(paused.paused, true);
    const listing = await hostCommand('tar', ['-tvf', archivePath(id)]);
    assert.match(listing, /^l.* passwd -> \/etc\/passwd$/m, 'stored as a symlink entry, not the host file it names');
    assert.doesNotMatch(listing, /root:x:0:0/);

    await host.ok('resume', { sandboxId: id });
    const links = await sh(
      id,
      'for l in passwd rootlink dangling statelink d/relative; do printf "%s %s\\n" "$(stat -c %F "$l")" "$(readlink "$l")"; done; grep -c "^agent:" /tmp/passwd',
    );
    assert.equal(
      links,
      `symbolic link /etc/passwd\nsymbolic link /\nsymbolic link ${hostOnly}\nsymbolic link ${sandboxState}\nsymbolic link ../passwd\n1\n`,
      'the links resolve inside the sandbox, to its own /etc/passwd',
    );
    const passwdAfter = await stat('/etc/passwd');
    assert.equal(sha256(await readFile('/etc/passwd')), passwdHash);
    assert.equal(passwdAfter.mtimeMs, passwdBefore.mtimeMs);
    assert.equal(existsSync(hostOnly), false);
    assert.equal(existsSync(join(sandboxState, 'passwd')), false);
    await host.ok('destroy', { sandboxId: id, graceful: false });
  });

  it('pauses and resumes an empty /tmp', async () => {
    const id = await host.createSandbox();
    assert.equal(await sh(id, 'ls -A /tmp'), '');
    const paused = await host.ok('pause', { sandboxId: id });
    assert.ok(paused.tmp && paused.tmp.bytes > 0 && paused.tmp.bytes <= 10_240, `empty archive of ${paused.tmp?.bytes} bytes`);
    const resumed = await host.ok('resume', { sandboxId: id });
    assert.equal(resumed.resumed, true);
    assert.equal(await sh(id, 'ls -A /tmp; stat -c %a /tmp'), '1777\n', '/tmp itself keeps its mode');
    assert.equal(existsSync(archivePath(id)), false);
    await host.ok('destroy', { sandboxId: id, graceful: false });
  });

  it('keeps a /tmp filled to its size limit', async () => {
    const small = host.createRequest();
    await host.ok('create', small, { SANDBOX_TMP_MB: '16' });
    const full = await host.exec(
      small.sandboxId,
      'echo small > /tmp/a; head -c 20000000 /dev/urandom > /tmp/fill; echo "exit $?"; stat -c %s /tmp/fill; df -k /tmp | tail -1',
      { cwd: '/tmp' },
    );
    assert.match(full.stdout, /^exit 1\n/, 'the tmpfs is full');
    assert.match(full.stderr, /No space left on device/);
    const size = Number(full.stdout.split('\n')[1]);
    assert.ok(size > 16_000_000 && size <= 16 * 1024 * 1024, `filled ${size} bytes`);
    const before = await sh(small.sandboxId, snapshotCommand);

    const paused = await host.ok('pause', { sandboxId: small.sandboxId });
    assert.ok(paused.tmp && paused.tmp.bytes > size);
    await host.ok('resume', { sandboxId: small.sandboxId });
    assert.equal(await sh(small.sandboxId, snapshotCommand), before);
    await host.ok('destroy', { sandboxId: small.sandboxId, graceful: false });
  });

  it('skips files their own owner cannot read, with a note, and keeps the rest', async () => {
    const id = await host.createSandbox();
    await sh(id, 'echo fine > /tmp/readable && echo hidden > /tmp/secret && chmod 000 /tmp/secret && mkdir -p /tmp/closed/in && chmod 000 /tmp/closed');
    const paused = await host.ok('pause', { sandboxId: id });
    assert.equal(paused.paused, true);
    const notes = paused.tmp?.warnings.join('\n') ?? '';
    assert.match(notes, /secret: Warning: Cannot open: Permission denied/);
    assert.match(notes, /closed: its owner \(1000:1000\) cannot list it; it is not kept/);
    await host.ok('resume', { sandboxId: id });
    assert.equal(await sh(id, 'cat /tmp/readable; ls -A /tmp'), 'fine\nreadable\n');
    await host.ok('destroy', { sandboxId: id, graceful: false });
  });

  it("keeps other users' files, even ones the sandbox user cannot read, with their owners, in each other's directories", async () => {
    const id = await host.createSandbox();
    await sh(id, 'mkdir -m 1777 /tmp/shared && echo mine > /tmp/mine.txt && mkdir /tmp/agent-dir && chmod 0777 /tmp/agent-dir');
    // As nobody, like an exec with "user": "nobody": mktemp's 0600 files and 0700 directories.
    await sh(
      id,
      [
        'umask 077',
        'echo secret > /tmp/nobody-secret',
        'mkdir /tmp/nobody-dir && echo inner > /tmp/nobody-dir/inner && mkdir /tmp/nobody-dir/sub && echo deep > /tmp/nobody-dir/sub/deep',
        'echo theirs > /tmp/shared/from-nobody',
        'echo inside > /tmp/agent-dir/from-nobody',
        'mkdir -m 1777 /tmp/nobody-open',
        'touch -d "2001-02-03 04:05:06" /tmp/nobody-secret',
      ].join(' && '),
      'nobody',
    );
    await sh(id, 'echo back > /tmp/nobody-open/from-agent');
    // What each owner sees: the sandbox user cannot read nobody's files, nobody cannot read some of the sandbox user's.
    const view = (user: string) =>
      sh(
        id,
        "find /tmp -mindepth 1 -printf '%u:%g %m %y %T@ %P\\n' 2>/dev/null | sort; find /tmp -type f -readable -exec sha256sum {} + 2>/dev/null | sort",
        user,
      );
    const before = { agent: await view('agent'), nobody: await view('nobody') };
    assert.match(before.nobody, /nobody:nogroup 600 f 981173106\.0+ nobody-secret/);
    assert.match(before.nobody, /nobody:nogroup 700 d \S+ nobody-dir\n/);

    const paused = await host.ok('pause', { sandboxId: id });
    assert.deepEqual(paused.tmp?.warnings, []);
    await host.ok('resume', { sandboxId: id });

    assert.equal(await view('agent'), before.agent);
    assert.equal(await view('nobody'), before.nobody);
    assert.equal(
      await sh(id, 'cat /tmp/nobody-secret /tmp/nobody-dir/sub/deep /tmp/shared/from-nobody /tmp/agent-dir/from-nobody', 'nobody'),
      'secret\ndeep\ntheirs\ninside\n',
    );
    assert.equal(await sh(id, 'cat /tmp/nobody-open/from-agent /tmp/mine.txt'), 'back\nmine\n');
    await host.ok('destroy', { sandboxId: id, graceful: false });
  });

  it("reports another user's files that cannot go back (their directory's mode changed after they were made), and restores the rest", async () => {
    const id = await host.createSandbox();
    await sh(id, 'mkdir -m 0777 /tmp/was-open && echo mine > /tmp/mine.txt');
    await sh(id, 'echo theirs > /tmp/was-open/from-nobody && echo top > /tmp/nobody-top', 'nobody');
    await sh(id, 'chmod 0755 /tmp/was-open');
    await host.ok('pause', { sandboxId: id });
    const resumed = await host.ok('resume', { sandboxId: id });
    assert.match(
      resumed.tmp?.warnings?.join('\n') ?? '',
      /files of 65534:65534 not restored: tar as 65534:65534 exited 2: .*was-open\/from-nobody: Cannot open: Permission denied/s,
    );
    assert.equal(await sh(id, 'cat /tmp/mine.txt /tmp/nobody-top; ls -A /tmp/was-open'), 'mine\ntop\n');
    assert.equal(existsSync(archivePath(id)), false, 'the archive is not kept for a restore that cannot succeed');
    await host.ok('destroy', { sandboxId: id, graceful: false });
  });

  it('refuses to pause (the sandbox keeps running) when the archive would pass twice the tmpfs size', async () => {
    const request = host.createRequest();
    await host.ok('create', request, { SANDBOX_TMP_MB: '1' });
    const id = request.sandboxId;
    // 3,000 empty files take no tmpfs pages, but 1.5 KiB each in tar: about 4.5 MiB against a 2 MiB bound.
    await sh(id, 'mkdir /tmp/many && cd /tmp/many && seq 3000 | xargs touch && echo keep > /tmp/keep');
    const refused = await host.run('pause', { sandboxId: id });
    assert.equal(refused.envelope.ok, false);
    assert.equal(!refused.envelope.ok && refused.envelope.error.code, 'storage_error');
    assert.match(!refused.envelope.ok ? refused.envelope.error.message : '', /passed 2097152 bytes.*keeps running/);
    assert.equal(await running(id), true);
    assert.equal(await sh(id, 'cat /tmp/keep; ls /tmp/many | wc -l'), 'keep\n3000\n');
    assert.equal(
      await sh(id, 'for p in /proc/[0-9]*; do cat "$p/comm" 2>/dev/null; done | grep -cx tar || true'),
      '0\n',
      'the stopped tar is not left running',
    );
    assert.deepEqual(
      (await readdir(join(host.stateDir, 'sandboxes', id))).filter((name) => name.startsWith('tmp')),
      [],
      'no archive, not even a partial one, is left on the host',
    );

    await sh(id, 'rm -r /tmp/many');
    assert.equal((await host.ok('pause', { sandboxId: id })).paused, true);
    await host.ok('resume', { sandboxId: id });
    assert.equal(await sh(id, 'ls -A /tmp'), 'keep\n');
    await host.ok('destroy', { sandboxId: id, graceful: false });
  });

  it('answers a failed restore with the container running and the archive kept; a later resume restores it', async () => {
    const id = await host.createSandbox();
    await sh(id, 'echo precious > /tmp/precious.txt');
    await host.ok('pause', { sandboxId: id });
    const good = await readFile(archivePath(id));
    const takenAt = (await stat(archivePath(id))).mtime;
    // Damaged on the host's disk; the time stays that of the pause.
    await writeFile(archivePath(id), randomBytes(good.length));
    await utimes(archivePath(id), takenAt, takenAt);

    const failed = await host.run('resume', { sandboxId: id });
    assert.equal(failed.envelope.ok, false);
    const error = !failed.envelope.ok ? failed.envelope.error : { code: '', message: '' };
    assert.equal(error.code, 'storage_error');
    assert.match(
      error.message,
      /is running again but its \/tmp was not restored \(tar exited 2: [\s\S]*\); the archive is kept on the host and the next start retries/,
    );
    assert.equal(await running(id), true, 'the sandbox is usable');
    assert.equal(await sh(id, 'echo alive'), 'alive\n');
    assert.equal(existsSync(archivePath(id)), true);

    // A pause now keeps the owed archive: the running /tmp is a failed restore, not newer data.
    const damaged = await readFile(archivePath(id));
    const paused = await host.ok('pause', { sandboxId: id });
    assert.deepEqual(paused, { paused: true });
    assert.ok((await readFile(archivePath(id))).equals(damaged));
    assert.equal((await host.run('resume', { sandboxId: id })).envelope.ok, false);

    // Repaired: resuming the running container retries the restore.
    await writeFile(archivePath(id), good);
    await utimes(archivePath(id), takenAt, takenAt);
    const resumed = await host.ok('resume', { sandboxId: id });
    assert.equal(resumed.tmp?.bytes, good.length);
    assert.equal(await sh(id, 'cat /tmp/precious.txt'), 'precious\n');
    assert.equal(existsSync(archivePath(id)), false);
    assert.deepEqual(await host.ok('resume', { sandboxId: id }), { resumed: true }, 'nothing owed: a running sandbox is left as it is');
    await host.ok('destroy', { sandboxId: id, graceful: false });
  });

  it('replaces an archive taken during the current run (a pause whose stop failed) instead of keeping it', async () => {
    const id = await host.createSandbox();
    await writeFile(archivePath(id), 'left by a pause whose stop failed', { mode: 0o600 });
    await sh(id, 'echo fresh > /tmp/fresh.txt');
    assert.deepEqual(await host.ok('resume', { sandboxId: id }), { resumed: true }, 'a stale archive is not restored over the live /tmp');
    const paused = await host.ok('pause', { sandboxId: id });
    assert.ok(paused.tmp && paused.tmp.bytes >= 10_240);
    await host.ok('resume', { sandboxId: id });
    assert.equal(await sh(id, 'cat /tmp/fresh.txt'), 'fresh\n');
    await host.ok('destroy', { sandboxId: id, graceful: false });
  });

  it('pausing a stopped sandbox keeps its archive; destroy removes it with the rest of the state', async () => {
    const id = await host.createSandbox();
    await sh(id, 'echo once > /tmp/once.txt');
    await host.ok('pause', { sandboxId: id });
    const first = await readFile(archivePath(id));
    assert.deepEqual(await host.ok('pause', { sandboxId: id }), { paused: true });
    assert.ok((await readFile(archivePath(id))).equals(first), 'a second pause does not archive the stopped, empty /tmp over it');
    await host.ok('destroy', { sandboxId: id, graceful: true });
    assert.equal(existsSync(archivePath(id)), false);
    assert.equal(existsSync(join(host.stateDir, 'sandboxes', id)), false);
  });
});
