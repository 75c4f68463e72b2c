/**
 * The local S3 endpoint's own process (started by s3-endpoint.ts): s3rver on a
 * Unix socket in a root-only directory, and in front of it, on 127.0.0.1, the
 * SigV4 front that admits only requests signed with the stack's credentials.
 * s3rver itself checks no V4 signature (only that the key id is known), so it
 * is never reachable but through the front; its well-known S3RVER key is
 * revoked and the stack's key registered in its place.
 *
 * Input (environment): S3_SERVER_OPTIONS (s3rver options as JSON),
 * S3_SERVER_SOCKET, S3_SERVER_PORT, S3_SERVER_ACCESS_KEY_ID,
 * S3_SERVER_SECRET_ACCESS_KEY. Prints {"port": N} once it answers; exits when
 * stdin closes (the parent is gone) or on SIGTERM.
 */
import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import { startSignedProxy } from './sigv4';

interface S3rverAccountModule {
  registry: Map<string, unknown>;
  DUMMY_ACCOUNT: { createKeyPair(id: string, secret: string): void; revokeAccessKey(id: string): void };
}
interface S3rverInstance {
  configureBuckets(): Promise<void>;
  callback(): Parameters<typeof createServer>[1];
}

function need(name: string): string {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
}

async function main(): Promise<void> {
  const require = createRequire(import.meta.url);
  const S3rver = require('s3rver') as new (options: object) => S3rverInstance;
  // The same module instance s3rver's authentication middleware reads.
  const accounts = require('s3rver/lib/models/account') as S3rverAccountModule;
  const credentials = { accessKeyId: need('S3_SERVER_ACCESS_KEY_ID'), secretAccessKey: need('S3_SERVER_SECRET_ACCESS_KEY') };
  accounts.DUMMY_ACCOUNT.revokeAccessKey('S3RVER');
  accounts.DUMMY_ACCOUNT.createKeyPair(credentials.accessKeyId, credentials.secretAccessKey);

  const server = new S3rver(JSON.parse(need('S3_SERVER_OPTIONS')) as object);
  await server.configureBuckets();
  const socket = need('S3_SERVER_SOCKET');
  const engine = createServer(server.callback());
  await new Promise<void>((resolve, reject) => {
    engine.once('error', reject);
    engine.listen(socket, () => resolve());
  });
  const front = await startSignedProxy({
    // s3fs uploads parts of up to 25 MB (its multipart threshold) with a signed hash: read them whole, then check.
    policy: { credentials, service: 's3', protocol: 'xml', maxBodyBytes: 64 * 1024 * 1024 },
    upstream: { socketPath: socket },
    port: Number(process.env.S3_SERVER_PORT ?? 0),
  });
  process.stdout.write(JSON.stringify({ port: front.port }) + '\n');
}

process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
process.on('SIGTERM', () => process.exit(0));
main().catch((err: Error) => {
  process.stderr.write(`${err.stack ?? err.message}\n`);
  process.exit(1);
});
