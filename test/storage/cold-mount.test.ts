/**
 * Cold tier: a real s3fs FUSE mount of a prefix on a real S3 endpoint (s3rver),
 * given to a real container with a bind mount. mountpoint-s3 is not installed
 * here: its command line is checked, not run.
 * Run: node --import tsx --test test/storage/cold-mount.test.ts
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { GetObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import {
  ColdMountError,
  coldMountDriverFromEnv,
  createS3Client,
  isMounted,
  mountCold,
  mountpointS3Command,
  parseProcMounts,
  s3fsCommand,
  s3fsPasswdFile,
  StorageError,
  unmountCold,
  type ColdMountOptions,
} from '../../host-agent/src/storage/index';
import { containerLabels, ownerLabelValue } from '../../contract/host-protocol';
import { startS3Endpoint, type S3Endpoint } from '../../lib/local/s3-endpoint';

const exec = promisify(execFile);
const bucket = 'cold-mount-test';
const testImage = 'local/debian:bookworm';

describe('cold mount command lines', () => {
  const base: ColdMountOptions = {
    driver: 's3fs',
    bucket: 'storage',
    prefix: 'tenants/acme/users/u1/cold/',
    mountPoint: '/var/lib/sbx/sbx-1/cold',
    uid: 1000,
    gid: 1000,
    env: {},
  };

  it('reads the driver from COLD_MOUNT_DRIVER, defaulting to s3fs and refusing unknown ones', () => {
    assert.equal(coldMountDriverFromEnv({}), 's3fs');
    assert.equal(coldMountDriverFromEnv({ COLD_MOUNT_DRIVER: 'mountpoint-s3' }), 'mountpoint-s3');
    assert.throws(() => coldMountDriverFromEnv({ COLD_MOUNT_DRIVER: 'goofys' }), StorageError);
  });

  it('builds the mount-s3 command with the prefix, owner and write permissions, credentials only in its environment', () => {
    const command = mountpointS3Command({
      ...base,
      driver: 'mountpoint-s3',
      region: 'eu-west-1',
      credentials: { accessKeyId: 'AKIAEXAMPLE', secretAccessKey: 'secret', sessionToken: 'token' },
    });
    assert.equal(command.file, 'mount-s3');
    assert.deepEqual(command.args, [
      'storage',
      '/var/lib/sbx/sbx-1/cold',
      '--prefix',
      'tenants/acme/users/u1/cold/',
      '--allow-other',
      '--uid',
      '1000',
      '--gid',
      '1000',
      '--allow-delete',
      '--allow-overwrite',
      '--dir-mode',
      '0755',
      '--file-mode',
      '0644',
      '--region',
      'eu-west-1',
    ]);
    assert.equal(command.env.AWS_SECRET_ACCESS_KEY, 'secret');
    assert.equal(command.env.AWS_SESSION_TOKEN, 'token');
    assert.ok(!command.args.join(' ').includes('secret'));
  });

  it('builds the mount-s3 command for a custom endpoint with path-style requests, and uses the instance role without credentials', () => {
    const command = mountpointS3Command({ ...base, driver: 'mountpoint-s3', prefix: 'tenants/acme/users/u1/cold', endpoint: 'http://127.0.0.1:4569' });
    assert.deepEqual(command.args.slice(2, 4), ['--prefix', 'tenants/acme/users/u1/cold/']);
    assert.deepEqual(command.args.slice(-3), ['--endpoint-url', 'http://127.0.0.1:4569', '--force-path-style']);
    assert.equal(command.env.AWS_ACCESS_KEY_ID, undefined);
  });

  it('builds the s3fs command with a password file for keys and iam_role=auto without them', () => {
    const withKeys = s3fsCommand({ ...base, endpoint: 'http://127.0.0.1:4569', credentials: { accessKeyId: 'A', secretAccessKey: 'B' }, secretsDir: '/run/x' });
    assert.equal(withKeys.args[0], 'storage:/tenants/acme/users/u1/cold');
    assert.equal(withKeys.args[1], '/var/lib/sbx/sbx-1/cold');
    const options = withKeys.args.filter((_, i) => withKeys.args[i - 1] === '-o');
    assert.deepEqual(options, [
      'url=http://127.0.0.1:4569',
      'use_path_request_style',
      `passwd_file=${s3fsPasswdFile('/var/lib/sbx/sbx-1/cold', '/run/x')}`,
      'allow_other',
      'uid=1000',
      'gid=1000',
      'umask=0022',
      'mp_umask=0022',
    ]);
    const withRole = s3fsCommand({ ...base, region: 'eu-west-1' });
    assert.ok(withRole.args.includes('iam_role=auto'));
    assert.ok(withRole.args.includes('url=https://s3.eu-west-1.amazonaws.com'));
    assert.throws(() => s3fsCommand({ ...base, credentials: { accessKeyId: 'A', secretAccessKey: 'B', sessionToken: 'T' } }), /temporary credentials/);
    assert.throws(() => s3fsCommand({ ...base, prefix: 'tenants/../other/' }), /relative key prefix/);
  });

  it('parses /proc/mounts with escaped spaces', () => {
    assert.deepEqual(parseProcMounts('s3fs /mnt/a\\040b fuse.s3fs rw,allow_other 0 0\n'), [
      { source: 's3fs', target: '/mnt/a b', fstype: 'fuse.s3fs', options: 'rw,allow_other' },
    ]);
  });
});

describe('cold mount with s3fs on a local S3 endpoint', () => {
  let endpoint: S3Endpoint;
  let s3: S3Client;
  let work: string;
  const mountPoints: string[] = [];
  const containers: string[] = [];

  const mountOptions = (user: string): ColdMountOptions => {
    const mountPoint = join(work, `${user}-cold`);
    mountPoints.push(mountPoint);
    return {
      driver: 's3fs',
      bucket,
      prefix: `tenants/t1/users/${user}/cold/`,
      mountPoint,
      uid: 1000,
      gid: 1000,
      endpoint: endpoint.url,
      credentials: endpoint.credentials,
      secretsDir: join(work, 'secrets'),
      s3,
      env: {},
    };
  };

  const objectText = async (key: string) => (await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }))).Body!.transformToString();

  before(async () => {
    endpoint = await startS3Endpoint({ buckets: [bucket] });
    s3 = createS3Client({ endpoint: endpoint.url, forcePathStyle: true, credentials: endpoint.credentials });
    work = await mkdtemp(join(tmpdir(), 'cold-mount-test-'));
  });

  after(async () => {
    for (const name of containers) await exec('docker', ['rm', '-f', name]).catch(() => undefined);
    for (const mountPoint of mountPoints) await unmountCold(mountPoint, { force: true, secretsDir: join(work, 'secrets') }).catch(() => undefined);
    s3?.destroy();
    await endpoint?.close();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('shows objects of the prefix at once, sends writes to S3, and a container given the mount with -v reads and writes it', async () => {
    const o = mountOptions('u1');
    await s3.send(new PutObjectCommand({ Bucket: bucket, Key: `${o.prefix}datasets/before-mount.csv`, Body: 'a,b\n1,2\n' }));
    await mountCold(o);
    assert.ok(await isMounted(o.mountPoint));
    const passwd = await stat(s3fsPasswdFile(o.mountPoint, o.secretsDir));
    assert.equal((passwd.mode & 0o777).toString(8), '600', 'the s3fs password file is private to root');

    await s3.send(new PutObjectCommand({ Bucket: bucket, Key: `${o.prefix}after-mount.txt`, Body: 'put after the mount' }));
    assert.equal(await readFile(join(o.mountPoint, 'datasets/before-mount.csv'), 'utf8'), 'a,b\n1,2\n');
    assert.equal(await readFile(join(o.mountPoint, 'after-mount.txt'), 'utf8'), 'put after the mount');
    assert.equal((await stat(join(o.mountPoint, 'after-mount.txt'))).uid, 1000, 'files appear owned by the agent user');

    await writeFile(join(o.mountPoint, 'from-host.txt'), 'written through the mount');
    assert.equal(await objectText(`${o.prefix}from-host.txt`), 'written through the mount');

    // Another mount again at the same place is a no-op.
    await mountCold(o);
    assert.equal(parseProcMounts(await readFile('/proc/mounts', 'utf8')).filter((m) => m.target === o.mountPoint).length, 1);

    const name = `cold-mount-test-${randomBytes(6).toString('hex')}`;
    containers.push(name);
    const { stdout } = await exec('docker', [
      'run',
      '--rm',
      '--name',
      name,
      '--label',
      `${containerLabels.owner}=${ownerLabelValue}`,
      '--user',
      '1000:1000',
      '--network',
      'none',
      '-v',
      `${o.mountPoint}:/data/cold`,
      testImage,
      'bash',
      '-c',
      'cat /data/cold/datasets/before-mount.csv && echo "from the container" > /data/cold/from-container.txt && env | grep -c AWS_ || true',
    ]);
    assert.equal(stdout, 'a,b\n1,2\n0\n', 'the container reads the file and has no AWS credentials');
    assert.equal(await objectText(`${o.prefix}from-container.txt`), 'from the container\n');

    await unmountCold(o.mountPoint, { force: true, secretsDir: o.secretsDir });
    assert.equal(await isMounted(o.mountPoint), false);
    assert.ok(!(await readFile('/proc/mounts', 'utf8')).includes(o.mountPoint), 'nothing of the mount is left in /proc/mounts');
    await assert.rejects(stat(s3fsPasswdFile(o.mountPoint, o.secretsDir)), { code: 'ENOENT' }, 'the password file is removed');
    await unmountCold(o.mountPoint, { force: true, secretsDir: o.secretsDir }); // idempotent
  });

  it('refuses to unmount a busy mount without force, and detaches it with force', async () => {
    const o = mountOptions('busy');
    await mountCold(o);
    const holder = spawn('sleep', ['30'], { cwd: o.mountPoint, stdio: 'ignore' });
    try {
      await assert.rejects(unmountCold(o.mountPoint, { secretsDir: o.secretsDir }), ColdMountError);
      assert.ok(await isMounted(o.mountPoint));
      await unmountCold(o.mountPoint, { force: true, secretsDir: o.secretsDir });
      assert.equal(await isMounted(o.mountPoint), false);
    } finally {
      holder.kill('SIGKILL');
    }
  });

  it('fails with ColdMountError, leaving nothing mounted, when S3 cannot be reached', async () => {
    const o = { ...mountOptions('unreachable'), endpoint: 'http://127.0.0.1:9', s3: undefined };
    await assert.rejects(mountCold(o), ColdMountError);
    assert.equal(await isMounted(o.mountPoint), false);
  });
});
