/**
 * Cold tier: the user's `<prefix>` (e.g. tenants/acme/users/u1/cold/) mounted on the
 * host with a FUSE S3 filesystem; the container gets only a bind mount of the
 * mount point at /data/cold. Files appear at once and download on first read;
 * writes reach S3 when a file is closed. Credentials stay on the host: the FUSE
 * daemon holds them, the container never sees them.
 *
 * Drivers (env COLD_MOUNT_DRIVER): `s3fs` (Debian's s3fs, the default; what the
 * local stack uses) and `mountpoint-s3` (AWS's mount-s3, the usual choice on AWS hosts).
 * S3 through FUSE is not POSIX: no hard links, renames copy, appends rewrite the object.
 *
 * Mount before the container is created: a bind mount made earlier shows the empty directory.
 */
import { createHash } from 'node:crypto';
import { spawn } from 'node:child_process';
import { mkdir, readdir, readFile, realpath, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { HeadObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { removeScope, scopedCommand } from '../process-scope';
import { ColdMountError, StorageError } from './errors';
import { createS3Client } from './s3';

const coldMountDrivers = ['s3fs', 'mountpoint-s3'] as const;
export type ColdMountDriver = (typeof coldMountDrivers)[number];

/** Reads COLD_MOUNT_DRIVER (`s3fs` | `mountpoint-s3`), defaulting to s3fs. */
export function coldMountDriverFromEnv(env: NodeJS.ProcessEnv = process.env): ColdMountDriver {
  const value = env.COLD_MOUNT_DRIVER?.trim() || 's3fs';
  if (!(coldMountDrivers as readonly string[]).includes(value)) {
    throw new StorageError('storage_error', `COLD_MOUNT_DRIVER must be one of ${coldMountDrivers.join(', ')}, got "${value}"`);
  }
  return value as ColdMountDriver;
}

interface ColdCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

export interface ColdMountOptions {
  driver: ColdMountDriver;
  bucket: string;
  /** e.g. tenants/acme/users/u1/cold/ (a trailing `/` is added if missing) */
  prefix: string;
  /** Absolute host path; created if missing. The container gets it with a bind mount. */
  mountPoint: string;
  /** Owner every file appears to have (the container's agent user). */
  uid: number;
  gid: number;
  /** S3 endpoint URL. @default AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL, else AWS's own */
  endpoint?: string;
  /** @default AWS_REGION, then AWS_DEFAULT_REGION */
  region?: string;
  /** @default S3_FORCE_PATH_STYLE === 'true', or true whenever an endpoint is set */
  forcePathStyle?: boolean;
  /**
   * @default AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN) from `env`
   * when set; otherwise the host's instance role (s3fs `iam_role=auto`, mount-s3's default chain).
   */
  credentials?: ColdCredentials;
  /** Host-only directory (0700) for s3fs password files. @default /run/ephemeral-sandbox/s3fs */
  secretsDir?: string;
  /** Client used to create the prefix's directory marker for s3fs. @default createS3Client({ endpoint, credentials }) */
  s3?: S3Client;
  /** Bound on the wait for the mount to answer. @default 15000 */
  readyTimeoutMs?: number;
  /** Environment read for the defaults above. @default process.env */
  env?: NodeJS.ProcessEnv;
}

const defaultSecretsDir = '/run/ephemeral-sandbox/s3fs';

/** The command a driver runs: file, arguments (never through a shell) and its whole environment. */
export interface MountCommand {
  file: string;
  args: string[];
  env: Record<string, string>;
}

interface ResolvedMount {
  driver: ColdMountDriver;
  bucket: string;
  prefix: string;
  mountPoint: string;
  uid: number;
  gid: number;
  endpoint?: string;
  region?: string;
  forcePathStyle: boolean;
  credentials?: ColdCredentials;
  secretsDir: string;
  readyTimeoutMs: number;
}

function resolveMount(o: ColdMountOptions): ResolvedMount {
  const env = o.env ?? process.env;
  if (!o.prefix || o.prefix.startsWith('/') || o.prefix.split('/').some((s, i, all) => (s === '' && i < all.length - 1) || s === '.' || s === '..')) {
    throw new StorageError('storage_error', `cold prefix must be a relative key prefix like tenants/t/users/u/cold/, got "${o.prefix}"`);
  }
  if (!isAbsolute(o.mountPoint)) throw new StorageError('storage_error', `cold mount point must be an absolute path, got "${o.mountPoint}"`);
  const endpoint = o.endpoint ?? env.AWS_ENDPOINT_URL_S3 ?? env.AWS_ENDPOINT_URL;
  const envCredentials =
    env.AWS_ACCESS_KEY_ID && env.AWS_SECRET_ACCESS_KEY
      ? {
          accessKeyId: env.AWS_ACCESS_KEY_ID,
          secretAccessKey: env.AWS_SECRET_ACCESS_KEY,
          ...(env.AWS_SESSION_TOKEN ? { sessionToken: env.AWS_SESSION_TOKEN } : {}),
        }
      : undefined;
  return {
    driver: o.driver,
    bucket: o.bucket,
    prefix: o.prefix.endsWith('/') ? o.prefix : o.prefix + '/',
    mountPoint: resolve(o.mountPoint),
    uid: o.uid,
    gid: o.gid,
    endpoint,
    region: o.region ?? env.AWS_REGION ?? env.AWS_DEFAULT_REGION,
    forcePathStyle: o.forcePathStyle ?? (env.S3_FORCE_PATH_STYLE === 'true' || endpoint !== undefined),
    credentials: o.credentials ?? envCredentials,
    secretsDir: o.secretsDir ?? defaultSecretsDir,
    readyTimeoutMs: o.readyTimeoutMs ?? 15_000,
  };
}

/** The scope (process-scope.ts) a mount point's FUSE client runs in: outside the daemon's service, so it survives a daemon restart. */
function coldMountScope(mountPoint: string): string {
  return 'cold-' + createHash('sha256').update(resolve(mountPoint)).digest('hex').slice(0, 24);
}

/** Where the s3fs password file of a mount point lives (one per mount point, removed at unmount). */
export function s3fsPasswdFile(mountPoint: string, secretsDir: string = defaultSecretsDir): string {
  return join(secretsDir, createHash('sha256').update(resolve(mountPoint)).digest('hex').slice(0, 32) + '.passwd');
}

/**
 * The s3fs command for a mount, e.g.
 * `s3fs bucket:/tenants/t/users/u/cold /mnt/x -o url=http://127.0.0.1:4569 -o use_path_request_style
 *  -o passwd_file=... -o allow_other -o uid=1000 -o gid=1000 -o umask=0022 -o mp_umask=0022`.
 */
export function s3fsCommand(o: ColdMountOptions): MountCommand {
  const m = resolveMount(o);
  const args = [`${m.bucket}:/${m.prefix.slice(0, -1)}`, m.mountPoint];
  const opt = (value: string) => args.push('-o', value);
  if (m.endpoint) opt(`url=${m.endpoint}`);
  else if (m.region) opt(`url=https://s3.${m.region}.amazonaws.com`);
  if (m.region) opt(`endpoint=${m.region}`);
  if (m.forcePathStyle) opt('use_path_request_style');
  if (m.credentials) {
    if (m.credentials.sessionToken) {
      throw new StorageError(
        'storage_error',
        's3fs cannot refresh temporary credentials from a password file: use the instance role (no credentials) or COLD_MOUNT_DRIVER=mountpoint-s3',
      );
    }
    opt(`passwd_file=${s3fsPasswdFile(m.mountPoint, m.secretsDir)}`);
  } else {
    opt('iam_role=auto');
  }
  // allow_other: the container's user is not the (root) user that mounted.
  opt('allow_other');
  opt(`uid=${m.uid}`);
  opt(`gid=${m.gid}`);
  // Objects written by other tools carry no mode: show them rwxr-xr-x, not 0000.
  opt('umask=0022');
  opt('mp_umask=0022');
  return { file: 's3fs', args, env: baseEnv(o.env ?? process.env) };
}

/**
 * The mount-s3 (mountpoint-s3) command for a mount, e.g.
 * `mount-s3 bucket /mnt/x --prefix tenants/t/users/u/cold/ --allow-other --uid 1000 --gid 1000
 *  --allow-delete --allow-overwrite --dir-mode 0755 --file-mode 0644`.
 * Credentials, when given, go in the daemon's environment, never on its command line.
 */
export function mountpointS3Command(o: ColdMountOptions): MountCommand {
  const m = resolveMount(o);
  const args = [
    m.bucket,
    m.mountPoint,
    '--prefix',
    m.prefix,
    '--allow-other',
    '--uid',
    String(m.uid),
    '--gid',
    String(m.gid),
    '--allow-delete',
    '--allow-overwrite',
    '--dir-mode',
    '0755',
    '--file-mode',
    '0644',
  ];
  if (m.endpoint) args.push('--endpoint-url', m.endpoint);
  if (m.endpoint && m.forcePathStyle) args.push('--force-path-style');
  if (m.region) args.push('--region', m.region);
  const env = baseEnv(o.env ?? process.env);
  if (m.credentials) {
    env.AWS_ACCESS_KEY_ID = m.credentials.accessKeyId;
    env.AWS_SECRET_ACCESS_KEY = m.credentials.secretAccessKey;
    if (m.credentials.sessionToken) env.AWS_SESSION_TOKEN = m.credentials.sessionToken;
  }
  return { file: 'mount-s3', args, env };
}

/** Only what a mount daemon needs: unrelated host secrets in our environment stay out of it. */
function baseEnv(env: NodeJS.ProcessEnv): Record<string, string> {
  return { PATH: env.PATH ?? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', HOME: env.HOME ?? '/root' };
}

/**
 * Mounts the user's cold prefix at `mountPoint` and waits (bounded) until it is live
 * and answers. Idempotent: an existing mount at `mountPoint` is kept.
 *
 * @example
 *   await mountCold({ driver: coldMountDriverFromEnv(), bucket, prefix: 'tenants/acme/users/u1/cold/',
 *     mountPoint: '/var/lib/sbx/sbx-1/cold', uid: 1000, gid: 1000 });
 *   // docker create ... -v /var/lib/sbx/sbx-1/cold:/data/cold ...
 */
export async function mountCold(o: ColdMountOptions): Promise<void> {
  const m = resolveMount(o);
  await mkdir(m.mountPoint, { recursive: true, mode: 0o755 });
  const mountPoint = await canonicalPath(m.mountPoint);
  if (await isMounted(mountPoint)) return;

  const command = m.driver === 's3fs' ? s3fsCommand({ ...o, mountPoint }) : mountpointS3Command({ ...o, mountPoint });
  if (m.driver === 's3fs') {
    const s3 = o.s3 ?? createS3Client({ endpoint: m.endpoint, forcePathStyle: m.forcePathStyle, region: m.region, credentials: m.credentials });
    try {
      await ensurePrefixMarker(s3, m);
    } finally {
      if (!o.s3) s3.destroy();
    }
    if (m.credentials) await writePasswdFile(s3fsPasswdFile(mountPoint, m.secretsDir), m.credentials);
  }

  try {
    const exit = await runDaemonizing({ ...command, ...scopedCommand(command.file, command.args, coldMountScope(mountPoint)) });
    if (exit.code !== 0) {
      throw new ColdMountError(
        `${command.file} could not mount s3://${m.bucket}/${m.prefix} at ${mountPoint} (exit ${exit.code}): ${exit.stderr.trim() || 'no message'}`,
      );
    }
    await waitUntilLive(mountPoint, m.readyTimeoutMs, `s3://${m.bucket}/${m.prefix}`);
  } catch (err) {
    await unmountCold(mountPoint, { force: true, secretsDir: m.secretsDir }).catch(() => undefined); // the mount error is the one to report
    await rm(s3fsPasswdFile(mountPoint, m.secretsDir), { force: true });
    if (err instanceof StorageError) throw err;
    throw new ColdMountError(`cannot mount s3://${m.bucket}/${m.prefix} at ${mountPoint}: ${(err as Error).message}`, { cause: err });
  }
}

export interface UnmountOptions {
  /** Detach even when busy (lazy unmount), as a forced destroy needs. @default false */
  force?: boolean;
  /** Bound on the wait for the mount to leave /proc/mounts. @default 10000 */
  timeoutMs?: number;
  /** Where mountCold put the s3fs password file. @default /run/ephemeral-sandbox/s3fs */
  secretsDir?: string;
}

/**
 * Unmounts the cold tier at `mountPoint` and checks /proc/mounts that it is gone.
 * Idempotent: nothing mounted is success. With `force`, a busy or dead mount is
 * detached lazily (umount -l); without it, a busy mount is an error.
 */
export async function unmountCold(mountPoint: string, options: UnmountOptions = {}): Promise<void> {
  const target = await canonicalPath(resolve(mountPoint));
  const timeoutMs = options.timeoutMs ?? 10_000;
  const deadline = Date.now() + timeoutMs;
  // Loop: mounts can be stacked on one path (e.g. a mount retried after a crash).
  while (await isMounted(target)) {
    const plain = await run('umount', [target]);
    if (plain.code !== 0) {
      if (!options.force) {
        throw new ColdMountError(`cannot unmount ${target}: ${plain.stderr.trim()}; retry with force to detach it lazily`);
      }
      const lazy = await run('umount', ['-l', target]);
      if (lazy.code !== 0 && (await isMounted(target))) {
        throw new ColdMountError(`cannot unmount ${target}, even lazily: ${lazy.stderr.trim()}`);
      }
    }
    if (Date.now() > deadline) throw new ColdMountError(`${target} is still mounted after ${timeoutMs} ms`);
  }
  await rm(s3fsPasswdFile(target, options.secretsDir ?? defaultSecretsDir), { force: true });
  // The FUSE client exits once unmounted; a lazily detached one may take a moment (its empty scope goes with the next unmount).
  removeScope(coldMountScope(target));
}

/**
 * Whether the mount at `mountPoint` answers: listed in /proc/mounts and its
 * root stat-able within `timeoutMs`. A FUSE client that died leaves its mount
 * listed and answering ENOTCONN ("Transport endpoint is not connected"). A
 * stat of the root is answered by the client itself, without an S3 request.
 */
export async function coldMountAlive(mountPoint: string, timeoutMs = 5_000): Promise<boolean> {
  if (!(await isMounted(mountPoint))) return false;
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      stat(mountPoint),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error('timeout')), timeoutMs);
      }),
    ]);
    return true;
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
  }
}

export interface MountEntry {
  source: string;
  target: string;
  fstype: string;
  options: string;
}

/** Parses /proc/mounts (fields are space-separated, with octal escapes such as \040 for a space). */
export function parseProcMounts(text: string): MountEntry[] {
  const unescapeOctal = (field: string) => field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8)));
  return text
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => {
      const [source = '', target = '', fstype = '', options = ''] = line.split(' ');
      return { source: unescapeOctal(source), target: unescapeOctal(target), fstype: unescapeOctal(fstype), options };
    });
}

/** True when something is mounted at `mountPoint` (as /proc/mounts says). */
export async function isMounted(mountPoint: string): Promise<boolean> {
  const target = resolve(mountPoint);
  return parseProcMounts(await readFile('/proc/mounts', 'utf8')).some((entry) => entry.target === target);
}

/** s3fs shows a prefix only when its "directory" exists: create the marker if missing. */
async function ensurePrefixMarker(s3: S3Client, m: ResolvedMount): Promise<void> {
  try {
    await s3.send(new HeadObjectCommand({ Bucket: m.bucket, Key: m.prefix }));
  } catch (err) {
    const status = (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
    if (status !== 404)
      throw new ColdMountError(`cannot reach s3://${m.bucket}/${m.prefix}: ${(err as Error).name}: ${(err as Error).message}`, { cause: err });
    await s3.send(
      new PutObjectCommand({
        Bucket: m.bucket,
        Key: m.prefix,
        Body: Buffer.alloc(0),
        ContentLength: 0,
        ContentType: 'application/x-directory',
        Metadata: { mode: String(0o40755) },
      }),
    );
  }
}

async function writePasswdFile(path: string, credentials: ColdCredentials): Promise<void> {
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  await writeFile(path, `${credentials.accessKeyId}:${credentials.secretAccessKey}\n`, { mode: 0o600 });
}

/**
 * The mount counts as live when it is in /proc/mounts and its root can be listed:
 * s3fs enters /proc/mounts even when it cannot reach S3, then dies on first use.
 */
async function waitUntilLive(mountPoint: string, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await isMounted(mountPoint))) {
    if (Date.now() > deadline) throw new ColdMountError(`${what} did not appear at ${mountPoint} within ${timeoutMs} ms`);
    await sleep(50);
  }
  // A mount that appeared late (a busy host: fifty creates at once) still gets a fair wait for its first
  // listing; a dead client fails it at once (ENOTCONN), so the floor only ever waits on a live, slow one.
  const remaining = Math.max(5_000, deadline - Date.now());
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      readdir(mountPoint),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`listing the mount did not answer within ${remaining} ms`)), remaining);
      }),
    ]);
  } catch (err) {
    throw new ColdMountError(`${what} is mounted at ${mountPoint} but does not answer: ${(err as Error).message}`, { cause: err });
  } finally {
    clearTimeout(timer);
  }
}

/** Resolves symlinks in the parent only: the mount point itself may be a dead FUSE mount that cannot be stat'ed. */
async function canonicalPath(path: string): Promise<string> {
  try {
    return join(await realpath(dirname(path)), basename(path));
  } catch {
    return path;
  }
}

interface Exit {
  code: number;
  stderr: string;
}

/**
 * Runs a command that forks a daemon and exits: waits for the exit, not for the
 * pipes to close (the daemon inherits them), then lets go of the pipes.
 */
function runDaemonizing(command: MountCommand): Promise<Exit> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(command.file, command.args, { env: command.env, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk: string) => {
      if (stderr.length < 4_000) stderr += chunk;
    });
    child.on('error', (err) => reject(new ColdMountError(`cannot run ${command.file}: ${err.message} (is it installed?)`, { cause: err })));
    child.on('exit', (code, signal) => {
      // Give the last stderr bytes a moment, then stop reading what the daemon keeps open.
      setTimeout(() => {
        child.stderr.destroy();
        resolvePromise({ code: code ?? (signal ? 128 : 1), stderr });
      }, 20);
    });
  });
}

function run(file: string, args: string[]): Promise<Exit> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(file, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk: string) => (stderr += chunk));
    child.on('error', reject);
    child.on('close', (code) => resolvePromise({ code: code ?? 1, stderr }));
  });
}
