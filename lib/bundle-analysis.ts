/**
 * Bundles handlers exactly as the stacks do (see handler-bundling.ts) and
 * reads what each bundle contains: its size and the AWS SDK operations that
 * survived tree-shaking, i.e. every AWS call the handler can make. The
 * operations are checked against the IAM grants in the stack tests.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { gzipSync } from 'node:zlib';
import { build } from 'esbuild';
import { handlerBuildOptions, handlersBuildOptions, hostAgentAlias } from './bundling';
import { handlerEntry, repoRoot } from './paths';

export interface HandlerBundle {
  handler: string;
  /** Minified index.mjs, what Lambda loads. */
  bytes: number;
  gzipBytes: number;
  sourceMapBytes: number;
  /** SDK operations in the bundle, as `<client>:<Operation>` (e.g. `dynamodb:GetItem`). */
  sdkOperations: string[];
  /** The npm packages with code in the bundle (`@aws-sdk/client-s3`, `zod`, ...), sorted. */
  packages: string[];
}

/** The package a bundled input belongs to (its last node_modules segment), or undefined for the project's own files. */
function packageOf(path: string): string | undefined {
  const at = path.lastIndexOf('node_modules/');
  if (at < 0) return undefined;
  const [scope, name] = path.slice(at + 'node_modules/'.length).split('/');
  return scope?.startsWith('@') ? `${scope}/${name}` : scope;
}

const commandFile = /node_modules\/@aws-sdk\/client-([a-z0-9-]+)\/dist-(?:es|cjs)\/commands\/(\w+)Command\.js$/;

/** Bundles handlers into `outDir/<handler>/index.mjs`, in one build as the stacks do, and describes each. */
export async function bundleHandlers(handlers: readonly string[], outDir: string): Promise<HandlerBundle[]> {
  const result = await build(handlersBuildOptions(handlers, outDir, (h) => `${h}/index`));
  return handlers.map((handler) => {
    const outfile = join(outDir, handler, 'index.mjs');
    // The metafile names outputs relative to the working directory.
    const output = result.metafile!.outputs[relative(process.cwd(), outfile)];
    if (!output) throw new Error(`esbuild produced no output for ${handler}`);
    const sdkOperations = new Set<string>();
    const packages = new Set<string>();
    for (const [path, input] of Object.entries(output.inputs)) {
      if (input.bytesInOutput === 0) continue;
      const match = commandFile.exec(path);
      if (match) sdkOperations.add(`${match[1]}:${match[2]}`);
      const pkg = packageOf(path);
      if (pkg) packages.add(pkg);
    }
    const code = readFileSync(outfile);
    return {
      handler,
      bytes: code.length,
      gzipBytes: gzipSync(code, { level: 9 }).length,
      sourceMapBytes: statSync(`${outfile}.map`).size,
      sdkOperations: [...sdkOperations].sort(),
      packages: [...packages].sort(),
    };
  });
}

/**
 * IAM actions an SDK operation needs. Most are `<service>:<Operation>`; the
 * exceptions are S3's listing/multipart calls and DynamoDB transactions,
 * which IAM authorizes per item action, and clients whose IAM prefix is not
 * their package's name (EventBridge is `events:`, CloudWatch Logs `logs:`).
 */
function iamActionsFor(sdkOperation: string): string[] {
  const [client, operation] = sdkOperation.split(':') as [string, string];
  const special: Record<string, string[]> = {
    's3:ListObjectsV2': ['s3:ListBucket'],
    's3:ListObjects': ['s3:ListBucket'],
    's3:HeadBucket': ['s3:ListBucket'],
    's3:HeadObject': ['s3:GetObject'],
    's3:DeleteObjects': ['s3:DeleteObject'],
    's3:CopyObject': ['s3:GetObject', 's3:PutObject'],
    's3:CreateMultipartUpload': ['s3:PutObject'],
    's3:UploadPart': ['s3:PutObject'],
    's3:CompleteMultipartUpload': ['s3:PutObject'],
    'dynamodb:TransactGetItems': ['dynamodb:GetItem'],
    'dynamodb:TransactWriteItems': ['dynamodb:ConditionCheckItem', 'dynamodb:PutItem', 'dynamodb:UpdateItem', 'dynamodb:DeleteItem'],
  };
  // Clients whose IAM service prefix differs from their package name.
  const iamPrefix: Record<string, string> = { eventbridge: 'events', 'cloudwatch-logs': 'logs', 'auto-scaling': 'autoscaling' };
  return special[sdkOperation] ?? [`${iamPrefix[client] ?? client}:${operation}`];
}

/** What a handler's own code (not the SDK's internals) calls, after tree-shaking. */
export interface HandlerCalls {
  handler: string;
  /** DynamoDB IAM actions per table definition id, and the indexes it names. */
  tables: Map<string, { actions: Set<string>; indexes: Set<string> }>;
  /** Non-DynamoDB IAM actions (ssm:*, s3:*, ...). */
  otherActions: Set<string>;
}

/** DocumentClient commands and the DynamoDB operation each one sends. */
const documentCommands: Record<string, string[]> = {
  Get: ['dynamodb:GetItem'],
  Put: ['dynamodb:PutItem'],
  Update: ['dynamodb:UpdateItem'],
  Delete: ['dynamodb:DeleteItem'],
  Query: ['dynamodb:Query'],
  Scan: ['dynamodb:Scan'],
  BatchGet: ['dynamodb:BatchGetItem'],
  BatchWrite: ['dynamodb:BatchWriteItem'],
  TransactGet: iamActionsFor('dynamodb:TransactGetItems'),
  TransactWrite: iamActionsFor('dynamodb:TransactWriteItems'),
  ExecuteStatement: ['dynamodb:PartiQLSelect', 'dynamodb:PartiQLInsert', 'dynamodb:PartiQLUpdate', 'dynamodb:PartiQLDelete'],
};

/** `config().tables.<key>` and `<key>Table` (tables.ts) name a table by its id with a lower-case first letter. */
const lowerFirst = (id: string) => id.charAt(0).toLowerCase() + id.slice(1);

function sdkClientOf(operation: string): string | undefined {
  for (const client of ['dynamodb', 'ssm', 's3', 'eventbridge', 'cloudwatch-logs', 'ec2', 'sqs', 'sts', 'auto-scaling', 'ecr', 'cloudwatch']) {
    if (existsSync(join(repoRoot, 'node_modules', '@aws-sdk', `client-${client}`, 'dist-es', 'commands', `${operation}Command.js`))) return client;
  }
  return undefined;
}

/**
 * Reads an unminified bundle of `handler` module by module (esbuild marks each
 * with a `// <path>` line) and, in the project's own modules, collects the SDK
 * commands constructed and the tables and indexes named next to them.
 */
export function analyzeHandlerCalls(handler: string, tableIndexes: Record<string, readonly string[]>): Promise<HandlerCalls> {
  return analyzeCalls(handler, handlerEntry(handler), tableIndexes);
}

/** The same analysis for any entry point of the project (e.g. the host daemon); `label` names it in errors. */
export async function analyzeCalls(label: string, entry: string, tableIndexes: Record<string, readonly string[]>): Promise<HandlerCalls> {
  const handler = label;
  const tableIdByKey = Object.fromEntries(Object.keys(tableIndexes).map((id) => [lowerFirst(id), id]));
  const keys = Object.keys(tableIdByKey).join('|');
  const result = await build({
    ...handlerBuildOptions(entry, join('/tmp', label, 'index.mjs')),
    // Host programs are bundled with ssh2 swapped for its stand-in, as they ship.
    alias: hostAgentAlias,
    minify: false,
    sourcemap: false,
    metafile: false,
    write: false,
  });
  const text = result.outputFiles[0]!.text;
  const calls: HandlerCalls = { handler, tables: new Map(), otherActions: new Set() };
  const sections = text.split(/^\/\/ (?=\S+\.[cm]?[jt]s$)/m);
  for (const section of sections) {
    const path = section.slice(0, section.indexOf('\n'));
    if (!path.startsWith('lambdas/') && !path.startsWith('host-agent/') && !path.startsWith('contract/')) continue;
    // Generic client helpers (e.g. queryAll) name no table: their callers' modules carry the call.
    if (path.startsWith('lambdas/shared/clients/')) continue;
    const actions = new Set<string>();
    // Transaction items name their own table and action: `Put: { TableName: config().tables.<key>`.
    // Those pairs are exact; the table is not counted for the module's other calls.
    const transactItem = /\b(Put|Update|Delete|ConditionCheck):\s*\{\s*TableName:\s*config\d*\(\)\.tables\.(\w+)\b/g;
    const transactActions: Record<string, string> = {
      Put: 'dynamodb:PutItem',
      Update: 'dynamodb:UpdateItem',
      Delete: 'dynamodb:DeleteItem',
      ConditionCheck: 'dynamodb:ConditionCheckItem',
    };
    for (const m of section.matchAll(transactItem)) {
      const id = tableIdByKey[m[2]!];
      if (!id) throw new Error(`${handler}: ${path} names config().tables.${m[2]}, which is no table definition`);
      if (!calls.tables.has(id)) calls.tables.set(id, { actions: new Set(), indexes: new Set() });
      calls.tables.get(id)!.actions.add(transactActions[m[1]!]!);
    }
    const outsideTransactions = section.replace(transactItem, '');
    const precise = outsideTransactions !== section;
    if (/\bqueryAll\(/.test(section)) actions.add('dynamodb:Query');
    for (const m of section.matchAll(/\bnew (\w+?)Command\d*\(/g)) {
      const name = m[1]!;
      // A module whose transactions name their items: TransactWrite is counted item by item above.
      if (name === 'TransactWrite' && precise) continue;
      const documentActions = documentCommands[name];
      if (documentActions) {
        for (const a of documentActions) actions.add(a);
        continue;
      }
      const client = sdkClientOf(name);
      if (!client) throw new Error(`${handler}: ${path} constructs ${name}Command, which no known SDK client defines`);
      for (const a of iamActionsFor(`${client}:${name}`)) actions.add(a);
    }
    const tableIds = new Set<string>();
    for (const m of outsideTransactions.matchAll(/\.tables\.(\w+)\b/g)) {
      const id = tableIdByKey[m[1]!];
      if (!id) throw new Error(`${handler}: ${path} names config().tables.${m[1]}, which is no table definition`);
      tableIds.add(id);
    }
    const indexes = new Map<string, Set<string>>();
    // Indexes are named, never numbered: indexName(<key>Table, '<name>').
    for (const m of section.matchAll(new RegExp(`\\bindexName\\d*\\(\\s*(${keys})Table\\d*\\s*,\\s*["']([^"']+)["']\\s*\\)`, 'g'))) {
      const tableId = tableIdByKey[m[1]!]!;
      const name = m[2]!;
      if (!tableIndexes[tableId]?.includes(name)) throw new Error(`${handler}: ${path} names index ${name} of ${tableId}, which does not exist`);
      if (!indexes.has(tableId)) indexes.set(tableId, new Set());
      indexes.get(tableId)!.add(name);
    }
    if (/\.indexes\[\d+\]/.test(section)) throw new Error(`${handler}: ${path} refers to an index by position; use indexName(table, name)`);
    for (const action of actions) {
      if (!action.startsWith('dynamodb:')) {
        calls.otherActions.add(action);
        continue;
      }
      if (tableIds.size === 0) {
        if (precise) continue; // its only tables are in transaction items
        throw new Error(`${handler}: ${path} calls ${action} but names no table from config().tables`);
      }
      for (const tableId of tableIds) {
        if (!calls.tables.has(tableId)) calls.tables.set(tableId, { actions: new Set(), indexes: new Set() });
        const entry = calls.tables.get(tableId)!;
        entry.actions.add(action);
        for (const index of indexes.get(tableId) ?? []) entry.indexes.add(index);
      }
    }
  }
  return calls;
}
