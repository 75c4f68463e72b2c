/**
 * A local S3 endpoint for the local stack and tests: s3rver on loopback,
 * credentials S3RVER/S3RVER, path-style requests. The AWS SDK, the AWS CLI and
 * s3fs all talk to it.
 *
 * s3rver runs in its own Node process, for two reasons: it signs list
 * continuation tokens with DES, which Node 20's OpenSSL 3 only offers with
 * --openssl-legacy-provider (without it any listing of more than 1,000 keys
 * answers 500); and a server on its own event loop does not compete with the
 * client being measured or tested.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** s3rver's fixed credentials (it checks signatures against them). */
export const localS3Credentials = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } as const;

export interface S3EndpointOptions {
  /** Port on 127.0.0.1; 0 picks a free one. @default 0 */
  port?: number;
  /** Where s3rver keeps objects. @default a fresh temporary directory, removed on close */
  directory?: string;
  /** Buckets created before the endpoint answers. */
  buckets: string[];
  /** Bound on the wait for the server to listen. @default 15000 */
  startTimeoutMs?: number;
}

export interface S3Endpoint {
  /** e.g. http://127.0.0.1:4569 */
  url: string;
  port: number;
  directory: string;
  /** The s3rver process (e.g. to read its CPU time). */
  pid: number;
  close(): Promise<void>;
}

/** Runs inside the child: starts s3rver, prints its port, exits when the parent goes (stdin closes). */
const serverScript = `
const S3rver = require(process.env.S3RVER_MODULE);
const server = new S3rver(JSON.parse(process.env.S3RVER_OPTIONS));
server.run().then(
  (address) => process.stdout.write(JSON.stringify({ port: address.port }) + '\\n'),
  (err) => { console.error(err && err.stack || String(err)); process.exit(1); },
);
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
process.on('SIGTERM', () => process.exit(0));
`;

/**
 * Starts s3rver on 127.0.0.1 with the given buckets.
 *
 * @example
 *   const s3 = await startS3Endpoint({ buckets: ['sandbox-storage'] });
 *   // AWS_ENDPOINT_URL_S3=<s3.url> S3_FORCE_PATH_STYLE=true AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER
 *   await s3.close();
 */
export async function startS3Endpoint(options: S3EndpointOptions): Promise<S3Endpoint> {
  const ownsDirectory = options.directory === undefined;
  const directory = options.directory ?? (await mkdtemp(join(tmpdir(), 's3rver-')));
  const serverOptions = {
    address: '127.0.0.1',
    port: options.port ?? 0,
    directory,
    silent: true,
    // Path-style only: a bucket name is never read from the Host header.
    vhostBuckets: false,
    configureBuckets: options.buckets.map((name) => ({ name })),
  };
  const { NODE_OPTIONS: _inherited, ...env } = process.env;
  const child = spawn(process.execPath, ['--openssl-legacy-provider', '-e', serverScript], {
    env: {
      ...env,
      S3RVER_MODULE: createRequire(import.meta.url).resolve('s3rver'),
      S3RVER_OPTIONS: JSON.stringify(serverOptions),
    },
    stdio: ['pipe', 'pipe', 'pipe'],
  });

  let port: number;
  try {
    port = await readPort(child, options.startTimeoutMs ?? 15_000);
  } catch (err) {
    child.kill('SIGKILL');
    if (ownsDirectory) await rm(directory, { recursive: true, force: true });
    throw err;
  }

  let closed = false;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    directory,
    pid: child.pid!,
    async close() {
      if (closed) return;
      closed = true;
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGTERM');
        await exited;
      }
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
