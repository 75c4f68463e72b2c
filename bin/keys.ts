/**
 * `npm run keys`: the admin command for tenant API keys. Creates (the key is
 * printed once and never stored), lists and revokes keys, against the running
 * local stack (`npm start`, found through .local/stack.json) or a deployed
 * stage (tables from its CloudFormation outputs).
 *
 *   npm run keys -- create --tenant acme [--expires 2027-01-01T00:00:00Z] [--description "ci"]
 *   npm run keys -- list   --tenant acme [--json]
 *   npm run keys -- revoke --tenant acme --key-id k3j9x0a1b2
 *   npm run keys -- create --tenant acme --stage dev [--region eu-west-1]
 */
import { APIGatewayClient, CreateApiKeyCommand, CreateUsagePlanKeyCommand, GetApiKeysCommand } from '@aws-sdk/client-api-gateway';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import type { ApiKeyRecord } from '../lambdas/shared/api-keys';
import type { LocalStackState } from '../lib/local/stack';
import { tenantIdPattern } from '../contract/ids';
import { stackNames } from '../lib/stack-names';

/** A failure the operator can act on; `exitCode` 2 is a usage error, 1 anything else. */
export class KeysCliError extends Error {
  constructor(
    message: string,
    readonly exitCode: 1 | 2 = 1,
  ) {
    super(message);
    this.name = 'KeysCliError';
  }
}

export const usage = `Usage: npm run keys -- <command> [options]
   or: sbx keys <command> [options]

Commands:
  create  --tenant <id> [--expires <ISO 8601 time>] [--description <text>]
          Creates a key and prints it once; only its SHA-256 hash is stored.
  list    --tenant <id> [--json]
          Lists the tenant's keys (ids, dates, state); never the keys themselves.
  revoke  --tenant <id> --key-id <id>
          Revokes a key. Cached authorizer answers may accept it until they expire.

Where:
  --stage local        the running \`npm start\` stack (default), found through
                       .local/stack.json in this directory or a parent
                       (--state-file <path> to read another)
  --stage <env>        a deployed stage: tables from the outputs of CloudFormation
                       stack EphemeralSandbox-<env>-Stateful (--region, or AWS_REGION)
  --table <name>       the ApiKeys table by name (skips CloudFormation; with --stage <env>)
  --usage-key <value>  (deployed create) the API Gateway usage-plan key value to return
                       as usageIdentifierKey; by default the tenant's own key
                       ephemeral-sandbox-<env>-<tenant> is created or reused and attached
                       to the stage's usage plan
  --help               this text

Exit codes: 0 done, 1 failed (message on stderr), 2 bad arguments.`;

export type KeysCommand =
  | { command: 'help' }
  | {
      command: 'create' | 'list' | 'revoke';
      tenantId: string;
      stage: string;
      keyId?: string;
      expiresAt?: string;
      description?: string;
      json: boolean;
      stateFile?: string;
      table?: string;
      region?: string;
      usageKey?: string;
    };

const keyIdPattern = /^[a-z0-9]{10}$/;
const stagePattern = /^[A-Za-z0-9][A-Za-z0-9-]{0,31}$/;

/** Parses the command line (without `node script`); throws KeysCliError (exit 2) with what is wrong. */
export function parseKeysArgs(argv: readonly string[], now = Date.now()): KeysCommand {
  let parsed: ReturnType<typeof parse>;
  function parse() {
    return parseArgs({
      args: [...argv],
      allowPositionals: true,
      strict: true,
      options: {
        tenant: { type: 'string' },
        'key-id': { type: 'string' },
        expires: { type: 'string' },
        description: { type: 'string' },
        stage: { type: 'string' },
        'state-file': { type: 'string' },
        table: { type: 'string' },
        region: { type: 'string' },
        'usage-key': { type: 'string' },
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  }
  try {
    parsed = parse();
  } catch (err) {
    throw new KeysCliError(`${(err as Error).message}\n\n${usage}`, 2);
  }
  const { values: v, positionals } = parsed;
  if (v.help || positionals[0] === 'help') return { command: 'help' };
  const [command, ...extra] = positionals;
  if (command === undefined) throw new KeysCliError(`a command is required: create, list or revoke\n\n${usage}`, 2);
  if (command !== 'create' && command !== 'list' && command !== 'revoke') {
    throw new KeysCliError(`unknown command "${command}": use create, list or revoke\n\n${usage}`, 2);
  }
  if (extra.length > 0) throw new KeysCliError(`unexpected argument "${extra[0]}"; options start with --`, 2);

  const bad = (message: string) => new KeysCliError(message, 2);
  if (v.tenant === undefined) throw bad(`${command} needs --tenant <id>`);
  if (!tenantIdPattern.test(v.tenant)) throw bad(`--tenant "${v.tenant}" must be 1-63 lowercase letters, digits or -, starting with a letter or digit`);
  const stage = v.stage ?? 'local';
  if (!stagePattern.test(stage)) throw bad(`--stage "${stage}" is not an environment name (letters, digits, -)`);
  const onlyFor = (option: string, allowed: string) => {
    throw bad(`--${option} is only for ${allowed}`);
  };
  if (v['key-id'] !== undefined && command !== 'revoke') onlyFor('key-id', 'revoke');
  if (v.expires !== undefined && command !== 'create') onlyFor('expires', 'create');
  if (v.description !== undefined && command !== 'create') onlyFor('description', 'create');
  if (v.json && command !== 'list') onlyFor('json', 'list');
  if (v['state-file'] !== undefined && stage !== 'local') onlyFor('state-file', '--stage local');
  if (v.table !== undefined && stage === 'local') onlyFor('table', 'a deployed --stage (the local stack names its own tables)');
  if (v.region !== undefined && stage === 'local') onlyFor('region', 'a deployed --stage');
  if (v['usage-key'] !== undefined && (stage === 'local' || command !== 'create')) onlyFor('usage-key', 'create on a deployed --stage');

  let keyId: string | undefined;
  if (command === 'revoke') {
    if (v['key-id'] === undefined) throw bad('revoke needs --key-id <id> (see the ids with: list --tenant <id>)');
    if (!keyIdPattern.test(v['key-id'])) throw bad(`--key-id "${v['key-id']}" is not a key id (10 lowercase letters or digits, as list shows)`);
    keyId = v['key-id'];
  }
  let expiresAt: string | undefined;
  if (v.expires !== undefined) {
    // An ISO 8601 time with its zone, so the moment is the same wherever the command runs.
    const iso = /^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,3})?)?(Z|[+-]\d{2}:\d{2}))?$/;
    const ms = Date.parse(v.expires);
    if (!iso.test(v.expires) || Number.isNaN(ms)) throw bad(`--expires "${v.expires}" is not an ISO 8601 time such as 2027-01-01T00:00:00Z`);
    if (ms <= now) throw bad(`--expires ${v.expires} is in the past`);
    expiresAt = new Date(ms).toISOString();
  }
  if (v.description !== undefined) {
    if (v.description.length === 0 || v.description.length > 256) throw bad('--description must be 1-256 characters');
    // biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point: a description must not hold any
    if (/[\u0000-\u001f\u007f]/.test(v.description)) throw bad('--description must not contain control characters');
  }
  if (v.table !== undefined && !/^[A-Za-z0-9_.-]{3,255}$/.test(v.table)) throw bad(`--table "${v.table}" is not a DynamoDB table name`);
  if (v.region !== undefined && !/^[a-z]{2}(-[a-z]+)+-\d$/.test(v.region)) throw bad(`--region "${v.region}" is not an AWS region name`);
  if (v['usage-key'] !== undefined && !/^[A-Za-z0-9]{20,128}$/.test(v['usage-key'])) {
    throw bad('--usage-key must be an API Gateway API key value (20-128 letters and digits)');
  }
  return {
    command,
    tenantId: v.tenant,
    stage,
    json: v.json ?? false,
    ...(keyId ? { keyId } : {}),
    ...(expiresAt ? { expiresAt } : {}),
    ...(v.description !== undefined ? { description: v.description } : {}),
    ...(v['state-file'] !== undefined ? { stateFile: v['state-file'] } : {}),
    ...(v.table !== undefined ? { table: v.table } : {}),
    ...(v.region !== undefined ? { region: v.region } : {}),
    ...(v['usage-key'] !== undefined ? { usageKey: v['usage-key'] } : {}),
  };
}

/** Where the admin command works: the ApiKeys table and how to reach it. */
export interface KeysTarget {
  stage: string;
  table: string;
  region: string;
  /** Environment for the AWS SDK (endpoint, local credentials); empty for AWS itself. */
  env: Record<string, string>;
  /** Environment variables to clear (a real profile must not reach DynamoDB Local). */
  unset: string[];
  /** How long a revoked key may still pass (authorizer cache), when known. */
  description: string;
}

/**
 * The running local stack's state file: `.local/stack.json` in the working
 * directory or one of its parents, else next to this program or above it
 * (bin/keys.ts in the repository, sdk/dist/keys.js when `sbx keys` runs it).
 * Without one, the repository's path, for the error that says to start the stack.
 */
export function defaultStateFile(cwd = process.cwd()): string {
  const here = dirname(fileURLToPath(import.meta.url));
  for (const start of [resolve(cwd), here]) {
    for (let dir = start; ; dir = dirname(dir)) {
      const candidate = join(dir, '.local', 'stack.json');
      if (existsSync(candidate)) return candidate;
      if (dirname(dir) === dir) break;
    }
  }
  return join(here, '..', '.local', 'stack.json');
}

/** Reads the running local stack's state file; errors say how to start it. */
export function localTarget(stateFile = defaultStateFile(), isAlive = pidAlive): KeysTarget {
  if (!existsSync(stateFile)) {
    throw new KeysCliError(`no local stack is running (${stateFile} does not exist): start it with \`npm start\`, or pass --stage <env> for a deployed stage`);
  }
  let state: LocalStackState;
  try {
    state = JSON.parse(readFileSync(stateFile, 'utf8')) as LocalStackState;
  } catch (err) {
    throw new KeysCliError(`${stateFile} is not valid JSON (${(err as Error).message}); restart \`npm start\` to rewrite it`);
  }
  const table = state?.tables?.API_KEYS_TABLE;
  if (typeof state?.pid === 'number' && !isAlive(state.pid)) {
    throw new KeysCliError(`the local stack that wrote ${stateFile} (pid ${state.pid}) is no longer running: start it again with \`npm start\``);
  }
  const credentials = state?.credentials;
  if (
    typeof state?.dynamodbEndpoint !== 'string' ||
    typeof table !== 'string' ||
    typeof credentials?.accessKeyId !== 'string' ||
    typeof credentials.secretAccessKey !== 'string'
  ) {
    throw new KeysCliError(`${stateFile} lacks dynamodbEndpoint, credentials or tables.API_KEYS_TABLE; restart \`npm start\` to rewrite it`);
  }
  return {
    stage: 'local',
    table,
    region: state.region || 'us-east-1',
    env: {
      AWS_ENDPOINT_URL_DYNAMODB: state.dynamodbEndpoint,
      // The stack's own credentials (its DynamoDB front refuses any other); they also keep a real profile out.
      AWS_ACCESS_KEY_ID: credentials.accessKeyId,
      AWS_SECRET_ACCESS_KEY: credentials.secretAccessKey,
    },
    unset: ['AWS_SESSION_TOKEN', 'AWS_PROFILE'],
    description: `local stack ${state.url} (DynamoDB Local ${state.dynamodbEndpoint}, table ${table})`,
  };
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Reads a stack's outputs (CloudFormation DescribeStacks); injected in tests. */
export type StackOutputsReader = (stackName: string, region: string) => Promise<Record<string, string>>;

export const cloudFormationOutputs: StackOutputsReader = async (stackName, region) => {
  const { CloudFormationClient, DescribeStacksCommand } = await import('@aws-sdk/client-cloudformation');
  const client = new CloudFormationClient({ region });
  try {
    const out = await client.send(new DescribeStacksCommand({ StackName: stackName }));
    const stack = out.Stacks?.[0];
    if (!stack) throw new KeysCliError(`CloudFormation stack ${stackName} not found in ${region}`);
    return Object.fromEntries((stack.Outputs ?? []).filter((o) => o.OutputKey && o.OutputValue).map((o) => [o.OutputKey!, o.OutputValue!]));
  } catch (err) {
    if (err instanceof KeysCliError) throw err;
    const e = err as Error;
    if (e.name === 'ValidationError' && /does not exist/.test(e.message)) {
      throw new KeysCliError(`CloudFormation stack ${stackName} does not exist in ${region}: deploy the stage (npx cdk deploy -c env=<env>) or pass --region`);
    }
    throw new KeysCliError(`reading CloudFormation stack ${stackName} in ${region} failed: ${e.name}: ${e.message}`);
  } finally {
    client.destroy();
  }
};

/** The stage's stack names (lib/stack-names.ts, which the CDK app uses too). */
export async function stageStackNames(stage: string): Promise<{ stateful: string; service: string }> {
  return stackNames(stage);
}

/** Output key of the ApiKeys table in the stateful stack (lib/stateful-stack.ts: `<table id>TableName`). */
export const apiKeysTableOutput = 'ApiKeysTableName';

export async function deployedTarget(
  cmd: { stage: string; table?: string; region?: string },
  readOutputs: StackOutputsReader = cloudFormationOutputs,
  names = stageStackNames,
): Promise<KeysTarget> {
  const region = cmd.region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION;
  if (!region) throw new KeysCliError(`--stage ${cmd.stage} needs a region: pass --region or set AWS_REGION`, 2);
  let table = cmd.table;
  if (!table) {
    const { stateful } = await names(cmd.stage);
    const outputs = await readOutputs(stateful, region);
    table = outputs[apiKeysTableOutput];
    if (!table) {
      throw new KeysCliError(
        `stack ${stateful} has no output ${apiKeysTableOutput} (outputs: ${Object.keys(outputs).join(', ') || 'none'}); pass --table <name>`,
      );
    }
  }
  return { stage: cmd.stage, table, region, env: {}, unset: [], description: `stage ${cmd.stage} (${region}, table ${table})` };
}

/**
 * The tenant's own API Gateway key in the stage's usage plan (created or
 * reused), whose value the authorizer returns as usageIdentifierKey, so
 * throttling and quota count per tenant.
 */
export async function tenantUsageKey(
  stage: string,
  tenantId: string,
  region: string,
  readOutputs: StackOutputsReader = cloudFormationOutputs,
): Promise<string> {
  const { service } = await stageStackNames(stage);
  const planId = (await readOutputs(service, region)).UsagePlanId;
  if (!planId) throw new KeysCliError(`stack ${service} has no output UsagePlanId; pass --usage-key <value> instead`);
  const client = new APIGatewayClient({ region });
  const name = `ephemeral-sandbox-${stage}-${tenantId}`;
  try {
    const found = await client.send(new GetApiKeysCommand({ nameQuery: name, includeValues: true, limit: 500 }));
    let key: { id?: string; value?: string } | undefined = (found.items ?? []).find((k) => k.name === name);
    key ??= await client.send(
      new CreateApiKeyCommand({ name, enabled: true, description: `Ephemeral Sandbox ${stage}: usage-plan key of tenant ${tenantId}` }),
    );
    try {
      await client.send(new CreateUsagePlanKeyCommand({ usagePlanId: planId, keyId: key.id, keyType: 'API_KEY' }));
    } catch (err) {
      if ((err as Error).name !== 'ConflictException') throw err; // already in the plan
    }
    if (!key.value) throw new KeysCliError(`API Gateway returned key ${key.id} without its value`);
    return key.value;
  } catch (err) {
    if (err instanceof KeysCliError) throw err;
    throw new KeysCliError(`setting up the usage-plan key ${name} failed: ${(err as Error).name}: ${(err as Error).message}`);
  } finally {
    client.destroy();
  }
}

function keyState(k: Omit<ApiKeyRecord, 'key_hash'>, now: number): 'active' | 'revoked' | 'expired' {
  if (k.revoked_at) return 'revoked';
  if (k.expires_at && Date.parse(k.expires_at) <= now) return 'expired';
  return 'active';
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows
    .map((r) =>
      r
        .map((c, i) => c.padEnd(widths[i]!))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

export interface KeysIo {
  out: (text: string) => void;
  err: (text: string) => void;
}

/** Runs one command; answers the exit code. */
export async function runKeys(argv: readonly string[], io: KeysIo = { out: (t) => console.log(t), err: (t) => console.error(t) }): Promise<number> {
  try {
    const cmd = parseKeysArgs(argv);
    if (cmd.command === 'help') {
      io.out(usage);
      return 0;
    }
    const target = cmd.stage === 'local' ? localTarget(cmd.stateFile) : await deployedTarget(cmd);
    // The shared modules read their settings from the environment on first use.
    Object.assign(process.env, target.env, { AWS_REGION: target.region, API_KEYS_TABLE: target.table });
    for (const name of target.unset) delete process.env[name];
    const { resetConfig } = await import('../lambdas/shared/config');
    resetConfig();
    const keys = await import('../lambdas/shared/api-keys');

    if (cmd.command === 'create') {
      const usageKey = cmd.stage === 'local' ? undefined : (cmd.usageKey ?? (await tenantUsageKey(cmd.stage, cmd.tenantId, target.region)));
      const { key, record } = await keys.createApiKey({
        tenantId: cmd.tenantId,
        ...(cmd.expiresAt ? { expiresAt: cmd.expiresAt } : {}),
        ...(cmd.description ? { description: cmd.description } : {}),
        ...(usageKey ? { usageKey } : {}),
      });
      io.err(`Created key ${record.key_id} for tenant ${record.tenant_id} in ${target.description}.`);
      if (record.expires_at) io.err(`It expires at ${record.expires_at}.`);
      io.err('This is the only time the key is shown; only its SHA-256 hash is stored:');
      // The key alone on stdout, so `npm run -s keys -- create ... > file` captures just it.
      io.out(key);
      return 0;
    }
    if (cmd.command === 'list') {
      const now = Date.now();
      const items = (await keys.listApiKeys(cmd.tenantId)).map(({ usage_key: _u, ...k }) => ({ ...k, state: keyState(k, now) }));
      if (cmd.json) {
        io.out(JSON.stringify(items, null, 2));
        return 0;
      }
      if (items.length === 0) {
        io.err(`Tenant ${cmd.tenantId} has no keys in ${target.description}.`);
        return 0;
      }
      const dash = (s?: string) => s ?? '-';
      io.out(
        table([
          ['KEY ID', 'STATE', 'CREATED', 'LAST USED', 'EXPIRES', 'REVOKED', 'DESCRIPTION'],
          ...items.map((k) => [k.key_id, k.state, k.created_at, dash(k.last_used_at), dash(k.expires_at), dash(k.revoked_at), dash(k.description)]),
        ]),
      );
      return 0;
    }
    const revoked = await keys.revokeApiKey(cmd.tenantId, cmd.keyId!);
    if (!revoked) {
      const known = (await keys.listApiKeys(cmd.tenantId)).find((k) => k.key_id === cmd.keyId);
      if (known?.revoked_at) {
        io.err(`Key ${cmd.keyId} of tenant ${cmd.tenantId} was already revoked at ${known.revoked_at}.`);
        return 0;
      }
      throw new KeysCliError(`tenant ${cmd.tenantId} has no key ${cmd.keyId} in ${target.description} (see: list --tenant ${cmd.tenantId})`);
    }
    io.err(
      `Revoked key ${cmd.keyId} of tenant ${cmd.tenantId} in ${target.description}. ` +
        'An API that cached its last answer for this key (API Gateway authorizer cache, AUTHORIZER_CACHE_SECONDS locally) may accept it until that entry expires.',
    );
    return 0;
  } catch (err) {
    if (err instanceof KeysCliError) {
      io.err(`keys: ${err.message}`);
      return err.exitCode;
    }
    const e = err as Error & { code?: string };
    const unreachable = e.code === 'ECONNREFUSED' || /ECONNREFUSED/.test(String(e.message)) || e.name === 'TimeoutError';
    io.err(
      unreachable
        ? `keys: DynamoDB did not answer (${e.message}); is the stack running? (npm start, or check --stage/--region)`
        : `keys: ${e.name}: ${e.message}`,
    );
    return 1;
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.exitCode = await runKeys(process.argv.slice(2));
}
