/**
 * The files API on the local stack (real Docker, DynamoDB Local, s3rver
 * behind its SigV4 front, the local SSM endpoint, the handlers as their
 * Lambda bundles behind the local API Gateway with its binary media types):
 * bytes round trip inline, names of every kind, writes that are atomic and the
 * sandbox user's, every error with its status and path, symlink escapes that
 * go nowhere outside the sandbox, and a user's home read after the sandbox ended.
 * Run: node --import tsx --test --test-concurrency=1 test/files/files.test.ts
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { createApiKey } from '../../lambdas/shared/api-keys';
import { startLocalStack, type LocalStack } from '../../lib/local/stack';
import { apiClient, type ApiClient } from '../support/api-client';
import { record, uniqueUser } from '../lifecycle/lifecycle-support';
import { curl, fileSha256, filesOf, q, sampleMemory, sh, sha256, untilDone } from './files-support';

const run = promisify(execFile);

let stack: LocalStack;
let api: ApiClient;
let id: string;
let files: ReturnType<typeof filesOf>;
const user = uniqueUser('files');

before(async () => {
  // A long sync period: the 1 GiB file of the transfer test is not also synced to S3 while it is there.
  stack = await startLocalStack({ port: 0, reaperIntervalMs: 0, env: { HOT_SYNC_INTERVAL_SECONDS: '600' } });
  api = apiClient(stack.url, stack.apiKey);
  const res = await api.createReady(user, { disk_mb: 256 });
  assert.equal(res.status, 201, res.text);
  id = res.body.sandbox_id;
  files = filesOf(stack.url, stack.apiKey, id);
});
after(async () => {
  await stack?.close();
});

describe('bytes in and out, inline', () => {
  it('round trips a file of all 256 byte values, with its size, mode and sha256 in headers', async () => {
    const bytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    const put = await files.put('all-bytes.bin', bytes);
    assert.equal(put.status, 200, put.bytes.toString());
    assert.deepEqual(put.json, { path: '/home/agent/all-bytes.bin', size: 256, sha256: sha256(bytes), mode: '0644' });
    const got = await files.get('/home/agent/all-bytes.bin');
    assert.equal(got.status, 200);
    assert.deepEqual(got.bytes, bytes);
    assert.equal(got.headers.get('content-type'), 'application/octet-stream');
    assert.equal(got.headers.get('x-file-size'), '256');
    assert.equal(got.headers.get('x-file-mode'), '0644');
    assert.equal(got.headers.get('x-file-sha256'), sha256(bytes));
    // What the sandbox itself sees.
    assert.equal(await sh(api, id, 'sha256sum ~/all-bytes.bin | cut -d" " -f1'), sha256(bytes) + '\n');
  });

  it('takes names with spaces, UTF-8, leading dashes and shell syntax, in every route', async () => {
    const names = ['with space.txt', 'été 日本語 🚀.txt', '-rf', '--help', '$(touch pwned)`id`;|&.txt', 'quote\'and"double'];
    for (const name of names) {
      const path = `odd dir/-sub/${name}`;
      const put = await files.put(path, `content of ${name}`, '&mkdirs=true');
      assert.equal(put.status, 200, `${name}: ${put.bytes}`);
      assert.equal(put.json.path, `/home/agent/${path}`);
      assert.equal((await files.get(path)).bytes.toString(), `content of ${name}`);
      const stat = await api.call('GET', `/sandboxes/${id}/files/stat?path=${q(path)}`);
      assert.equal(stat.body.name, name);
      const moved = await api.call('POST', `/sandboxes/${id}/files/move`, { from: path, to: `odd dir/-sub/moved ${name}` });
      assert.equal(moved.status, 200, moved.text);
      assert.equal(moved.body.entry.name, `moved ${name}`);
    }
    const list = await api.call('GET', `/sandboxes/${id}/files/list?path=${q('odd dir/-sub')}`);
    assert.deepEqual(list.body.entries.map((e: { name: string }) => e.name).sort(), names.map((n) => `moved ${n}`).sort());
    // Nothing in any name ran: no file "pwned" anywhere in the home.
    assert.equal(await sh(api, id, 'find ~ -name pwned | wc -l'), '0\n');
    const del = await api.call('DELETE', `/sandboxes/${id}/files?path=${q('odd dir')}&recursive=true`);
    assert.equal(del.status, 200, del.text);
    assert.deepEqual(del.body, { path: '/home/agent/odd dir', type: 'dir', deleted: true });
  });

  it("writes files the sandbox user owns, with the mode asked for (or the file's own when replacing it)", async () => {
    assert.equal((await files.put('tools/run.sh', '#!/bin/sh\necho ran\n', '&mode=0750&mkdirs=true')).json.mode, '0750');
    assert.equal(await sh(api, id, 'stat -c "%U:%G %a" ~/tools ~/tools/run.sh && ~/tools/run.sh'), 'agent:agent 755\nagent:agent 750\nran\n');
    await sh(api, id, 'chmod 0700 ~/tools/run.sh');
    assert.equal((await files.put('tools/run.sh', '#!/bin/sh\necho again\n')).json.mode, '0700');
    assert.equal(await sh(api, id, 'stat -c %a ~/tools/run.sh'), '700\n');
  });

  it('leaves one whole file when PUTs to one path race, and a reader meanwhile sees a whole file each time', async () => {
    const versions = Array.from({ length: 4 }, (_, i) => Buffer.alloc(2 * 1024 * 1024, String.fromCharCode(65 + i)));
    const known = new Set(versions.map(sha256));
    assert.equal((await files.put('race/target.bin', versions[0]!, '&mkdirs=true')).status, 200);
    let writing = true;
    const reads: string[] = [];
    const reader = (async () => {
      while (writing) {
        const got = await files.get('race/target.bin');
        assert.equal(got.status, 200);
        reads.push(sha256(got.bytes));
      }
    })();
    const puts = await Promise.all(versions.map((v) => files.put('race/target.bin', v)));
    writing = false;
    await reader;
    assert.deepEqual(
      puts.map((p) => p.status),
      versions.map(() => 200),
    );
    const final = await files.get('race/target.bin');
    assert.ok(known.has(sha256(final.bytes)), 'the file is one of the versions, whole');
    assert.ok(reads.length > 0 && reads.every((r) => known.has(r)), `every read saw a whole version (${reads.length} reads)`);
    // No temporary file left beside it.
    assert.equal(await sh(api, id, 'ls -A ~/race'), 'target.bin\n');
  });

  it('lists page by page with next_token, depth first, every entry once', async () => {
    await sh(api, id, 'mkdir -p ~/tree/a/b ~/tree/c && touch ~/tree/a/1 ~/tree/a/b/2 ~/tree/c/3 ~/tree/z && ln -s a/1 ~/tree/link');
    const seen: string[] = [];
    let token: string | undefined;
    let pages = 0;
    do {
      const res = await api.call('GET', `/sandboxes/${id}/files/list?path=tree&recursive=true&limit=2${token ? `&next_token=${token}` : ''}`);
      assert.equal(res.status, 200, res.text);
      assert.ok(res.body.entries.length <= 2);
      seen.push(...res.body.entries.map((e: { path: string }) => e.path.replace('/home/agent/tree/', '')));
      token = res.body.next_token;
      pages++;
    } while (token);
    assert.deepEqual(seen, ['a', 'a/1', 'a/b', 'a/b/2', 'c', 'c/3', 'link', 'z']);
    assert.equal(pages, 4);
    const flat = await api.call('GET', `/sandboxes/${id}/files/list?path=${q('/home/agent/tree')}`);
    const link = flat.body.entries.find((e: { name: string }) => e.name === 'link');
    assert.deepEqual({ type: link.type, link_target: link.link_target }, { type: 'symlink', link_target: 'a/1' });
    assert.ok(Number.isFinite(Date.parse(link.mtime)));
    const foreign = await api.call(
      'GET',
      `/sandboxes/${id}/files/list?path=tree/a&recursive=true&next_token=${token ?? Buffer.from(JSON.stringify({ p: '/home/agent/tree', r: true, a: ['a'] })).toString('base64url')}`,
    );
    assert.equal(foreign.status, 400, 'a token of another listing is refused');
  });

  it('makes directories, moves without replacing unless asked, and deletes a link without touching its target', async () => {
    assert.equal((await api.call('POST', `/sandboxes/${id}/files/mkdir`, { path: 'm/n/o', parents: true })).status, 200);
    assert.equal(
      (await api.call('POST', `/sandboxes/${id}/files/mkdir`, { path: 'm/n/o', parents: true })).status,
      200,
      'parents: an existing directory is fine',
    );
    await files.put('m/one', '1');
    await files.put('m/two', '2');
    assert.equal((await api.call('POST', `/sandboxes/${id}/files/move`, { from: 'm/one', to: 'm/two' })).status, 409);
    assert.equal((await files.get('m/two')).bytes.toString(), '2');
    const replaced = await api.call('POST', `/sandboxes/${id}/files/move`, { from: 'm/one', to: 'm/two', overwrite: true });
    assert.equal(replaced.status, 200, replaced.text);
    assert.equal((await files.get('m/two')).bytes.toString(), '1');
    // Across file systems (the home to /tmp): a copy, then the original goes.
    assert.equal((await api.call('POST', `/sandboxes/${id}/files/move`, { from: 'm/two', to: '/tmp/two' })).status, 200);
    assert.equal((await files.get('/tmp/two')).bytes.toString(), '1');
    assert.equal((await files.get('m/two')).status, 404);
    await sh(api, id, 'ln -s ~/m/n ~/m/dirlink');
    assert.equal((await api.call('DELETE', `/sandboxes/${id}/files?path=m/dirlink`)).body.type, 'symlink');
    assert.equal(await sh(api, id, 'test -d ~/m/n/o && echo kept'), 'kept\n');
  });

  it('counts every file call as activity for the idle timer', async () => {
    const before = (await record(id)).last_activity_at;
    await new Promise((r) => setTimeout(r, 20));
    assert.equal((await files.get('all-bytes.bin')).status, 200);
    const afterRead = (await record(id)).last_activity_at;
    assert.ok(afterRead > before, 'a read moved the idle timer');
    await api.call('GET', `/sandboxes/${id}/files/list`);
    assert.ok((await record(id)).last_activity_at > afterRead, 'a listing moved it too');
  });
});

describe('every error with its status, naming the path', () => {
  const errorOf = (a: { status: number; json: any }) => [a.status, a.json?.error?.code, a.json?.error?.path];

  it('404 not_found, 403 permission_denied, 409 is_a_directory / not_a_directory / exists', async () => {
    await files.put('plain.txt', 'x');
    assert.deepEqual(errorOf(await files.get('no/such/file')), [404, 'not_found', '/home/agent/no/such/file']);
    assert.deepEqual(errorOf(await files.get('/etc/shadow')), [403, 'permission_denied', '/etc/shadow']);
    assert.deepEqual(errorOf(await files.put('/etc/motd', 'x')), [403, 'permission_denied', '/etc/motd']);
    assert.deepEqual(errorOf(await files.get('/home/agent')), [409, 'is_a_directory', '/home/agent']);
    assert.deepEqual(errorOf(await files.put('plain.txt/inner', 'x')), [409, 'not_a_directory', '/home/agent/plain.txt/inner']);
    const list = await api.call('GET', `/sandboxes/${id}/files/list?path=plain.txt`);
    assert.deepEqual([list.status, list.body.error.code, list.body.error.path], [409, 'not_a_directory', '/home/agent/plain.txt']);
    const mkdir = await api.call('POST', `/sandboxes/${id}/files/mkdir`, { path: 'plain.txt' });
    assert.deepEqual([mkdir.status, mkdir.body.error.code, mkdir.body.error.path], [409, 'exists', '/home/agent/plain.txt']);
    const notEmpty = await api.call('DELETE', `/sandboxes/${id}/files?path=tree`);
    assert.deepEqual([notEmpty.status, notEmpty.body.error.code], [409, 'is_a_directory']);
    assert.match(notEmpty.body.error.message, /recursive=true/);
  });

  it('413 too_large past 4 MiB, pointing to the upload and download routes (4 MiB itself goes inline)', async () => {
    const max = Buffer.alloc(4 * 1024 * 1024, 1);
    const atMax = await files.put('four-mib.bin', max);
    assert.equal(atMax.status, 200, atMax.bytes.toString());
    assert.deepEqual((await files.get('four-mib.bin')).bytes, max);
    const over = await files.put('over.bin', Buffer.concat([max, Buffer.from([1])]));
    assert.deepEqual(errorOf(over), [413, 'too_large', '/home/agent/over.bin']);
    assert.match(over.json.error.message, /POST \/sandboxes\/sbx-\w+\/files\/upload/);
    await sh(api, id, 'head -c 5242880 /dev/zero > ~/five-mib.bin');
    const big = await files.get('five-mib.bin');
    assert.deepEqual(errorOf(big), [413, 'too_large', '/home/agent/five-mib.bin']);
    assert.match(big.json.error.message, /files\/download/);
  });

  it('507 no_space when the home is full, leaving nothing half-written', async () => {
    const small = await api.createReady(uniqueUser('files-full'), { disk_mb: 64 });
    assert.equal(small.status, 201, small.text);
    const full = filesOf(stack.url, stack.apiKey, small.body.sandbox_id);
    const filled = await api.exec(small.body.sandbox_id, 'head -c 200M /dev/zero > ~/fill');
    assert.notEqual(filled.body.exit_code, 0, 'the home filled up');
    const put = await full.put('more.bin', Buffer.alloc(1024 * 1024, 2));
    assert.deepEqual(errorOf(put), [507, 'no_space', '/home/agent/more.bin']);
    assert.equal(await sh(api, small.body.sandbox_id, 'ls -A ~ | grep -c esbx || true'), '0\n');
    await api.destroy(small.body.sandbox_id, false);
  });

  it('400 for NUL, a path over 4096 bytes and an empty one; 415 for bytes sent as text; 406 for bytes asked for as text', async () => {
    const nul = await files.get('a\0b');
    assert.deepEqual([nul.status, nul.json.error.code], [400, 'validation_error']);
    assert.match(nul.json.error.message, /^path: must not contain NUL/);
    const long = await files.put('/' + 'x'.repeat(4096), 'x');
    assert.equal(long.status, 400);
    assert.match(long.json.error.message, /^path: is 4097 bytes; at most 4096/);
    assert.equal((await files.get('')).status, 400);
    const asText = await files.put('text.txt', 'hello', '', 'text/plain');
    assert.deepEqual([asText.status, asText.json.error.code], [415, 'unsupported_media_type']);
    const noAccept = await files.get('plain.txt', '*/*');
    assert.deepEqual([noAccept.status, noAccept.json.error.code], [406, 'not_acceptable']);
    const move = await api.call('POST', `/sandboxes/${id}/files/move`, { from: 'plain.txt', to: 'x\u0000y' });
    assert.match(move.body.error.message, /^to: must not contain NUL/);
    const home = await api.call('DELETE', `/sandboxes/${id}/files?path=${q('/home/agent/')}&recursive=true`);
    assert.equal(home.status, 400, 'the home itself is never deleted');
  });

  it("409 invalid_state for a paused sandbox (naming what to do), and 404 for another tenant's", async () => {
    const other = await createApiKey({ tenantId: 'other-tenant', description: 'files test' });
    const theirs = filesOf(stack.url, other.key, id);
    assert.deepEqual([(await theirs.get('plain.txt')).status, (await theirs.get('plain.txt')).json.error.code], [404, 'not_found']);
    assert.equal((await theirs.put('plain.txt', 'theirs')).status, 404);
    assert.equal((await files.get('plain.txt')).bytes.toString(), 'x');
    const paused = await api.createReady(uniqueUser('files-paused'));
    const stop = await api.call('POST', `/sandboxes/${paused.body.sandbox_id}/pause`);
    assert.equal(stop.status, 200, stop.text);
    const read = await filesOf(stack.url, stack.apiKey, paused.body.sandbox_id).get('x');
    assert.deepEqual([read.status, read.json.error.code], [409, 'invalid_state']);
    assert.match(read.json.error.message, /home\/files/);
    await api.destroy(paused.body.sandbox_id, false);
  });
});

describe('large files through presigned S3 URLs', () => {
  // 1 GiB each way, as a user hands one in and out (about 2 minutes here); FILES_TEST_TRANSFER_MIB=256 for a quicker run.
  const mib = Number(process.env.FILES_TEST_TRANSFER_MIB ?? 1024);
  const size = mib * 1024 ** 2;
  let work: string;
  before(() => {
    work = mkdtempSync(join(tmpdir(), 'esbx-files-test-'));
  });
  after(() => rmSync(work, { recursive: true, force: true }));

  it(`uploads and downloads ${mib === 1024 ? '1 GiB' : `${mib} MiB`} byte-identical by sha256, while the control plane and the host daemon stay within 256 MiB more memory`, async (t) => {
    const big = await api.createReady(uniqueUser('files-gib'), { disk_mb: mib + 384 });
    assert.equal(big.status, 201, big.text);
    const bigId = big.body.sandbox_id;
    const source = join(work, 'transfer.bin');
    await run('sh', ['-c', `head -c ${size} /dev/urandom > '${source}'`]);
    const digest = await fileSha256(source);

    const memory = sampleMemory({ 'control plane': process.pid, 'host daemon': stack.daemon()!.pid! });
    const began = Date.now();
    const ticket = await api.call('POST', `/sandboxes/${bigId}/files/upload`, { path: 'data/transfer.bin', sha256: digest, mkdirs: true });
    assert.equal(ticket.status, 200, ticket.text);
    assert.match(ticket.body.upload_id, /^upl-/);
    assert.equal(ticket.body.max_bytes, 5 * 1024 ** 3);
    assert.equal(await curl('PUT', ticket.body.url, source), 200);
    const done = await untilDone(() => api.call('POST', `/sandboxes/${bigId}/files/upload/${ticket.body.upload_id}/complete`));
    assert.equal(done.status, 200, done.text);
    assert.deepEqual({ path: done.body.path, size: done.body.size, sha256: done.body.sha256 }, { path: '/home/agent/data/transfer.bin', size, sha256: digest });
    // The host hashed the bytes as they went in; the download below reads them back from the sandbox's file.
    assert.equal(await sh(api, bigId, 'stat -c "%U %s" ~/data/transfer.bin'), `agent ${size}\n`);
    const uploaded = Date.now();

    const started = await api.call('POST', `/sandboxes/${bigId}/files/download`, { path: 'data/transfer.bin' });
    assert.ok([200, 202].includes(started.status), started.text);
    const dl =
      started.status === 200 ? started : await untilDone(() => api.call('GET', `/sandboxes/${bigId}/files/download/${started.body.download_id}?wait=20`));
    assert.equal(dl.status, 200, dl.text);
    assert.deepEqual({ size: dl.body.size, sha256: dl.body.sha256 }, { size, sha256: digest });
    const fetched = join(work, 'fetched.bin');
    assert.equal(await curl('GET', dl.body.url, fetched), 200);
    const grown = memory.stop();
    const downloaded = Date.now();
    t.diagnostic(
      `upload ${((uploaded - began) / 1000).toFixed(1)} s, download ${((downloaded - uploaded) / 1000).toFixed(1)} s (through the API, S3 and the sandbox)`,
    );
    t.diagnostic(
      `memory growth at peak: ${Object.entries(grown)
        .map(([n, b]) => `${n} ${Math.round(b / 1024 ** 2)} MiB`)
        .join(', ')}`,
    );
    assert.equal(statSync(fetched).size, size);
    assert.equal(await fileSha256(fetched), digest, 'the bytes that came back are the bytes sent');
    for (const [name, bytes] of Object.entries(grown)) assert.ok(bytes < 256 * 1024 ** 2, `${name} grew by ${Math.round(bytes / 1024 ** 2)} MiB`);

    // Completing again answers the recorded result; a URL changed in any way is refused.
    const again = await api.call('POST', `/sandboxes/${bigId}/files/upload/${ticket.body.upload_id}/complete`);
    assert.deepEqual([again.status, again.body.sha256], [200, digest]);
    assert.equal((await api.call('DELETE', `/sandboxes/${bigId}/files?path=data&recursive=true`)).status, 200);
    await api.destroy(bigId, false);
    writeFileSync(source, 'x');
    assert.equal(await curl('PUT', ticket.body.url.replace('upl-', 'upl-x'), source), 403, 'a URL changed in any way is refused');
    rmSync(source);
    rmSync(fetched);
  });

  it('refuses an upload whose sha256 does not match with 422, writing nothing; and a complete before any PUT with 409', async () => {
    const body = Buffer.from('the real bytes\n');
    const early = await api.call('POST', `/sandboxes/${id}/files/upload`, { path: 'checked.txt', sha256: sha256('other bytes') });
    assert.equal(early.status, 200, early.text);
    const before = await api.call('POST', `/sandboxes/${id}/files/upload/${early.body.upload_id}/complete`);
    assert.deepEqual([before.status, before.body.error.code], [409, 'conflict']);
    assert.equal((await fetch(early.body.url, { method: 'PUT', body })).status, 200);
    const bad = await untilDone(() => api.call('POST', `/sandboxes/${id}/files/upload/${early.body.upload_id}/complete`));
    assert.deepEqual([bad.status, bad.body.error.code, bad.body.error.path], [422, 'checksum_mismatch', '/home/agent/checked.txt']);
    assert.equal((await files.get('checked.txt')).status, 404, 'nothing was written');
    assert.equal(await sh(api, id, 'ls -A ~ | grep -c esbx || true'), '0\n', 'no temporary file left');
  });

  it('unpacks a 2,000-file tar.gz of a repository with its modes and symlinks, and downloads the directory back as one', async () => {
    const repo = join(work, 'repo');
    for (let d = 0; d < 40; d++) {
      mkdirSync(join(repo, 'src', `pkg-${d}`), { recursive: true });
      for (let f = 0; f < 50; f++)
        writeFileSync(join(repo, 'src', `pkg-${d}`, `file ${f}.ts`), `export const n = ${d * 50 + f};\n`, { mode: f === 0 ? 0o755 : 0o644 });
    }
    mkdirSync(join(repo, 'bin'), { mode: 0o750 });
    symlinkSync('../src/pkg-0/file 0.ts', join(repo, 'bin', 'run'));
    symlinkSync('/etc/passwd', join(repo, 'bin', 'outside'));
    const archive = join(work, 'repo.tar.gz');
    await run('tar', ['-czf', archive, '-C', repo, '.']);

    const ticket = await api.call('POST', `/sandboxes/${id}/files/upload`, { path: 'projects/repo', extract: 'tar.gz', sha256: await fileSha256(archive) });
    assert.equal(ticket.status, 200, ticket.text);
    assert.equal(await curl('PUT', ticket.body.url, archive), 200);
    const done = await untilDone(() => api.call('POST', `/sandboxes/${id}/files/upload/${ticket.body.upload_id}/complete`));
    assert.equal(done.status, 200, done.text);
    assert.equal(done.body.path, '/home/agent/projects/repo');
    assert.equal(done.body.entries, 2000 + 40 + 1 + 1 + 2);
    assert.equal(
      // A subshell: exec's working directory sticks.
      await sh(
        api,
        id,
        '(cd ~/projects/repo && find . -type f | wc -l && stat -c "%U %a %n" "src/pkg-3/file 0.ts" "src/pkg-3/file 1.ts" bin && readlink bin/run bin/outside && cat bin/run)',
      ),
      '2000\nagent 755 src/pkg-3/file 0.ts\nagent 644 src/pkg-3/file 1.ts\nagent 750 bin\n../src/pkg-0/file 0.ts\n/etc/passwd\nexport const n = 0;\n',
    );
    const listed = await api.call('GET', `/sandboxes/${id}/files/stat?path=projects/repo/bin/outside`);
    assert.deepEqual([listed.body.type, listed.body.link_target], ['symlink', '/etc/passwd']);

    const started = await api.call('POST', `/sandboxes/${id}/files/download`, { path: 'projects/repo', archive: 'tar.gz' });
    const dl = started.status === 202 ? await untilDone(() => api.call('GET', `/sandboxes/${id}/files/download/${started.body.download_id}?wait=20`)) : started;
    assert.equal(dl.status, 200, dl.text);
    assert.equal(dl.body.archive, 'tar.gz');
    const back = join(work, 'back.tar.gz');
    assert.equal(await curl('GET', dl.body.url, back), 200);
    assert.equal(await fileSha256(back), dl.body.sha256);
    const unpacked = join(work, 'back');
    mkdirSync(unpacked);
    await run('tar', ['-xzf', back, '-C', unpacked]);
    const { stdout: diff } = await run('diff', ['-r', '--no-dereference', repo, unpacked]).catch((e: { stdout: string }) => e);
    assert.equal(diff, '', 'the directory came back as it went in');
    assert.equal(statSync(join(unpacked, 'src/pkg-7/file 0.ts')).mode & 0o777, 0o755);
  });
});

describe('symlinks never lead outside the sandbox', () => {
  const marker = `esbx-escape-${randomBytes(6).toString('hex')}`;
  const hostDir = `/tmp/${marker}`;

  before(async () => {
    // The same path on the host and in the sandbox's /tmp, with different contents: a read through the host's view would show.
    mkdirSync(hostDir, { recursive: true });
    writeFileSync(`${hostDir}/secret`, 'HOST SECRET');
    await sh(
      api,
      id,
      `mkdir -p ~/inside /tmp/${marker} && echo -n INSIDE > ~/inside/secret && echo -n 'CONTAINER TMP' > /tmp/${marker}/secret && ` +
        `ln -sfn /etc/passwd ~/pw && ln -sfn / ~/root && ln -sfn /proc/1/root ~/init-root && ln -sfn /tmp/${marker} ~/tmp-link && ` +
        `ln -sfn ${stack.stateDir}/sandboxes/${id}/home ~/host-view`,
    );
  });
  after(() => rmSync(hostDir, { recursive: true, force: true }));

  it("reads /etc/passwd through a link as the sandbox's own file, and cannot write it", async () => {
    const mine = await sh(api, id, 'cat /etc/passwd');
    const hostPasswd = readFileSync('/etc/passwd');
    const got = await files.get('pw');
    assert.equal(got.status, 200);
    assert.equal(got.bytes.toString(), mine);
    const put = await files.put('pw', 'root::0:0::/:/bin/sh\n');
    assert.deepEqual([put.status, put.json.error.code], [403, 'permission_denied']);
    assert.equal(await sh(api, id, 'cat /etc/passwd'), mine);
    assert.deepEqual(readFileSync('/etc/passwd'), hostPasswd);
  });

  it("reads / through a link as the sandbox's root (its hostname is the sandbox's, not this machine's)", async () => {
    const name = await files.get('root/etc/hostname');
    assert.equal(name.bytes.toString().trim(), id);
    assert.notEqual(name.bytes.toString().trim(), hostname());
    const listed = await api.call('GET', `/sandboxes/${id}/files/list?path=root/home`);
    assert.deepEqual(
      listed.body.entries.map((e: { name: string }) => e.name),
      ['agent'],
    );
  });

  it("finds the sandbox's own root behind /proc/1/root (its init is the sandbox's), directly or through a link", async () => {
    for (const path of ['/proc/1/root/etc/hostname', 'init-root/etc/hostname', '/proc/self/root/etc/hostname']) {
      const got = await files.get(path);
      assert.equal(got.status, 200, `${path}: ${got.bytes}`);
      assert.equal(got.bytes.toString().trim(), id, path);
    }
    const put = await files.put('init-root/etc/hostname', 'x');
    assert.deepEqual([put.status, put.json.error.code], [403, 'permission_denied'], 'its root is read-only, as it is to the sandbox');
    assert.equal((await files.put('/proc/1/root/tmp/via-proc', 'x')).status, 200);
    assert.equal(await sh(api, id, 'cat /tmp/via-proc'), 'x');
    // Only the sandbox's own processes exist in its /proc: none of this machine's roots can be named.
    const pids = (await api.call('GET', `/sandboxes/${id}/files/list?path=/proc`)).body.entries.filter((e: { name: string }) => /^\d+$/.test(e.name)).length;
    assert.ok(pids < 20, `${pids} processes visible`);
  });

  it("finds the sandbox's /tmp, never the host's, behind a path both have; and the host's view of the home is not in the sandbox", async () => {
    assert.equal((await files.get('tmp-link/secret')).bytes.toString(), 'CONTAINER TMP');
    assert.equal((await files.put('tmp-link/written', 'from the api')).status, 200);
    assert.equal(await sh(api, id, `cat /tmp/${marker}/written`), 'from the api');
    assert.deepEqual(readdirSync(hostDir), ['secret']);
    assert.equal((await files.get('host-view/all-bytes.bin')).status, 404);
    assert.equal((await files.get(`${stack.stateDir}/sandboxes/${id}/home/all-bytes.bin`)).status, 404);
  });

  it('goes nowhere outside the sandbox while a link is swapped between targets during the calls', async () => {
    const swapper = await api.call('POST', `/sandboxes/${id}/commands`, {
      command: `end=$((SECONDS+12)); while [ $SECONDS -lt $end ]; do ln -sfn ~/inside ~/swap; ln -sfn /tmp/${marker} ~/swap; ln -sfn /proc/1/root/tmp/${marker} ~/swap; ln -sfn ${hostDir} ~/swap; done`,
    });
    assert.equal(swapper.status, 202, swapper.text);
    const reads = new Map<string, number>();
    for (let i = 0; i < 8; i++) {
      const [read, write] = await Promise.all([files.get('swap/secret'), files.put(`swap/w${i}`, `write ${i}`)]);
      const seen = read.status === 200 ? read.bytes.toString() : `${read.status} ${read.json?.error?.code}`;
      reads.set(seen, (reads.get(seen) ?? 0) + 1);
      assert.ok([200, 403, 404].includes(write.status), `write ${i}: ${write.status} ${write.bytes}`);
    }
    await api.call('POST', `/sandboxes/${id}/commands/${swapper.body.command_id}/kill`, {});
    assert.ok(!reads.has('HOST SECRET'), `reads: ${JSON.stringify([...reads])}`);
    for (const seen of reads.keys()) assert.ok(['INSIDE', 'CONTAINER TMP'].includes(seen) || /^40[34] /.test(seen), seen);
    assert.deepEqual(readdirSync(hostDir), ['secret'], "nothing was written into the host's directory");
    // Every write that succeeded is inside the sandbox: in ~/inside or in the sandbox's own /tmp.
    const inside = await sh(api, id, `ls ~/inside /tmp/${marker} | grep -c '^w' || true`);
    assert.ok(Number(inside) > 0, 'some writes landed, inside the sandbox');
  });
});

describe("a user's home with no sandbox running", () => {
  const homeUser = uniqueUser('files-home');
  let homeId: string;

  before(async () => {
    const res = await api.createReady(homeUser);
    assert.equal(res.status, 201, res.text);
    homeId = res.body.sandbox_id;
    const theirs = filesOf(stack.url, stack.apiKey, homeId);
    assert.equal((await theirs.put('notes/today.md', '# notes\nremember me\n', '&mkdirs=true')).status, 200);
    assert.equal((await theirs.put('big.bin', Buffer.alloc(5 * 1024 * 1024, 3))).status, 413, 'inline stops at 4 MiB');
    await sh(api, homeId, 'head -c 5242880 /dev/urandom > ~/big.bin && ln -s notes/today.md ~/latest && ln -s /etc/passwd ~/passwd-link');
  });

  const home = (path: string, accept = 'application/octet-stream') =>
    fetch(`${stack.url}/users/${homeUser}/home/files?path=${q(path)}`, { headers: { 'X-API-Key': stack.apiKey, Accept: accept } });

  it('says the stored copy may lag while a sandbox of the user is running', async () => {
    const listed = await api.call('GET', `/users/${homeUser}/home/files/list`);
    assert.equal(listed.status, 200, listed.text);
    assert.equal(listed.body.home_copy.may_lag, true);
    assert.deepEqual(listed.body.home_copy.sandboxes, [{ sandbox_id: homeId, status: 'ready' }]);
    assert.equal(listed.body.home_copy.sync_interval_seconds, 600);
  });

  it('reads, lists and downloads a file of the home after the sandbox ended', async () => {
    const ended = await api.destroyAndWait(homeId);
    assert.equal(ended.final.body.status, 'stopped');
    const res = await home('notes/today.md');
    assert.equal(res.status, 200);
    assert.equal(await res.text(), '# notes\nremember me\n');
    assert.equal(res.headers.get('x-home-copy-may-lag'), 'false');
    assert.equal(res.headers.get('x-file-mode'), '0644');
    assert.equal(await (await home('/home/agent/latest')).text(), '# notes\nremember me\n', 'a link inside the home is followed');
    const listed = await api.call('GET', `/users/${homeUser}/home/files/list?recursive=true`);
    assert.deepEqual(
      listed.body.entries.filter((e: { name: string }) => !e.name.startsWith('.')).map((e: { path: string; type: string }) => `${e.type} ${e.path}`),
      ['file /home/agent/big.bin', 'symlink /home/agent/latest', 'dir /home/agent/notes', 'file /home/agent/notes/today.md', 'symlink /home/agent/passwd-link'],
    );
    assert.equal(listed.body.home_copy.may_lag, false);
    const big = await home('big.bin');
    assert.equal(big.status, 413);
    const dl = await api.call('POST', `/users/${homeUser}/home/files/download`, { path: 'big.bin' });
    assert.equal(dl.status, 200, dl.text);
    const fetched = Buffer.from(await (await fetch(dl.body.url)).arrayBuffer());
    assert.equal(fetched.length, 5 * 1024 * 1024);
    assert.equal(dl.body.size, fetched.length);
    const small = await api.call('POST', `/users/${homeUser}/home/files/download`, { path: 'notes/today.md' });
    assert.equal(small.body.sha256, sha256('# notes\nremember me\n'));
  });

  it("stays inside the tenant's copy of the user's home: outside paths, links out of it and other tenants find nothing", async () => {
    assert.equal((await home('../../other/hot/x')).status, 400);
    const out = await home('passwd-link');
    assert.equal(out.status, 404);
    assert.match(((await out.json()) as { error: { message: string } }).error.message, /outside the home/);
    assert.equal((await home('notes')).status, 409);
    const other = await createApiKey({ tenantId: 'other-tenant-home', description: 'files test' });
    const theirs = await fetch(`${stack.url}/users/${homeUser}/home/files?path=notes/today.md`, {
      headers: { 'X-API-Key': other.key, Accept: 'application/octet-stream' },
    });
    assert.equal(theirs.status, 404);
    const theirList = await apiClient(stack.url, other.key).call('GET', `/users/${homeUser}/home/files/list?path=notes`);
    assert.equal(theirList.status, 404);
  });
});
