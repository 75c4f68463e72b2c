/**
 * Storage tiers through the API on the real local stack: the hot home synced
 * with s3rver, the cold tier mounted with s3fs, per user and per tenant.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { startLocalStack, type LocalStack } from '../../lib/local/stack';
import { apiClient, type ApiClient } from '../support/api-client';
import { docker } from '../support/docker';

const syncIntervalSeconds = 3;
let stack: LocalStack;
let api: ApiClient;
let s3: S3Client;
let bucket: string;

before(async () => {
  stack = await startLocalStack({
    port: 0,
    reaperIntervalMs: 0,
    env: { HOT_SYNC_INTERVAL_SECONDS: String(syncIntervalSeconds), RECONCILE_GRACE_SECONDS: '2' },
  });
  api = apiClient(stack.url, stack.apiKey);
  bucket = stack.env.STORAGE_BUCKET!;
  s3 = new S3Client({
    endpoint: stack.s3.url,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: stack.s3.credentials,
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
});
after(async () => {
  s3?.destroy();
  await stack?.close();
});

const prefix = (user: string, tier: 'hot' | 'cold') => `tenants/${stack.tenantId}/users/${user}/${tier}/`;

async function keys(p: string): Promise<string[]> {
  const out: string[] = [];
  let token: string | undefined;
  do {
    const page = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: p, ContinuationToken: token }));
    out.push(...(page.Contents ?? []).map((o) => o.Key!.slice(p.length)));
    token = page.NextContinuationToken;
  } while (token);
  return out;
}

async function sandboxFor(user: string): Promise<string> {
  const res = await api.create(user);
  assert.equal(res.status, 201, res.text);
  return res.body.sandbox_id;
}

async function run(id: string, command: string): Promise<string> {
  const res = await api.exec(id, command, { timeout: 120 });
  assert.equal(res.status, 200, res.text);
  assert.equal(res.body.exit_code, 0, `${command}: ${res.body.stderr}`);
  return res.body.stdout;
}

async function until<T>(what: string, probe: () => Promise<T | undefined>, ms = 20_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

function coldMountsOf(id: string): string[] {
  return readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[1] ?? '')
    .filter((m) => m.includes(`/sandboxes/${id}/`));
}

describe('the hot tier: /home/agent outlives the sandbox', () => {
  it('keeps a file across a graceful destroy, in the next sandbox of the same user, and a deleted file stays deleted', async () => {
    const first = await sandboxFor('alice');
    await run(first, 'echo "remember me" > ~/notes.txt && chmod 640 ~/notes.txt && mkdir -p ~/proj && echo x > ~/proj/gone.txt');
    assert.equal((await api.destroyAndWait(first)).final.body.status, 'stopped');
    assert.ok((await keys(prefix('alice', 'hot'))).includes('notes.txt'));

    const second = await sandboxFor('alice');
    assert.equal(await run(second, 'cat ~/notes.txt && stat -c %a ~/notes.txt'), 'remember me\n640\n');
    await run(second, 'rm ~/proj/gone.txt');
    assert.equal((await api.destroyAndWait(second)).final.body.status, 'stopped');
    assert.ok(!(await keys(prefix('alice', 'hot'))).includes('proj/gone.txt'), 'the deletion reached S3');

    const third = await sandboxFor('alice');
    assert.equal(await run(third, 'test -e ~/proj/gone.txt && echo present || echo absent'), 'absent\n');
    assert.equal(await run(third, 'cat ~/notes.txt'), 'remember me\n');
    await api.destroy(third, false);
  });

  it('round-trips 1,000 small files intact', async () => {
    const first = await sandboxFor('bulk');
    const sum = await run(first, 'mkdir -p ~/many && cd ~/many && for i in $(seq 1 1000); do echo "file $i" > f$i.txt; done && cat $(ls | sort) | sha256sum');
    assert.equal((await api.destroyAndWait(first)).final.body.status, 'stopped');
    const second = await sandboxFor('bulk');
    assert.equal(await run(second, 'cd ~/many && ls | wc -l'), '1000\n');
    assert.equal(await run(second, 'cd ~/many && cat $(ls | sort) | sha256sum'), sum);
    await api.destroy(second, false);
  });

  it("never shows one user's files to another user", async () => {
    const mallory = await sandboxFor('mallory');
    assert.equal(await run(mallory, 'test -e ~/notes.txt && echo seen || echo unseen'), 'unseen\n');
    assert.equal(await run(mallory, 'ls -A ~ | grep -c notes || true'), '0\n');
    await api.destroyAndWait(mallory);
    assert.ok(!(await keys(prefix('mallory', 'hot'))).includes('notes.txt'));
  });

  it("loses at most the sync window when the container is killed behind the system's back", async () => {
    const id = await sandboxFor('crashy');
    await run(id, 'echo "saved by the periodic sync" > ~/work.txt');
    // The host daemon's periodic sync uploads it within the window...
    await until(
      'the periodic sync',
      async () => ((await keys(prefix('crashy', 'hot'))).includes('work.txt') ? true : undefined),
      4 * syncIntervalSeconds * 1000,
    );
    // ...so a crash afterwards loses nothing of it.
    await docker.getContainer(id).remove({ force: true });
    const failed = await until('the record to fail', async () => {
      const got = await api.get(id);
      return got.body.status === 'failed' ? got.body : undefined;
    });
    assert.equal(failed.stop_reason, 'container_vanished');
    // Nothing of it stays on the host: not the cold tier's mount (nor its FUSE process), not the home.
    await until('the host to clean up after the vanished container', async () =>
      coldMountsOf(id).length === 0 && !existsSync(join(stack.stateDir, 'sandboxes', id)) ? true : undefined,
    );
    const next = await sandboxFor('crashy');
    assert.equal(await run(next, 'cat ~/work.txt'), 'saved by the periodic sync\n');
    await api.destroy(next, false);
  });
});

describe("the cold tier: /data/cold is the user's S3 prefix, mounted on the host", () => {
  it('shows objects put in S3 and writes back to S3, and a forced destroy leaves no mount', async () => {
    const big = Buffer.alloc(3 * 1024 * 1024, 'ab');
    await s3.send(new PutObjectCommand({ Bucket: bucket, Key: `${prefix('carol', 'cold')}datasets/big.bin`, Body: big }));
    const id = await sandboxFor('carol');
    assert.ok(coldMountsOf(id).length > 0, 'the cold tier is mounted on the host');
    assert.equal(await run(id, 'stat -c %s /data/cold/datasets/big.bin'), `${big.length}\n`);
    assert.equal(await run(id, 'head -c 4 /data/cold/datasets/big.bin'), 'abab');
    await run(id, 'echo "written in the sandbox" > /data/cold/result.txt');
    const body = await until('the cold write in S3', async () => {
      try {
        const got = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: `${prefix('carol', 'cold')}result.txt` }));
        return await got.Body!.transformToString();
      } catch {
        return undefined;
      }
    });
    assert.equal(body, 'written in the sandbox\n');
    assert.equal(await run(id, 'env | grep -c ^AWS_ || true'), '0\n', 'no AWS credentials in the sandbox');

    assert.equal((await api.destroy(id, false)).status, 204);
    assert.deepEqual(coldMountsOf(id), [], 'no mount left behind');
  });
});
