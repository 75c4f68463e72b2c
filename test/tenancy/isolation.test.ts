/**
 * Tenancy on the real local stack: every route is scoped to the caller's
 * tenant, keys that are not valid now all answer alike, a sandbox token
 * speaks only for its own sandbox, and storage is kept per tenant.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { createApiKey, revokeApiKey } from '../../lambdas/shared/api-keys';
import { startLocalStack, type LocalStack } from '../../lib/local/stack';
import { apiClient, type ApiClient } from '../support/api-client';
import { containerExists, inspect } from '../support/docker';

let stack: LocalStack;
let tenantA: ApiClient;
let tenantB: ApiClient;
let anonymous: ApiClient;
const created: { api: ApiClient; id: string }[] = [];

async function createFor(api: ApiClient, userId: string, headers?: Record<string, string>): Promise<string> {
  const res = await api.create(userId, undefined, headers);
  assert.equal(res.status, 201, res.text);
  created.push({ api, id: res.body.sandbox_id });
  return res.body.sandbox_id;
}

before(async () => {
  // No authorizer cache: revocation and expiry must show on the next request.
  stack = await startLocalStack({ port: 0, reaperIntervalMs: 0, authorizerCacheSeconds: 0 });
  tenantA = apiClient(stack.url, (await createApiKey({ tenantId: 'tenant-a', description: 'isolation test A' })).key);
  tenantB = apiClient(stack.url, (await createApiKey({ tenantId: 'tenant-b', description: 'isolation test B' })).key);
  anonymous = apiClient(stack.url, undefined);
});
after(async () => {
  for (const { api, id } of created) await api.destroy(id, false).catch(() => undefined);
  await stack?.close();
});

/** Every route that names a sandbox, with a body that would be valid for it. */
const sandboxRoutes: { method: string; path: (id: string) => string; body?: unknown }[] = [
  { method: 'GET', path: (id) => `/sandboxes/${id}` },
  { method: 'POST', path: (id) => `/sandboxes/${id}/exec`, body: { command: 'touch /tmp/tenant-b-was-here' } },
  { method: 'POST', path: (id) => `/sandboxes/${id}/heartbeat` },
  { method: 'POST', path: (id) => `/sandboxes/${id}/timeout`, body: { idle_timeout_seconds: 60 } },
  { method: 'POST', path: (id) => `/sandboxes/${id}/pause` },
  { method: 'POST', path: (id) => `/sandboxes/${id}/resume` },
  // The deprecated names of pause and resume.
  { method: 'POST', path: (id) => `/sandboxes/${id}/stop` },
  { method: 'POST', path: (id) => `/sandboxes/${id}/start` },
  { method: 'POST', path: (id) => `/sandboxes/${id}/complete`, body: { result: { stolen: true } } },
  { method: 'POST', path: (id) => `/sandboxes/${id}/error`, body: { error: 'forged' } },
  { method: 'DELETE', path: (id) => `/sandboxes/${id}?graceful=false` },
];

describe("another tenant's sandbox is indistinguishable from none", () => {
  let id: string;
  before(async () => {
    id = await createFor(tenantA, 'alice');
  });

  for (const route of sandboxRoutes) {
    it(`answers ${route.method} ${route.path('{id}')} from tenant B with the 404 of a sandbox that does not exist`, async () => {
      const unknownId = 'sbx-' + 'z'.repeat(20);
      const theirs = await tenantB.call(route.method, route.path(id), route.body);
      const none = await tenantB.call(route.method, route.path(unknownId), route.body);
      assert.equal(theirs.status, 404, theirs.text);
      assert.equal(theirs.body.error.code, 'not_found');
      assert.equal(none.status, 404);
      assert.deepEqual(theirs.body, JSON.parse(JSON.stringify(none.body).replaceAll(unknownId, id)));
    });
  }

  it('left the sandbox untouched: still ready, still running, nothing ran in it', async () => {
    const got = await tenantA.get(id);
    assert.equal(got.status, 200);
    assert.equal(got.body.status, 'ready');
    assert.equal(got.body.config.idle_timeout_seconds, 900, 'the timeout change did not apply');
    assert.equal((await inspect(id)).State.Running, true);
    const probe = await tenantA.exec(id, 'test -e /tmp/tenant-b-was-here && echo yes || echo no');
    assert.equal(probe.body.stdout, 'no\n');
  });

  it("never lists another tenant's sandboxes, whatever the filter", async () => {
    const all = await tenantB.call('GET', '/sandboxes');
    assert.equal(all.status, 200);
    assert.ok(!all.body.sandboxes.some((s: any) => s.sandbox_id === id));
    const byUser = await tenantB.call('GET', '/sandboxes?user_id=alice');
    assert.deepEqual(byUser.body.sandboxes, []);
    assert.equal(byUser.body.total, 0);
    const mine = await tenantA.call('GET', '/sandboxes?user_id=alice');
    assert.ok(
      mine.body.sandboxes.some((s: any) => s.sandbox_id === id),
      'the owner does see it',
    );
  });

  it("refuses another tenant's page token", async () => {
    await createFor(tenantA, 'alice');
    const page = await tenantA.call('GET', '/sandboxes?limit=1');
    assert.ok(page.body.next_token);
    const stolen = await tenantB.call('GET', `/sandboxes?limit=1&next_token=${page.body.next_token}`);
    assert.equal(stolen.status, 400);
    assert.equal(stolen.body.error.code, 'validation_error');
  });

  it("does not hand another tenant's create back for the same Idempotency-Key", async () => {
    const key = 'same-key-' + Date.now();
    const first = await createFor(tenantA, 'alice', { 'Idempotency-Key': key });
    const second = await createFor(tenantB, 'alice', { 'Idempotency-Key': key });
    assert.notEqual(second, first);
    assert.equal((await tenantB.get(second)).body.user_id, 'alice');
    assert.equal((await tenantB.get(first)).status, 404);
  });
});

describe('keys that are not valid now answer exactly like unknown keys', () => {
  const unknownKey = `esk_${'q'.repeat(10)}_${'w'.repeat(43)}`;

  async function answerOf(key: string) {
    const res = await apiClient(stack.url, key).call('GET', '/sandboxes');
    return { status: res.status, body: res.body, contentType: res.headers.get('content-type') };
  }

  it('a revoked key', async () => {
    const { key, record } = await createApiKey({ tenantId: 'tenant-a', description: 'to revoke' });
    assert.equal((await answerOf(key)).status, 200, 'works before');
    assert.equal(await revokeApiKey('tenant-a', record.key_id), true);
    assert.deepEqual(await answerOf(key), await answerOf(unknownKey));
    assert.equal((await answerOf(key)).status, 403);
  });

  it('an expired key', async () => {
    const { key } = await createApiKey({ tenantId: 'tenant-a', expiresAt: new Date(Date.now() + 1500).toISOString() });
    assert.equal((await answerOf(key)).status, 200, 'works before it expires');
    await new Promise((r) => setTimeout(r, 1700));
    assert.deepEqual(await answerOf(key), await answerOf(unknownKey));
  });

  it('a key of the right shape whose secret is wrong, and keys of the wrong shape', async () => {
    const { key } = await createApiKey({ tenantId: 'tenant-a' });
    const tampered = key.slice(0, -1) + (key.endsWith('A') ? 'B' : 'A');
    const expected = await answerOf(unknownKey);
    assert.equal(expected.status, 403);
    assert.equal(expected.body.error.code, 'invalid_api_key');
    for (const k of [tampered, 'nonsense', 'esk_', "' OR 1=1 --", 'sbt_sbx-aaaaaaaaaaaaaaaaaaaa_' + 'x'.repeat(43), 'x'.repeat(4000)]) {
      assert.deepEqual(await answerOf(k), expected, `key ${k.slice(0, 40)}`);
    }
  });

  it('no key at all is a 401 asking for one', async () => {
    const res = await anonymous.call('GET', '/sandboxes');
    assert.equal(res.status, 401);
    assert.equal(res.body.error.code, 'missing_api_key');
  });
});

describe('a sandbox token speaks only for its own sandbox', () => {
  let own: string;
  let sibling: string;
  let foreign: string;
  let token: string;
  let asToken: ApiClient;

  before(async () => {
    own = await createFor(tenantA, 'token-user');
    sibling = await createFor(tenantA, 'token-user');
    foreign = await createFor(tenantB, 'token-user');
    const res = await tenantA.exec(own, 'printenv SANDBOX_TOKEN');
    token = res.body.stdout.trim();
    assert.match(token, new RegExp(`^sbt_${own}_`));
    asToken = apiClient(stack.url, token);
  });

  it('may heartbeat its own sandbox', async () => {
    const res = await asToken.call('POST', `/sandboxes/${own}/heartbeat`);
    assert.equal(res.status, 200, res.text);
    assert.equal(res.body.status, 'running');
  });

  it('may do it from inside the sandbox, over the sandbox network', async () => {
    const res = await tenantA.exec(
      own,
      `curl -s -o /dev/null -w '%{http_code}' -X POST -H "X-API-Key: $SANDBOX_TOKEN" "$SANDBOX_API_URL/sandboxes/$SANDBOX_ID/heartbeat"`,
    );
    assert.equal(res.body.stdout, '200', res.body.stderr);
  });

  const forbidden: [string, string, (ids: { own: string; sibling: string; foreign: string }) => string, unknown?][] = [
    ['exec in its own sandbox', 'POST', (i) => `/sandboxes/${i.own}/exec`, { command: 'id' }],
    ['get its own sandbox', 'GET', (i) => `/sandboxes/${i.own}`],
    ['destroy its own sandbox', 'DELETE', (i) => `/sandboxes/${i.own}`],
    ['change its own timeout', 'POST', (i) => `/sandboxes/${i.own}/timeout`, {}],
    ['list sandboxes', 'GET', () => '/sandboxes'],
    ['create a sandbox', 'POST', () => '/sandboxes', { user_id: 'x' }],
    ['heartbeat a sibling sandbox of its tenant', 'POST', (i) => `/sandboxes/${i.sibling}/heartbeat`],
    ['complete a sibling sandbox', 'POST', (i) => `/sandboxes/${i.sibling}/complete`, {}],
    ['exec in a sibling sandbox', 'POST', (i) => `/sandboxes/${i.sibling}/exec`, { command: 'id' }],
    ['destroy a sibling sandbox', 'DELETE', (i) => `/sandboxes/${i.sibling}`],
    ["heartbeat another tenant's sandbox", 'POST', (i) => `/sandboxes/${i.foreign}/heartbeat`],
    ["signal an error on another tenant's sandbox", 'POST', (i) => `/sandboxes/${i.foreign}/error`, { error: 'x' }],
  ];
  for (const [what, method, path, body] of forbidden) {
    it(`may not ${what} (403, as API Gateway denies a route outside the authorizer's policy)`, async () => {
      const res = await asToken.call(method, path({ own, sibling, foreign }), body);
      assert.equal(res.status, 403, res.text);
      assert.equal(res.body.error.code, 'invalid_api_key');
    });
  }

  it('left every sandbox as it was', async () => {
    for (const [api, id] of [
      [tenantA, own],
      [tenantA, sibling],
      [tenantB, foreign],
    ] as const) {
      const got = await api.get(id);
      assert.ok(['ready', 'running'].includes(got.body.status), `${id} is ${got.body.status}`);
      assert.equal(await containerExists(id), true);
    }
    assert.equal((await tenantA.get(sibling)).body.status, 'ready', 'the sibling never got a heartbeat');
  });

  it('stops working once its sandbox has ended', async () => {
    assert.equal((await tenantA.destroy(own, false)).status, 204);
    const res = await asToken.call('POST', `/sandboxes/${own}/heartbeat`);
    assert.equal(res.status, 403);
    assert.equal(res.body.error.code, 'invalid_api_key');
  });
});

describe('storage is kept per tenant', () => {
  it("puts each tenant's files under its own prefix: the same user id in another tenant sees none of them", async () => {
    const a = await createFor(tenantA, 'same-user');
    const write = await tenantA.exec(a, 'echo secret-of-a > ~/secret.txt && sync');
    assert.equal(write.body.exit_code, 0, write.body.stderr);
    // A graceful destroy syncs the home up to S3.
    assert.equal((await tenantA.destroy(a, true)).status, 204);

    const s3 = new S3Client({ forcePathStyle: true, requestChecksumCalculation: 'WHEN_REQUIRED' });
    try {
      const listed = await s3.send(new ListObjectsV2Command({ Bucket: stack.env.STORAGE_BUCKET, Prefix: 'tenants/' }));
      const keys = (listed.Contents ?? []).map((o) => o.Key!);
      const secrets = keys.filter((k) => k.endsWith('/secret.txt'));
      assert.deepEqual(secrets, ['tenants/tenant-a/users/same-user/hot/secret.txt'], keys.join('\n'));
    } finally {
      s3.destroy();
    }

    const b = await createFor(tenantB, 'same-user');
    const seenByB = await tenantB.exec(b, 'cat ~/secret.txt 2>&1; ls -A ~');
    assert.doesNotMatch(seenByB.body.stdout, /secret-of-a/);
    const againA = await createFor(tenantA, 'same-user');
    const seenByA = await tenantA.exec(againA, 'cat ~/secret.txt');
    assert.equal(seenByA.body.stdout, 'secret-of-a\n', 'the owner gets its files back');
  });
});
