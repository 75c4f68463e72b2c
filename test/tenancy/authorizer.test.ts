/**
 * The Lambda REQUEST authorizer (lambdas/authorizer.ts) as API Gateway calls
 * it, against DynamoDB Local: a valid key is allowed for every route of its
 * stage with the tenant and its usage-plan key; unknown, revoked, expired and
 * tampered keys get one and the same Deny; no key is a 401; a sandbox token
 * is allowed only its own sandbox's signal routes.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { APIGatewayRequestAuthorizerEvent } from 'aws-lambda';
import { handler } from '../../lambdas/authorizer';
import { createApiKey, generateSandboxToken, revokeApiKey, sha256Hex } from '../../lambdas/shared/api-keys';
import { resetConfig } from '../../lambdas/shared/config';
import type { SandboxRecord } from '../../lambdas/shared/sandbox-record';
import { tables } from '../../lambdas/shared/tables';
import { recordWithTenantSlot } from '../../lambdas/shared/tenants';
import { startLocalApi } from '../../lib/local/api-gateway';
import { createTables, startDynamoDbLocal, type DynamoDbLocal } from '../../lib/local/dynamodb-local';

const arnBase = 'arn:aws:execute-api:eu-west-1:123456789012:abcdef1234/prod';
let db: DynamoDbLocal;

function event(key: string | undefined, method = 'GET', path = '/sandboxes', headerName = 'X-API-Key'): APIGatewayRequestAuthorizerEvent {
  return {
    type: 'REQUEST',
    methodArn: `${arnBase}/${method}${path}`,
    resource: path,
    path,
    httpMethod: method,
    headers: key === undefined ? {} : { [headerName]: key },
    multiValueHeaders: {},
    pathParameters: {},
    queryStringParameters: {},
    multiValueQueryStringParameters: {},
    stageVariables: {},
    requestContext: {} as APIGatewayRequestAuthorizerEvent['requestContext'],
  };
}

before(async () => {
  db = await startDynamoDbLocal();
  Object.assign(process.env, {
    AWS_REGION: 'eu-west-1',
    AWS_ACCESS_KEY_ID: db.credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: db.credentials.secretAccessKey,
    AWS_ENDPOINT_URL_DYNAMODB: db.endpoint,
    LOG_LEVEL: 'error',
    ...Object.fromEntries(tables.map((t) => [t.envVar, `authz-${t.id.toLowerCase()}`])),
  });
  resetConfig();
  await createTables(
    db.client,
    tables.map((def) => ({ def, name: `authz-${def.id.toLowerCase()}` })),
  );
});
after(async () => {
  await db?.close();
});

describe('the Lambda authorizer', () => {
  it('allows a valid key on every route of its stage, with its tenant and usage-plan key', async () => {
    const usageKey = 'UsagePlanKeyValue0123456789abcdef';
    const { key, record } = await createApiKey({ tenantId: 'acme', usageKey });
    for (const headerName of ['X-API-Key', 'x-api-key', 'X-Api-Key']) {
      const out = await handler(event(key, 'POST', '/sandboxes', headerName));
      assert.equal(out.principalId, 'tenant:acme');
      assert.deepEqual(out.policyDocument.Statement, [{ Action: 'execute-api:Invoke', Effect: 'Allow', Resource: [`${arnBase}/*`] }]);
      assert.deepEqual(out.context, { tenant_id: 'acme', principal_kind: 'api-key', sandbox_id: '', key_id: record.key_id });
      assert.equal(out.usageIdentifierKey, usageKey);
    }
  });

  it('answers unknown, revoked, expired and tampered keys with one and the same Deny', async () => {
    const revoked = await createApiKey({ tenantId: 'acme' });
    await revokeApiKey('acme', revoked.record.key_id);
    const expired = await createApiKey({ tenantId: 'acme', expiresAt: new Date(Date.now() - 1000).toISOString() });
    const valid = await createApiKey({ tenantId: 'acme' });
    const tampered = valid.key.slice(0, -2) + (valid.key.endsWith('AA') ? 'BB' : 'AA');
    const unknown = `esk_${'u'.repeat(10)}_${'v'.repeat(43)}`;
    const answers = await Promise.all([unknown, revoked.key, expired.key, tampered, 'garbage', 'x'.repeat(2000)].map((k) => handler(event(k))));
    const expected = {
      principalId: 'anonymous',
      policyDocument: { Version: '2012-10-17', Statement: [{ Action: 'execute-api:Invoke', Effect: 'Deny', Resource: [`${arnBase}/GET/sandboxes`] }] },
    };
    for (const a of answers) assert.deepEqual(a, expected);
  });

  it('answers no key, or a blank one, with Unauthorized (API Gateway: 401)', async () => {
    await assert.rejects(handler(event(undefined)), /^Error: Unauthorized$/);
    await assert.rejects(handler(event('   ')), /^Error: Unauthorized$/);
  });

  it('allows a sandbox token only the signal routes of its own live sandbox', async () => {
    const sandboxId = 'sbx-' + 'a1'.repeat(10);
    const token = generateSandboxToken(sandboxId);
    const now = Date.now();
    // Recorded the way a create records it (the tenant's slot and the record in one transaction).
    await recordWithTenantSlot({
      sandbox_id: sandboxId,
      tenant_id: 'acme',
      user_id: 'u',
      tenant_user: 'acme#u',
      status: 'ready',
      host_id: 'i-0123456789abcdef0',
      created_at: new Date(now).toISOString(),
      updated_at: new Date(now).toISOString(),
      expires_at: new Date(now + 3_600_000).toISOString(),
      expires_at_ms: now + 3_600_000,
      idle_timeout_s: 900,
      last_activity_at: now,
      execs: {},
      cwd: '/home/agent',
      config: { cpu: 1, memory_mb: 512, ttl_seconds: 3600, idle_timeout_seconds: 900, network: 'bridge', env: {}, labels: {} },
      token_hash: sha256Hex(token),
    } as SandboxRecord);
    const out = await handler(event(token, 'POST', `/sandboxes/${sandboxId}/heartbeat`));
    assert.equal(out.principalId, `sandbox:${sandboxId}`);
    assert.deepEqual(out.policyDocument.Statement[0], {
      Action: 'execute-api:Invoke',
      Effect: 'Allow',
      Resource: ['heartbeat', 'complete', 'error'].map((a) => `${arnBase}/POST/sandboxes/${sandboxId}/${a}`),
    });
    assert.equal(out.context?.tenant_id, 'acme');
    assert.equal(out.usageIdentifierKey, undefined);
    // A token for a sandbox that does not exist, or with a wrong secret: the same Deny as a bad key.
    const forged = await handler(event(`sbt_${sandboxId}_${'z'.repeat(43)}`));
    const missing = await handler(event(generateSandboxToken('sbx-' + 'b2'.repeat(10))));
    assert.equal(forged.policyDocument.Statement[0]!.Effect, 'Deny');
    assert.deepEqual(missing, forged);
  });
});

describe('the authorizer cache (as API Gateway caches authorizer answers per key)', () => {
  it('keeps accepting a revoked key until its cached answer expires, then refuses it', async () => {
    // The handlers are not under test here: any route answers 200 once the authorizer lets the request through.
    const api = await startLocalApi({
      port: 0,
      authorizerCacheSeconds: 1,
      loadHandler: async () => async () => ({ statusCode: 200, headers: { 'Content-Type': 'application/json' }, body: '{}' }),
    });
    try {
      const { key, record } = await createApiKey({ tenantId: 'cached' });
      const call = async () => (await fetch(`${api.url}/sandboxes`, { headers: { 'X-API-Key': key } })).status;
      assert.equal(await call(), 200);
      await revokeApiKey('cached', record.key_id);
      assert.equal(await call(), 200, 'the cached Allow still stands: revocation takes up to the cache TTL');
      await new Promise((r) => setTimeout(r, 1_100));
      assert.equal(await call(), 403);
    } finally {
      await api.close();
    }
  });
});
