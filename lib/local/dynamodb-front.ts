/**
 * DynamoDB Local's own namespaces (started by dynamodb-local.ts under
 * `unshare --net --pid --fork`): this process is the first of a PID namespace
 * and lives in a network namespace that has only a loopback. It brings that
 * loopback up, starts DynamoDB Local (Java) on it, and serves the SigV4 front
 * on a listening socket the parent made on the HOST's 127.0.0.1 and handed over
 * (sockets keep the namespace they were made in). So the only way to the
 * engine, which checks no signature, is through the front.
 *
 * Input (environment): DYNAMODB_FRONT_ACCESS_KEY_ID, DYNAMODB_FRONT_SECRET_ACCESS_KEY,
 * DYNAMODB_FRONT_JAR_DIR; the listening socket arrives as the first IPC message.
 * Sends {"ready": true} once the front is listening. Exits when the parent is
 * gone (IPC closes) or on SIGTERM; the kernel then kills the rest of the
 * namespace (Java).
 */
import { execFileSync, spawn } from 'node:child_process';
import type { Server } from 'node:net';
import { startSignedProxy } from './sigv4';

/** The engine's port: nothing else listens in this network namespace. */
const enginePort = 8000;

/**
 * The engine lives minutes and answers hundreds of requests, not millions: the
 * JVM's defaults (C2 compiling hot paths on several threads, a parallel GC)
 * spent more CPU than the requests themselves. With the quick compiler only,
 * one compiler thread and the serial GC, one stack test file's engine used
 * 7.8 s of CPU instead of 19.4 (test/e2e/lifecycle.test.ts, same machine), it
 * is ready sooner, and warmed-up requests still cost less each than under the
 * defaults (3,000 in a row: 10 s of CPU against 14).
 */
const engineJvmOptions = ['-XX:TieredStopAtLevel=1', '-XX:CICompilerCount=1', '-XX:+UseSerialGC'];

function need(name: string): string {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
}

async function main(): Promise<void> {
  const credentials = { accessKeyId: need('DYNAMODB_FRONT_ACCESS_KEY_ID'), secretAccessKey: need('DYNAMODB_FRONT_SECRET_ACCESS_KEY') };
  const jarDir = need('DYNAMODB_FRONT_JAR_DIR');
  const listening = new Promise<Server>((resolve) => process.once('message', (_m, handle) => resolve(handle as Server)));
  execFileSync('ip', ['link', 'set', 'lo', 'up']);
  const java = spawn(
    'java',
    [
      ...engineJvmOptions,
      `-Djava.library.path=${jarDir}/DynamoDBLocal_lib`,
      '-jar',
      `${jarDir}/DynamoDBLocal.jar`,
      '-inMemory',
      '-sharedDb',
      '-port',
      String(enginePort),
    ],
    {
      cwd: jarDir,
      stdio: ['ignore', 'inherit', 'inherit'],
    },
  );
  java.on('exit', (code, signal) => {
    process.stderr.write(`DynamoDB Local exited (${signal ?? code})\n`);
    process.exit(1);
  });
  await startSignedProxy({
    // BatchWriteItem and TransactWriteItems take up to 16 MB.
    policy: { credentials, service: 'dynamodb', protocol: 'json', maxBodyBytes: 16 * 1024 * 1024 },
    upstream: { host: '127.0.0.1', port: enginePort },
    listenOn: await listening,
  });
  process.send!({ ready: true });
}

const stop = () => process.exit(0);
process.on('disconnect', stop);
process.on('SIGTERM', stop);
// First process of its PID namespace: signals without a handler would be ignored, and a Ctrl-C meant for npm start is not for it.
process.on('SIGINT', () => undefined);
main().catch((err: Error) => {
  process.stderr.write(`${err.stack ?? err.message}\n`);
  process.exit(1);
});
