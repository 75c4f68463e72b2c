/**
 * The storage hooks of the lifecycle verbs, end to end: hot sync down at
 * create, sync up on demand, pause and graceful destroy; the cold tier as a
 * real s3fs mount at /data/cold. S3 is s3rver on loopback.
 * Run: node --import tsx --test test/host-agent/storage.test.ts
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { GetObjectCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import type { StorageSpec } from '../../contract/host-protocol';
import { startS3Endpoint, type S3Endpoint } from '../../lib/local/s3-endpoint';
import { TestHost } from './fixture';

const bucket = 'host-agent-storage';
const host = new TestHost();
let s3: S3Endpoint;
let client: S3Client;
let storage: StorageSpec;

const mountedUnder = (dir: string) =>
  readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .some((line) => (line.split(' ')[1] ?? '').startsWith(dir));

before(async () => {
  [s3] = await Promise.all([startS3Endpoint({ buckets: [bucket] }), host.start()]);
  client = new S3Client({ endpoint: s3.url, region: 'us-east-1', forcePathStyle: true, credentials: s3.credentials });
  host.env = {
    AWS_ENDPOINT_URL_S3: s3.url,
    S3_FORCE_PATH_STYLE: 'true',
    AWS_REGION: 'us-east-1',
    AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
    COLD_MOUNT_DRIVER: 's3fs',
  };
  const user = `tenants/t1/users/u-${host.runId}`;
  storage = { bucket, hotPrefix: `${user}/hot/`, coldPrefix: `${user}/cold/`, hotQuotaBytes: 10 * 1024 * 1024, syncIntervalSeconds: 0 };
  await client.send(new PutObjectCommand({ Bucket: bucket, Key: `${storage.hotPrefix}notes.txt`, Body: 'from the hot tier\n' }));
  await client.send(new PutObjectCommand({ Bucket: bucket, Key: `${storage.coldPrefix}dataset.csv`, Body: 'a,b\n1,2\n' }));
});
after(async () => {
  await host.close();
  client?.destroy();
  await s3?.close();
});

async function objectText(key: string): Promise<string> {
  const object = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
  return (await object.Body?.transformToString()) ?? '';
}

describe('storage tiers through the lifecycle', () => {
  it('fills the home from S3, mounts the cold tier, syncs back on demand, across pause and on destroy', async () => {
    const request = host.createRequest({ storage });
    const sandboxId = request.sandboxId as string;
    const sandboxDir = join(host.stateDir, 'sandboxes', sandboxId);

    const created = await host.ok('create', request);
    assert.ok((created.hotSync?.downloaded ?? 0) >= 1, JSON.stringify(created));
    const seen = await host.exec(sandboxId, 'cat ~/notes.txt /data/cold/dataset.csv; echo written > ~/new.txt');
    assert.equal(seen.stdout, 'from the hot tier\na,b\n1,2\n', seen.stderr);

    const synced = await host.ok('sync', { sandboxId, storage });
    assert.ok(synced.uploaded >= 1, JSON.stringify(synced));
    assert.equal(await objectText(`${storage.hotPrefix}new.txt`), 'written\n');

    await host.exec(sandboxId, 'echo before-pause > ~/paused.txt');
    await host.ok('pause', { sandboxId, storage });
    assert.equal(mountedUnder(sandboxDir), false, 'pause unmounts the cold tier');
    assert.equal(await objectText(`${storage.hotPrefix}paused.txt`), 'before-pause\n');
    await host.ok('resume', { sandboxId, storage });
    const back = await host.exec(sandboxId, 'cat ~/paused.txt /data/cold/dataset.csv; echo last > ~/last.txt');
    assert.equal(back.stdout, 'before-pause\na,b\n1,2\n', back.stderr);

    const destroyed = await host.ok('destroy', { sandboxId, graceful: true, storage });
    assert.equal(destroyed.removed, true);
    assert.ok((destroyed.hotSync?.uploaded ?? 0) >= 1, JSON.stringify(destroyed));
    assert.equal(await objectText(`${storage.hotPrefix}last.txt`), 'last\n');
    assert.equal(mountedUnder(sandboxDir), false);
    assert.equal(existsSync(sandboxDir), false);
  });
});
