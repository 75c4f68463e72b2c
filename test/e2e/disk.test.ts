/**
 * disk_mb through the API on the real local stack (loop-mounted ext4 homes on
 * this ext4 host, s3rver for the hot tier): a home filled to its limit ends
 * gracefully with every file synced, and comes back whole in the user's next
 * sandbox; the home limit is the sync quota; bad sizes get a 400.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { startLocalStack, type LocalStack } from '../../lib/local/stack';
import { apiClient, type ApiClient } from '../support/api-client';
import { uniqueUser } from '../lifecycle/lifecycle-support';

let stack: LocalStack;
let api: ApiClient;
let s3: S3Client;

before(async () => {
  stack = await startLocalStack({ port: 0, reaperIntervalMs: 0, env: { DEFAULT_DISK_MB: '128', MAX_DISK_MB: '256' } });
  api = apiClient(stack.url, stack.apiKey);
  s3 = new S3Client({
    endpoint: stack.s3.url,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: { accessKeyId: stack.env.AWS_ACCESS_KEY_ID!, secretAccessKey: stack.env.AWS_SECRET_ACCESS_KEY! },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
});
after(async () => {
  s3?.destroy();
  await stack?.close();
});

/** key -> size of every object under a user's hot prefix. */
async function stored(user: string): Promise<Map<string, number>> {
  const prefix = `tenants/${stack.tenantId}/users/${user}/hot/`;
  const objects = new Map<string, number>();
  let token: string | undefined;
  do {
    const page = await s3.send(new ListObjectsV2Command({ Bucket: stack.env.STORAGE_BUCKET, Prefix: prefix, ContinuationToken: token }));
    for (const o of page.Contents ?? []) objects.set(o.Key!.slice(prefix.length), o.Size ?? -1);
    token = page.NextContinuationToken;
  } while (token);
  return objects;
}

/** path -> size of every regular file in the sandbox's home. */
async function homeFiles(id: string): Promise<Map<string, number>> {
  const res = await api.exec(id, "cd ~ && find . -type f -printf '%P %s\\n' | sort");
  assert.equal(res.body.exit_code, 0, res.text);
  return new Map(
    res.body.stdout
      .trim()
      .split('\n')
      .map((l: string) => [l.slice(0, l.lastIndexOf(' ')), Number(l.slice(l.lastIndexOf(' ') + 1))]),
  );
}

describe('disk_mb', () => {
  it('a home filled to its limit ends gracefully with every file synced, and comes back whole', async () => {
    const user = uniqueUser('full-home');
    const created = await api.create(user, { disk_mb: 64 });
    assert.equal(created.status, 201, created.text);
    assert.equal(created.body.config.disk_mb, 64);
    const id = created.body.sandbox_id;
    const fill = await api.exec(
      id,
      [
        'mkdir -p ~/project/src && for i in $(seq 1 50); do echo "file $i" > ~/project/src/f$i.txt; done',
        'head -c 20M /dev/urandom > ~/project/data.bin',
        // Until the disk says no: the rest of the space, in one file.
        'head -c 200M /dev/urandom > ~/project/filler.bin; echo "filler=$?"',
        'df -m ~ | tail -1',
      ].join('; '),
      { timeout: 120 },
    );
    assert.match(fill.body.stdout, /filler=1\n.* 100% \/home\/agent\n$/, fill.text);
    assert.match(fill.body.stderr, /No space left on device/);
    const inHome = await homeFiles(id);
    assert.ok((inHome.get('project/filler.bin') ?? 0) > 30 * 1024 * 1024, `filler of ${inHome.get('project/filler.bin')} bytes`);

    const ended = await api.destroy(id, true);
    assert.equal(ended.status, 204, ended.text);
    const after = await stored(user);
    for (const [path, size] of inHome) assert.equal(after.get(path), size, `${path} synced whole`);

    // The user's next sandbox, of the same size, gets every byte back.
    const next = await api.create(user, { disk_mb: 64 });
    assert.equal(next.status, 201, next.text);
    assert.deepEqual(await homeFiles(next.body.sandbox_id), inHome);
    assert.equal((await api.destroy(next.body.sandbox_id, false)).status, 204);
  });

  it('will not squeeze a stored home into a smaller disk: 409 quota_exceeded, and a larger disk takes it', async () => {
    const user = uniqueUser('grown-home');
    const first = await api.create(user, { disk_mb: 128 });
    assert.equal(first.status, 201, first.text);
    const write = await api.exec(first.body.sandbox_id, 'head -c 80M /dev/urandom > ~/big.bin && echo ok', { timeout: 120 });
    assert.equal(write.body.stdout, 'ok\n', write.text);
    assert.equal((await api.destroy(first.body.sandbox_id, true)).status, 204);

    const small = await api.create(user, { disk_mb: 64 });
    assert.equal(small.status, 409, small.text);
    assert.equal(small.body.error.code, 'quota_exceeded');
    assert.match(small.body.error.message, /home size limit of 67108864 bytes; create the sandbox with a larger disk_mb/);
    const large = await api.create(user); // DEFAULT_DISK_MB here: 128
    assert.equal(large.status, 201, large.text);
    assert.equal(large.body.config.disk_mb, 128);
    assert.equal((await homeFiles(large.body.sandbox_id)).get('big.bin'), 80 * 1024 * 1024);
    assert.equal((await api.destroy(large.body.sandbox_id, false)).status, 204);
  });

  it('refuses sizes outside 64..MAX_DISK_MB with a 400 naming the field', async () => {
    for (const disk_mb of [32, 257, 1.5, '128']) {
      const res = await api.create(uniqueUser('bad-disk'), { disk_mb });
      assert.equal(res.status, 400, res.text);
      assert.match(res.body.error.message, /^config\.disk_mb: /);
    }
  });
});
