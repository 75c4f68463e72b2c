/**
 * Hot tier against a real S3 endpoint (s3rver on loopback) and real files.
 * Run: node --import tsx --test test/storage/hot-sync.test.ts
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmod, lstat, mkdir, mkdtemp, readdir, readFile, readlink, rename, rm, symlink, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { createS3Client, hotSyncDown, hotSyncUp, QuotaExceededError, SyncError, StorageError, type HotSyncOptions } from '../../host-agent/src/storage/index';
import { startS3Endpoint, type S3Endpoint } from '../../lib/local/s3-endpoint';

const run = promisify(execFile);
const bucket = 'hot-sync-test';
const agentUid = 1000;
const agentGid = 1000;

let endpoint: S3Endpoint;
let s3: S3Client;
let work: string;
let sequence = 0;

function newClient(): S3Client {
  return createS3Client({ endpoint: endpoint.url, forcePathStyle: true, credentials: endpoint.credentials });
}

/** Options for a fresh home of `user`: its own directory and manifest, under tenant t1. */
function home(user: string, overrides: Partial<HotSyncOptions> = {}): HotSyncOptions {
  const name = `${user}-${++sequence}`;
  return {
    s3,
    bucket,
    prefix: `tenants/t1/users/${user}/hot/`,
    dir: join(work, name, 'home'),
    stateFile: join(work, name, 'state', 'hot-manifest.json'),
    uid: agentUid,
    gid: agentGid,
    quotaBytes: 100 * 1024 * 1024,
    ...overrides,
  };
}

async function keysUnder(prefix: string): Promise<string[]> {
  const keys: string[] = [];
  let token: string | undefined;
  do {
    const page = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }));
    for (const o of page.Contents ?? []) keys.push(o.Key!.slice(prefix.length));
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
  return keys.sort();
}

async function objectText(key: string): Promise<string> {
  const res = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
  return res.Body!.transformToString();
}

/** What a home looks like: kind, permission bits, owner and contents (or link target) of every entry. */
async function describeTree(root: string, rel = ''): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const name of await readdir(join(root, rel))) {
    const path = rel ? `${rel}/${name}` : name;
    const st = await lstat(join(root, path));
    const mode = (st.mode & 0o7777).toString(8);
    const owner = `${st.uid}:${st.gid}`;
    if (st.isSymbolicLink()) out[path] = `link -> ${await readlink(join(root, path))} ${owner}`;
    else if (st.isDirectory()) {
      out[path + '/'] = `dir ${mode} ${owner}`;
      Object.assign(out, await describeTree(root, path));
    } else if (st.isFile()) out[path] = `file ${mode} ${owner} ${await readFile(join(root, path), 'utf8')}`;
    else out[path] = 'special';
  }
  return out;
}

before(async () => {
  endpoint = await startS3Endpoint({ buckets: [bucket] });
  s3 = newClient();
  work = await mkdtemp(join(tmpdir(), 'hot-sync-test-'));
});

after(async () => {
  s3?.destroy();
  await endpoint?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

describe('hot sync', () => {
  it('round-trips a tree with mode bits, symlinks (one pointing outside the home), an empty directory and unicode names', async () => {
    const up = home('roundtrip');
    const first = await hotSyncDown(up);
    assert.deepEqual([first.downloaded, first.bytes], [0, 0], 'an empty prefix gives an empty home');

    const d = up.dir;
    await mkdir(join(d, 'projects/app/src'), { recursive: true });
    await writeFile(join(d, 'projects/app/src/main.py'), 'print("hi")\n');
    await writeFile(join(d, 'projects/app/run.sh'), '#!/bin/sh\necho run\n');
    await chmod(join(d, 'projects/app/run.sh'), 0o755);
    await mkdir(join(d, '.ssh'), { mode: 0o700 });
    await chmod(join(d, '.ssh'), 0o700);
    await writeFile(join(d, '.ssh/id_ed25519'), 'secret key');
    await chmod(join(d, '.ssh/id_ed25519'), 0o600);
    await mkdir(join(d, 'empty/nested-empty'), { recursive: true });
    await symlink('projects/app/run.sh', join(d, 'run'));
    await symlink('/etc/shadow', join(d, 'shadow'));
    await symlink('does/not/exist', join(d, 'dangling'));
    const odd = 'ünï cødé/日本語 "q" & <x> %20+#?\\ 🙂.txt';
    await mkdir(join(d, 'ünï cødé'));
    await writeFile(join(d, odd), 'unicode content');
    await run('mkfifo', [join(d, 'a-fifo')]);
    await writeFile(join(d, 'bad\nname'), 'newline in the name');

    const report = await hotSyncUp(up);
    // files: main.py run.sh id_ed25519 odd; links: run shadow dangling; dirs: projects/ projects/app/ projects/app/src/ .ssh/ empty/ empty/nested-empty/ ünï cødé/
    assert.equal(report.uploaded, 4 + 3 + 7);
    assert.equal(report.skipped, 0);
    assert.equal(report.deleted, 0);
    assert.deepEqual(report.notSynced.map((n) => n.path).sort(), ['a-fifo', 'bad\\nname']);

    // The link to /etc/shadow is stored as a link: its body is the target, never the file's contents.
    assert.equal(await objectText(`${up.prefix}shadow`), '/etc/shadow');

    const down = home('roundtrip');
    const downReport = await hotSyncDown(down);
    assert.equal(downReport.downloaded, 14);
    const expected = await describeTree(up.dir);
    delete expected['a-fifo'];
    delete expected['bad\nname'];
    // The synced-up home was made by root here; a restored home belongs to the agent user.
    for (const [path, desc] of Object.entries(expected)) expected[path] = desc.replace(/ \d+:\d+/, ` ${agentUid}:${agentGid}`);
    assert.deepEqual(await describeTree(down.dir), expected);
    assert.equal((await lstat(down.dir)).uid, agentUid, 'the home itself belongs to the agent user');

    // mtimes come back too.
    const [src, dst] = await Promise.all([lstat(join(up.dir, odd)), lstat(join(down.dir, odd))]);
    assert.equal(Math.round(dst.mtimeMs), Math.round(src.mtimeMs));

    // A restored home synced up again with nothing changed transfers nothing (implied dirs get no new marker: all had one).
    const again = await hotSyncUp(down);
    assert.deepEqual([again.uploaded, again.deleted, again.skipped], [0, 0, 14]);
  });

  it('uploads a changed file, skips unchanged ones and deletes in S3 what was deleted in the home', async () => {
    const o = home('incremental');
    await hotSyncDown(o);
    for (const n of [1, 2, 3, 4, 5]) await writeFile(join(o.dir, `f${n}.txt`), `version 1 of ${n}`);
    const first = await hotSyncUp(o);
    assert.deepEqual([first.uploaded, first.skipped, first.deleted], [5, 0, 0]);

    await writeFile(join(o.dir, 'f1.txt'), 'version 2 of 1, longer');
    await rm(join(o.dir, 'f2.txt'));
    await writeFile(join(o.dir, 'f6.txt'), 'new');
    const second = await hotSyncUp(o);
    assert.deepEqual([second.uploaded, second.skipped, second.deleted], [2, 3, 1]);
    assert.equal(second.bytes, 'version 2 of 1, longer'.length + 'new'.length);
    assert.deepEqual(await keysUnder(o.prefix), ['f1.txt', 'f3.txt', 'f4.txt', 'f5.txt', 'f6.txt']);
    assert.equal(await objectText(`${o.prefix}f1.txt`), 'version 2 of 1, longer');

    // A mode change alone is a change.
    await chmod(join(o.dir, 'f3.txt'), 0o600);
    const third = await hotSyncUp(o);
    assert.deepEqual([third.uploaded, third.skipped, third.deleted], [1, 4, 0]);

    // A file replaced by a directory: the file's key goes, the directory and its file arrive.
    await rm(join(o.dir, 'f4.txt'));
    await mkdir(join(o.dir, 'f4.txt'));
    await writeFile(join(o.dir, 'f4.txt', 'inside'), 'inside a dir now');
    const fourth = await hotSyncUp(o);
    assert.deepEqual([fourth.uploaded, fourth.deleted], [2, 1]);
    assert.deepEqual(await keysUnder(o.prefix), ['f1.txt', 'f3.txt', 'f4.txt/', 'f4.txt/inside', 'f5.txt', 'f6.txt']);

    const restored = home('incremental');
    await hotSyncDown(restored);
    assert.equal(await readFile(join(restored.dir, 'f4.txt', 'inside'), 'utf8'), 'inside a dir now');
    assert.equal(((await lstat(join(restored.dir, 'f3.txt'))).mode & 0o777).toString(8), '600');
  });

  it('round-trips 1,000 small files', async () => {
    const o = home('thousand');
    await hotSyncDown(o);
    for (let dirIndex = 0; dirIndex < 10; dirIndex++) {
      await mkdir(join(o.dir, `d${dirIndex}`));
      await Promise.all(
        Array.from({ length: 100 }, (_, i) => writeFile(join(o.dir, `d${dirIndex}`, `file-${i}.txt`), `content ${dirIndex}/${i}\n`.repeat(20))),
      );
    }
    const up = await hotSyncUp(o);
    assert.equal(up.uploaded, 1_010);
    assert.equal((await keysUnder(o.prefix)).length, 1_010);

    const copy = home('thousand');
    const down = await hotSyncDown(copy);
    assert.equal(down.downloaded, 1_010);
    assert.equal(down.bytes, up.bytes);
    assert.deepEqual(
      await describeTree(copy.dir),
      await describeTree(o.dir).then((t) => Object.fromEntries(Object.entries(t).map(([k, v]) => [k, v.replace(/ \d+:\d+/, ` ${agentUid}:${agentGid}`)]))),
    );
  });

  it('round-trips a deep tree and a file over 8 MB (streamed), and reports a path too long for an S3 key', async () => {
    const o = home('deep');
    await hotSyncDown(o);
    const deep = Array.from({ length: 300 }, () => 'd').join('/');
    await mkdir(join(o.dir, deep), { recursive: true });
    await writeFile(join(o.dir, deep, 'bottom.txt'), 'at the bottom');
    const tooLong = Array.from({ length: 60 }, (_, i) => `segment-number-${i}`).join('/');
    await mkdir(join(o.dir, tooLong), { recursive: true });
    const big = Buffer.alloc(9 * 1024 * 1024);
    for (let i = 0; i < big.length; i += 4096) big.writeUInt32BE(i, i);
    await writeFile(join(o.dir, 'big.bin'), big);

    const up = await hotSyncUp(o);
    assert.equal(up.notSynced.filter((n) => /too long for an S3 key/.test(n.reason)).length, 1, 'reported once: the deeper paths are not walked');

    const copy = home('deep');
    await hotSyncDown(copy);
    assert.equal(await readFile(join(copy.dir, deep, 'bottom.txt'), 'utf8'), 'at the bottom');
    assert.ok(big.equals(await readFile(join(copy.dir, 'big.bin'))));
  });

  it('refuses a home over the quota with QuotaExceededError and uploads or deletes nothing', async () => {
    const o = home('quota', { quotaBytes: 4_000 });
    await hotSyncDown(o);
    await writeFile(join(o.dir, 'kept.txt'), 'x'.repeat(1_000));
    await hotSyncUp(o);

    await rm(join(o.dir, 'kept.txt'));
    for (const n of [1, 2, 3, 4, 5]) await writeFile(join(o.dir, `big${n}.bin`), Buffer.alloc(1_000, n));
    await assert.rejects(hotSyncUp(o), (err: unknown) => {
      assert.ok(err instanceof QuotaExceededError);
      assert.equal(err.code, 'quota_exceeded');
      assert.equal(err.usedBytes, 5_000);
      assert.match(err.message, /5000 bytes, more than its size limit of 4000 bytes \(disk_mb\)/);
      return true;
    });
    assert.deepEqual(await keysUnder(o.prefix), ['kept.txt'], 'nothing uploaded and nothing deleted');

    // Down refuses too, before creating the home.
    await rm(join(o.dir, 'big1.bin'));
    await rm(join(o.dir, 'big2.bin'));
    await hotSyncUp({ ...o, quotaBytes: 100_000 });
    const small = home('quota', { quotaBytes: 2_000 });
    await assert.rejects(hotSyncDown(small), QuotaExceededError);
    await assert.rejects(lstat(small.dir), { code: 'ENOENT' });
  });

  it('leaves out a sparse file that would make the home larger than its limit, keeps its stored version, and syncs the rest', async () => {
    const o = home('sparse', { quotaBytes: 64 * 1024 });
    await hotSyncDown(o);
    await writeFile(join(o.dir, 'holey.img'), 'stored version');
    await writeFile(join(o.dir, 'notes.txt'), 'kept');
    await hotSyncUp(o);
    // A 1 GiB file that takes no space: within the disk, beyond anything a sync could carry or restore.
    await truncate(join(o.dir, 'holey.img'), 1024 ** 3);
    await writeFile(join(o.dir, 'new.txt'), 'also synced');
    const report = await hotSyncUp(o);
    assert.equal(report.notSyncedTotal, 1);
    assert.equal(report.notSynced[0]!.path, 'holey.img');
    assert.match(report.notSynced[0]!.reason, /^sparse file of 1073741824 bytes/);
    assert.deepEqual(await keysUnder(o.prefix), ['holey.img', 'new.txt', 'notes.txt']);
    assert.equal(await objectText(o.prefix + 'holey.img'), 'stored version');
  });

  it('keeps users apart: another user never sees the files and a manifest cannot be reused for another prefix', async () => {
    const alice = home('alice');
    await hotSyncDown(alice);
    await writeFile(join(alice.dir, 'private.txt'), 'alice only');
    await hotSyncUp(alice);

    const bob = home('bob');
    const report = await hotSyncDown(bob);
    assert.equal(report.downloaded, 0);
    assert.deepEqual(await readdir(bob.dir), []);
    assert.deepEqual(await keysUnder(bob.prefix), []);

    await assert.rejects(hotSyncUp({ ...alice, prefix: bob.prefix }), (err: unknown) => err instanceof StorageError && /belongs to/.test(err.message));
    assert.deepEqual(await keysUnder(bob.prefix), []);
  });

  it('retries uploads that fail: a client middleware fails the first 3 PutObject calls, the sync still succeeds', async () => {
    const client = newClient();
    let failuresLeft = 3;
    client.middlewareStack.add(
      (next, context) => async (args) => {
        if (context.commandName === 'PutObjectCommand' && failuresLeft > 0) {
          failuresLeft -= 1;
          throw new Error('injected PutObject failure');
        }
        return next(args);
      },
      { step: 'initialize', name: 'injectPutObjectFailures' },
    );
    try {
      const o = home('retry', { s3: client, retry: { baseDelayMs: 10 } });
      await hotSyncDown(o);
      for (const n of [1, 2, 3, 4]) await writeFile(join(o.dir, `f${n}`), `file ${n}`);
      const report = await hotSyncUp(o);
      assert.equal(failuresLeft, 0, 'the injected failures happened');
      assert.equal(report.uploaded, 4);
      assert.ok(report.retries >= 1, 'the report counts retried transfers');
      assert.deepEqual(await keysUnder(o.prefix), ['f1', 'f2', 'f3', 'f4']);
    } finally {
      client.destroy();
    }
  });

  it('reports a persistent failure as SyncError (a middleware fails every PutObject of one key) and the next sync uploads only that file', async () => {
    const client = newClient();
    let failing = true;
    let attemptsOnBadKey = 0;
    client.middlewareStack.add(
      (next, context) => async (args) => {
        const input = args.input as { Key?: string };
        if (context.commandName === 'PutObjectCommand' && input.Key?.endsWith('/bad.txt')) {
          attemptsOnBadKey += 1;
          if (failing) throw new Error('injected persistent PutObject failure');
        }
        return next(args);
      },
      { step: 'initialize', name: 'injectPersistentFailure' },
    );
    try {
      const o = home('persistent', { s3: client, retry: { attempts: 3, baseDelayMs: 10 } });
      await hotSyncDown(o);
      for (const name of ['good1.txt', 'bad.txt', 'good2.txt']) await writeFile(join(o.dir, name), name);
      await assert.rejects(hotSyncUp(o), (err: unknown) => {
        assert.ok(err instanceof SyncError);
        assert.equal(err.code, 'storage_error');
        assert.deepEqual(
          err.failed.map((f) => [f.path, f.op]),
          [['bad.txt', 'upload']],
        );
        assert.match(err.failed[0]!.message, /injected persistent PutObject failure/);
        return true;
      });
      assert.equal(attemptsOnBadKey, 3, 'the failing upload was attempted 3 times');
      assert.deepEqual(await keysUnder(o.prefix), ['good1.txt', 'good2.txt']);

      failing = false;
      const next = await hotSyncUp(o);
      assert.deepEqual([next.uploaded, next.skipped], [1, 2]);
      assert.deepEqual(await keysUnder(o.prefix), ['bad.txt', 'good1.txt', 'good2.txt']);
    } finally {
      client.destroy();
    }
  });

  it('never reads through a directory swapped for a symlink to /etc mid-sync (swapped by a middleware before the first upload)', async () => {
    const client = newClient();
    let swapped = false;
    const o = home('swap', { s3: client, concurrency: 1 });
    client.middlewareStack.add(
      (next, context) => async (args) => {
        if (context.commandName === 'PutObjectCommand' && !swapped) {
          swapped = true;
          // What untrusted code could do between the walk and the upload.
          await rename(join(o.dir, 'sub'), join(o.dir, 'sub-moved'));
          await symlink('/etc', join(o.dir, 'sub'));
        }
        return next(args);
      },
      { step: 'initialize', name: 'swapDirectoryForLink' },
    );
    try {
      await hotSyncDown(o);
      await writeFile(join(o.dir, 'a-first.txt'), 'first');
      await mkdir(join(o.dir, 'sub'));
      await writeFile(join(o.dir, 'sub', 'passwd'), 'harmless');
      const report = await hotSyncUp(o);
      assert.ok(swapped);
      assert.ok(report.notSynced.some((n) => n.path === 'sub/passwd' && /changed during the sync/.test(n.reason)));
      const keys = await keysUnder(o.prefix);
      assert.ok(!keys.includes('sub/passwd'), 'the file behind the swapped directory was not uploaded');

      // The next sync sees the link as a link and the moved directory as new.
      const next = await hotSyncUp(o);
      assert.equal(await objectText(`${o.prefix}sub`), '/etc');
      assert.equal(await objectText(`${o.prefix}sub-moved/passwd`), 'harmless');
      assert.ok(next.deleted >= 1, 'the stale directory marker is deleted');
    } finally {
      client.destroy();
    }
  });

  it('on download, lets a newer symlink win over an older file under the same path, so nothing is written through the link', async () => {
    const prefix = `tenants/t1/users/conflict/hot/`;
    const outside = join(work, `outside-${++sequence}`);
    await mkdir(outside);
    await s3.send(new PutObjectCommand({ Bucket: bucket, Key: `${prefix}x/evil`, Body: 'must not land outside' }));
    await new Promise((r) => setTimeout(r, 1_100)); // LastModified has second resolution
    await s3.send(new PutObjectCommand({ Bucket: bucket, Key: `${prefix}x`, Body: outside, Metadata: { mode: String(0o120777) } }));

    const o = home('conflict');
    const report = await hotSyncDown(o);
    assert.deepEqual(await readdir(outside), []);
    assert.equal(await readlink(join(o.dir, 'x')), outside);
    assert.ok(report.notSynced.some((n) => n.path === 'x/evil'));
    // The next sync up deletes the losing key.
    await hotSyncUp(o);
    assert.deepEqual(await keysUnder(prefix), ['x']);
  });

  it('runs two syncs of the same home one after the other (lock file), so the second finds nothing to do', async () => {
    const o = home('lock');
    await hotSyncDown(o);
    for (const n of [1, 2, 3, 4, 5, 6, 7, 8]) await writeFile(join(o.dir, `f${n}`), `file ${n}`);
    const [a, b] = await Promise.all([hotSyncUp(o), hotSyncUp(o)]);
    assert.deepEqual([a.uploaded + b.uploaded, a.skipped + b.skipped], [8, 8]);
    await assert.rejects(lstat(`${o.stateFile}.lock`), { code: 'ENOENT' }, 'the lock is released');
  });

  it('refuses to download into a non-empty home and to upload without a manifest', async () => {
    const o = home('guards');
    await mkdir(o.dir, { recursive: true });
    await writeFile(join(o.dir, 'already-here'), 'x');
    await assert.rejects(hotSyncDown(o), /is not empty/);
    await assert.rejects(hotSyncUp(o), /no hot sync manifest/);
    await assert.rejects(hotSyncDown({ ...o, stateFile: join(o.dir, 'manifest.json') }), /must be outside the home/);
  });
});
