/**
 * A local S3 endpoint for the local stack and tests: s3rver behind a SigV4
 * front on loopback (s3-server.ts), path-style requests, and credentials of
 * its own (random per endpoint unless given): s3rver's well-known S3RVER pair
 * is refused like any other. The AWS SDK, the AWS CLI and s3fs all talk to it.
 *
 * s3rver runs in its own Node process, for two reasons: it signs list
 * continuation tokens with DES, which Node 20's OpenSSL 3 only offers with
 * --openssl-legacy-provider (without it any listing of more than 1,000 keys
 * answers 500); and a server on its own event loop does not compete with the
 * client being measured or tested.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { generateLocalCredentials, type LocalCredentials } from './sigv4';

export interface S3EndpointOptions {
  /** Port on 127.0.0.1; 0 picks a free one. @default 0 */
  port?: number;
  /** Where s3rver keeps objects. @default a fresh temporary directory, removed on close */
  directory?: string;
  /** Buckets created before the endpoint answers. */
  buckets: string[];
  /** Bound on the wait for the server to listen. @default 15000 */
  startTimeoutMs?: number;
  /** The only credentials accepted. @default fresh random ones (see `credentials` on the endpoint) */
  credentials?: LocalCredentials;
}

export interface S3Endpoint {
  /** e.g. http://127.0.0.1:4569 */
  url: string;
  port: number;
  directory: string;
  /** What clients must sign with. */
  credentials: LocalCredentials;
  /** The s3rver process (e.g. to read its CPU time). */
  pid: number;
  close(): Promise<void>;
}

const serverEntry = fileURLToPath(new URL('./s3-server.ts', import.meta.url));

/**
 * Starts s3rver (behind its SigV4 front on 127.0.0.1) with the given buckets.
 *
 * @example
 *   const s3 = await startS3Endpoint({ buckets: ['sandbox-storage'] });
 *   // AWS_ENDPOINT_URL_S3=<s3.url> S3_FORCE_PATH_STYLE=true AWS_ACCESS_KEY_ID=<s3.credentials.accessKeyId> AWS_SECRET_ACCESS_KEY=<...>
 *   await s3.close();
 */
export async function startS3Endpoint(options: S3EndpointOptions): Promise<S3Endpoint> {
  const ownsDirectory = options.directory === undefined;
  const directory = options.directory ?? (await mkdtemp(join(tmpdir(), 's3rver-')));
  const credentials = options.credentials ?? generateLocalCredentials();
  // The engine's socket lives in a directory only root can enter (mkdtemp makes it 0700).
  const socketDir = await mkdtemp(join(tmpdir(), 's3-endpoint-'));
  const serverOptions = {
    directory,
    silent: true,
    // Path-style only: a bucket name is never read from the Host header.
    vhostBuckets: false,
    configureBuckets: options.buckets.map((name) => ({ name })),
  };
  const { NODE_OPTIONS: _inherited, ...env } = process.env;
  // The credentials travel in the environment, which other users cannot read (/proc/<pid>/environ is the owner's).
  const child = spawn(process.execPath, ['--openssl-legacy-provider', '--import', import.meta.resolve('tsx'), serverEntry, socketDir], {
    env: {
      ...env,
      S3_SERVER_OPTIONS: JSON.stringify(serverOptions),
      S3_SERVER_SOCKET: join(socketDir, 's3rver.sock'),
      S3_SERVER_PORT: String(options.port ?? 0),
      S3_SERVER_ACCESS_KEY_ID: credentials.accessKeyId,
      S3_SERVER_SECRET_ACCESS_KEY: credentials.secretAccessKey,
    },
    stdio: ['pipe', 'pipe', 'pipe'],
    // Its own process group: a Ctrl-C meant for `npm start` must not take storage away before the stack has cleaned up.
    detached: true,
  });

  let port: number;
  try {
    port = await readPort(child, options.startTimeoutMs ?? 15_000);
  } catch (err) {
    child.kill('SIGKILL');
    await rm(socketDir, { recursive: true, force: true });
    if (ownsDirectory) await rm(directory, { recursive: true, force: true });
    throw err;
  }

  let closed = false;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    directory,
    credentials,
    pid: child.pid!,
    async close() {
      if (closed) return;
      closed = true;
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGTERM');
        await exited;
      }
      await rm(socketDir, { recursive: true, force: true });
      if (ownsDirectory) await rm(directory, { recursive: true, force: true });
    },
  };
}

function readPort(child: ChildProcess, timeoutMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => fail(new Error(`s3rver did not start within ${timeoutMs} ms: ${stderr.trim()}`)), timeoutMs);
    const fail = (err: Error) => {
      clearTimeout(timer);
      reject(err);
    };
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
      if (stderr.length < 8_000) stderr += chunk;
    });
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      stdout += chunk;
      const line = stdout.split('\n')[0];
      if (stdout.includes('\n') && line) {
        clearTimeout(timer);
        try {
          resolve((JSON.parse(line) as { port: number }).port);
        } catch {
          reject(new Error(`s3rver printed something unexpected: ${line}`));
        }
      }
    });
    child.once('error', fail);
    child.once('exit', (code) => fail(new Error(`s3rver exited (code ${code}) before listening: ${stderr.trim()}`)));
  });
}
