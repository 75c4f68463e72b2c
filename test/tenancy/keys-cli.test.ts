/**
 * The admin command for API keys (bin/keys.ts): argument parsing, target
 * resolution, and create/list/revoke end to end against a started local
 * stack through its state file, with the API answering for the keys it makes.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { GetCommand, ScanCommand } from '@aws-sdk/lib-dynamodb';
import { deployedTarget, KeysCliError, localTarget, parseKeysArgs } from '../../bin/keys';
import { sha256Hex } from '../../lambdas/shared/api-keys';
import { dynamo } from '../../lambdas/shared/clients/dynamodb';
import { config } from '../../lambdas/shared/config';
import { startLocalStack, type LocalStack } from '../../lib/local/stack';
import { repoRoot } from '../../lib/paths';
import { apiClient } from '../support/api-client';

const now = Date.parse('2026-06-01T00:00:00Z');

function usageError(argv: string[], message: RegExp) {
  assert.throws(
    () => parseKeysArgs(argv, now),
    (err: unknown) => err instanceof KeysCliError && err.exitCode === 2 && message.test(err.message),
    `expected a usage error matching ${message} for ${argv.join(' ')}`,
  );
}

describe('keys: argument parsing', () => {
  it('parses create with a tenant, an expiry and a description', () => {
    assert.deepEqual(parseKeysArgs(['create', '--tenant', 'acme', '--expires', '2027-01-01T00:00:00Z', '--description', 'ci runner'], now), {
      command: 'create',
      tenantId: 'acme',
      stage: 'local',
      json: false,
      expiresAt: '2027-01-01T00:00:00.000Z',
      description: 'ci runner',
    });
  });

  it('normalises an expiry with an offset to UTC', () => {
    const cmd = parseKeysArgs(['create', '--tenant', 'acme', '--expires', '2027-01-01T02:00:00+02:00'], now);
    assert.equal(cmd.command === 'create' && cmd.expiresAt, '2027-01-01T00:00:00.000Z');
  });

  it('parses list --json and revoke --key-id, and a deployed stage with table and region', () => {
    assert.deepEqual(parseKeysArgs(['list', '--tenant', 'acme', '--json'], now), { command: 'list', tenantId: 'acme', stage: 'local', json: true });
    assert.deepEqual(parseKeysArgs(['revoke', '--tenant', 'acme', '--key-id', 'abc123def4'], now), {
      command: 'revoke',
      tenantId: 'acme',
      stage: 'local',
      json: false,
      keyId: 'abc123def4',
    });
    assert.deepEqual(parseKeysArgs(['list', '--tenant', 'acme', '--stage', 'prod', '--table', 'Prod-ApiKeys', '--region', 'eu-west-1'], now), {
      command: 'list',
      tenantId: 'acme',
      stage: 'prod',
      json: false,
      table: 'Prod-ApiKeys',
      region: 'eu-west-1',
    });
  });

  it('answers help for --help and help', () => {
    assert.deepEqual(parseKeysArgs(['--help']), { command: 'help' });
    assert.deepEqual(parseKeysArgs(['help']), { command: 'help' });
  });

  it('refuses what it cannot do with exit code 2 and says why', () => {
    usageError([], /a command is required/);
    usageError(['rotate', '--tenant', 'acme'], /unknown command "rotate"/);
    usageError(['create'], /needs --tenant/);
    usageError(['create', '--tenant', 'Acme Corp'], /--tenant "Acme Corp"/);
    usageError(['create', '--tenant', '../etc'], /--tenant/);
    usageError(['create', '--tenant', 'acme', '--bogus'], /Unknown option '--bogus'/);
    usageError(['create', '--tenant', 'acme', 'extra'], /unexpected argument "extra"/);
    usageError(['create', '--tenant', 'acme', '--expires', 'tomorrow'], /not an ISO 8601 time/);
    usageError(['create', '--tenant', 'acme', '--expires', '2027-01-01T00:00:00'], /not an ISO 8601 time/);
    usageError(['create', '--tenant', 'acme', '--expires', '2020-01-01T00:00:00Z'], /in the past/);
    usageError(['create', '--tenant', 'acme', '--description', 'a\nb'], /control characters/);
    usageError(['create', '--tenant', 'acme', '--description', 'x'.repeat(257)], /1-256/);
    usageError(['revoke', '--tenant', 'acme'], /needs --key-id/);
    usageError(['revoke', '--tenant', 'acme', '--key-id', 'esk_abc'], /is not a key id/);
    usageError(['list', '--tenant', 'acme', '--key-id', 'abc123def4'], /--key-id is only for revoke/);
    usageError(['create', '--tenant', 'acme', '--json'], /--json is only for list/);
    usageError(['list', '--tenant', 'acme', '--table', 'x-table'], /--table is only for a deployed/);
    usageError(['list', '--tenant', 'acme', '--stage', 'dev', '--state-file', '/tmp/x'], /--state-file is only for --stage local/);
    usageError(['list', '--tenant', 'acme', '--stage', 'dev; rm -rf /'], /--stage/);
    usageError(['list', '--tenant', 'acme', '--stage', 'dev', '--region', 'mars'], /--region "mars"/);
    usageError(['create', '--tenant', 'acme', '--usage-key', 'x'.repeat(30)], /--usage-key is only for create on a deployed/);
  });
});

describe('keys: where it works', () => {
  const dir = mkdtempSync(join(tmpdir(), 'keys-cli-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('says how to start the local stack when there is no state file', () => {
    assert.throws(() => localTarget(join(dir, 'absent.json')), /no local stack is running .*`npm start`/);
  });

  it('refuses a state file left by a stack that is gone', () => {
    const file = join(dir, 'stale.json');
    writeFileSync(file, JSON.stringify({ pid: 999_999_999, dynamodbEndpoint: 'http://127.0.0.1:1', tables: { API_KEYS_TABLE: 'apikeys' } }));
    assert.throws(() => localTarget(file, () => false), /pid 999999999\) is no longer running/);
  });

  it('refuses a state file that is not JSON', () => {
    const file = join(dir, 'bad.json');
    writeFileSync(file, '{"pid": ');
    assert.throws(() => localTarget(file), /is not valid JSON/);
  });

  it('reads the ApiKeys table of a deployed stage from its stateful stack outputs', async () => {
    const asked: string[] = [];
    const target = await deployedTarget({ stage: 'dev', region: 'eu-west-1' }, async (stack, region) => {
      asked.push(`${stack}@${region}`);
      return { ApiKeysTableName: 'EphemeralSandbox-dev-Stateful-TablesApiKeys1234', SandboxesTableName: 'x' };
    });
    assert.deepEqual(asked, ['EphemeralSandbox-dev-Stateful@eu-west-1']);
    assert.equal(target.table, 'EphemeralSandbox-dev-Stateful-TablesApiKeys1234');
    assert.equal(target.region, 'eu-west-1');
    assert.deepEqual(target.env, {});
  });

  it('takes --table as given without asking CloudFormation', async () => {
    const target = await deployedTarget({ stage: 'dev', region: 'us-east-2', table: 'my-keys' }, async () => {
      throw new Error('must not be called');
    });
    assert.equal(target.table, 'my-keys');
  });

  it('says which output is missing, and that a region is needed', async () => {
    await assert.rejects(
      deployedTarget({ stage: 'dev', region: 'eu-west-1' }, async () => ({ StorageBucketName: 'b' })),
      /EphemeralSandbox-dev-Stateful has no output ApiKeysTableName .*StorageBucketName.*--table/,
    );
    const saved = { r: process.env.AWS_REGION, d: process.env.AWS_DEFAULT_REGION };
    delete process.env.AWS_REGION;
    delete process.env.AWS_DEFAULT_REGION;
    try {
      await assert.rejects(
        deployedTarget({ stage: 'dev' }, async () => ({})),
        (err: unknown) => err instanceof KeysCliError && err.exitCode === 2,
      );
    } finally {
      if (saved.r !== undefined) process.env.AWS_REGION = saved.r;
      if (saved.d !== undefined) process.env.AWS_DEFAULT_REGION = saved.d;
    }
  });
});

describe('keys: create, list and revoke against a running local stack', () => {
  let stack: LocalStack;
  let stateFile: string;
  const dir = mkdtempSync(join(tmpdir(), 'keys-cli-stack-'));

  /** Runs the real command as an operator would, with none of this process's stack settings. */
  function keysCli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('AWS_') && !k.endsWith('_TABLE'))) as NodeJS.ProcessEnv;
    const child = spawn(process.execPath, ['--import', 'tsx', join(repoRoot, 'bin', 'keys.ts'), ...args, '--state-file', stateFile], {
      cwd: repoRoot,
      env,
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    return new Promise((resolve) => child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr })));
  }

  before(async () => {
    stateFile = join(dir, 'stack.json');
    // No authorizer cache: a revoked key must be refused on the next request.
    stack = await startLocalStack({ port: 0, reaperIntervalMs: 0, authorizerCacheSeconds: 0, stateFile });
  });
  after(async () => {
    await stack?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('writes the state file for admin tools, readable by its owner only', () => {
    const mode = statSync(stateFile).mode & 0o777;
    assert.equal(mode, 0o600);
    const target = localTarget(stateFile);
    assert.equal(target.table, stack.env.API_KEYS_TABLE);
    assert.equal(target.env.AWS_ENDPOINT_URL_DYNAMODB, stack.dynamodb.endpoint);
  });

  let key: string;
  let keyId: string;

  it('creates a key, prints it once on stdout, and stores only its hash', async () => {
    const res = await keysCli('create', '--tenant', 'acme', '--description', 'ci runner');
    assert.equal(res.code, 0, res.stderr);
    key = res.stdout.trim();
    assert.match(key, /^esk_[a-z0-9]{10}_[A-Za-z0-9_-]{43}$/);
    keyId = key.split('_')[1]!;
    assert.match(res.stderr, new RegExp(`Created key ${keyId} for tenant acme`));
    assert.match(res.stderr, /only time the key is shown/);
    const stored = await dynamo().send(new GetCommand({ TableName: config().tables.apiKeys, Key: { key_hash: sha256Hex(key) } }));
    assert.equal(stored.Item?.tenant_id, 'acme');
    assert.equal(stored.Item?.description, 'ci runner');
    assert.ok(stored.Item?.created_at);
    const all = await dynamo().send(new ScanCommand({ TableName: config().tables.apiKeys }));
    // The secret is base64url, so it may hold '_' itself: it is everything after the key id.
    const secret = key.slice(`esk_${keyId}_`.length);
    assert.equal(secret.length, 43);
    assert.ok(!JSON.stringify(all.Items).includes(secret), 'the secret part of the key is stored nowhere');
  });

  it('makes a key the API accepts for its tenant', async () => {
    const res = await apiClient(stack.url, key).call('GET', '/sandboxes');
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(res.body.sandboxes, []);
  });

  it('lists the tenant keys with their state and last use, never the key', async () => {
    const res = await keysCli('list', '--tenant', 'acme', '--json');
    assert.equal(res.code, 0, res.stderr);
    const items = JSON.parse(res.stdout) as Record<string, string>[];
    assert.equal(items.length, 1);
    assert.equal(items[0]!.key_id, keyId);
    assert.equal(items[0]!.state, 'active');
    assert.ok(items[0]!.last_used_at, 'the API call above recorded its use');
    assert.ok(!res.stdout.includes(key) && !res.stdout.includes('key_hash'));
    const text = await keysCli('list', '--tenant', 'acme');
    assert.equal(text.code, 0);
    assert.match(text.stdout, /^KEY ID\s+STATE\s+CREATED\s+LAST USED\s+EXPIRES\s+REVOKED\s+DESCRIPTION$/m);
    assert.match(text.stdout, new RegExp(`^${keyId}\\s+active\\s+`, 'm'));
  });

  it('keeps tenants apart: another tenant lists none of these keys and cannot revoke them', async () => {
    const list = await keysCli('list', '--tenant', 'globex', '--json');
    assert.equal(list.code, 0, list.stderr);
    assert.deepEqual(JSON.parse(list.stdout), []);
    const revoke = await keysCli('revoke', '--tenant', 'globex', '--key-id', keyId);
    assert.equal(revoke.code, 1);
    assert.match(revoke.stderr, new RegExp(`tenant globex has no key ${keyId}`));
    assert.equal((await apiClient(stack.url, key).call('GET', '/sandboxes')).status, 200);
  });

  it('stores an expiry given at create', async () => {
    const res = await keysCli('create', '--tenant', 'acme', '--expires', '2099-01-01T00:00:00Z');
    assert.equal(res.code, 0, res.stderr);
    assert.match(res.stderr, /expires at 2099-01-01T00:00:00.000Z/);
    const list = JSON.parse((await keysCli('list', '--tenant', 'acme', '--json')).stdout) as Record<string, string>[];
    assert.equal(list.length, 2);
    assert.ok(list.some((k) => k.expires_at === '2099-01-01T00:00:00.000Z' && k.state === 'active'));
  });

  it('revokes a key: the API then answers exactly as for an unknown key', async () => {
    const res = await keysCli('revoke', '--tenant', 'acme', '--key-id', keyId);
    assert.equal(res.code, 0, res.stderr);
    assert.match(res.stderr, new RegExp(`Revoked key ${keyId} of tenant acme`));
    const revoked = await apiClient(stack.url, key).call('GET', '/sandboxes');
    const unknown = await apiClient(stack.url, `esk_${'a'.repeat(10)}_${'b'.repeat(43)}`).call('GET', '/sandboxes');
    assert.equal(revoked.status, 403);
    assert.deepEqual(revoked.body, unknown.body);
    const list = JSON.parse((await keysCli('list', '--tenant', 'acme', '--json')).stdout) as Record<string, string>[];
    const item = list.find((k) => k.key_id === keyId)!;
    assert.equal(item.state, 'revoked');
    assert.ok(item.revoked_at);
  });

  it('answers a second revoke calmly, and an unknown key id with exit code 1', async () => {
    const again = await keysCli('revoke', '--tenant', 'acme', '--key-id', keyId);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stderr, /already revoked/);
    const unknown = await keysCli('revoke', '--tenant', 'acme', '--key-id', 'zzzzzzzzzz');
    assert.equal(unknown.code, 1);
    assert.match(unknown.stderr, /tenant acme has no key zzzzzzzzzz/);
  });

  it('answers bad arguments with exit code 2 and the usage', async () => {
    const res = await keysCli('create', '--tenant', 'ACME!');
    assert.equal(res.code, 2);
    assert.match(res.stderr, /--tenant "ACME!"/);
    assert.equal(res.stdout, '');
  });

  it('says the stack is gone when its state file outlives it', async () => {
    const stale = join(dir, 'stale.json');
    writeFileSync(stale, JSON.stringify({ pid: 2 ** 22 + 12345, url: 'x', dynamodbEndpoint: 'http://127.0.0.1:9', tables: { API_KEYS_TABLE: 't' } }));
    const child = spawn(process.execPath, ['--import', 'tsx', join(repoRoot, 'bin', 'keys.ts'), 'list', '--tenant', 'acme', '--state-file', stale], {
      cwd: repoRoot,
    });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const code = await new Promise((r) => child.on('close', r));
    assert.equal(code, 1);
    assert.match(stderr, /is no longer running: start it again with `npm start`/);
  });
});
