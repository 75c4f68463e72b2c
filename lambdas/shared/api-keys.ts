/**
 * API keys and sandbox tokens. Keys belong to a tenant and are stored only as
 * SHA-256 hashes; a key is shown once, when created. Unknown, revoked and
 * expired keys are indistinguishable to the caller.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { GetCommand, PutCommand, QueryCommand, UpdateCommand } from '@aws-sdk/lib-dynamodb';
import { conditionally, dynamo, queryAll } from './clients/dynamodb';
import { config } from './config';
import { apiKeysTable, indexName } from './tables';
import { patternBody, randomId, sandboxIdPattern, tenantIdPattern } from '../../contract/ids';

export interface ApiKeyRecord {
  key_hash: string;
  key_id: string;
  tenant_id: string;
  created_at: string;
  last_used_at?: string;
  revoked_at?: string;
  /** ISO time after which the key no longer works. */
  expires_at?: string;
  description?: string;
  /** API Gateway usage-plan key value for per-tenant throttling (AWS only). */
  usage_key?: string;
}

const keyPattern = /^esk_([a-z0-9]{10})_([A-Za-z0-9_-]{32,128})$/;
const tokenPattern = new RegExp(`^sbt_(${patternBody(sandboxIdPattern)})_([A-Za-z0-9_-]{32,128})$`);

export function sha256Hex(value: string): string {
  return createHash('sha256').update(value, 'utf8').digest('hex');
}

/** Compares two hex digests in constant time. */
export function sameHash(a: string, b: string): boolean {
  const x = Buffer.from(a, 'hex');
  const y = Buffer.from(b, 'hex');
  return x.length === y.length && x.length > 0 && timingSafeEqual(x, y);
}

/** A fresh API key in the `esk_<id>_<secret>` form. */
function generateApiKey(): { key: string; keyId: string } {
  const keyId = randomId(10);
  return { key: `esk_${keyId}_${randomBytes(32).toString('base64url')}`, keyId };
}

/** A fresh per-sandbox token: `sbt_<sandbox id>_<secret>`. */
export function generateSandboxToken(sandboxId: string): string {
  return `sbt_${sandboxId}_${randomBytes(32).toString('base64url')}`;
}

export function parseSandboxToken(token: string): { sandboxId: string } | undefined {
  const m = tokenPattern.exec(token);
  return m ? { sandboxId: m[1]! } : undefined;
}

/**
 * Stores a key for a tenant and returns it (the only time it is shown).
 * `key` adopts a given key (the local stack's SANDBOX_API_KEY); any shape is
 * accepted then, so operators can bring their own.
 */
export async function createApiKey(o: {
  tenantId: string;
  key?: string;
  expiresAt?: string;
  description?: string;
  usageKey?: string;
}): Promise<{ key: string; record: ApiKeyRecord }> {
  if (!tenantIdPattern.test(o.tenantId)) throw new Error(`tenant id "${o.tenantId}" must match ${tenantIdPattern}`);
  const generated = generateApiKey();
  const key = o.key ?? generated.key;
  const record: ApiKeyRecord = {
    key_hash: sha256Hex(key),
    key_id: keyPattern.exec(key)?.[1] ?? generated.keyId,
    tenant_id: o.tenantId,
    created_at: new Date().toISOString(),
    ...(o.expiresAt ? { expires_at: o.expiresAt } : {}),
    ...(o.description ? { description: o.description } : {}),
    ...(o.usageKey ? { usage_key: o.usageKey } : {}),
  };
  const write = await conditionally(
    dynamo().send(new PutCommand({ TableName: config().tables.apiKeys, Item: record, ConditionExpression: 'attribute_not_exists(key_hash)' })),
  );
  if (write.applied) return { key, record };
  // The same key registered again (a restarted local stack): keep the first record.
  if (o.key === undefined) throw new Error('a generated API key matched a stored one; create it again');
  const existing = await getKeyRecord(record.key_hash);
  if (!existing || existing.tenant_id !== o.tenantId) throw new Error('that key is already registered to another tenant');
  return { key, record: existing };
}

async function getKeyRecord(hash: string): Promise<ApiKeyRecord | undefined> {
  const out = await dynamo().send(new GetCommand({ TableName: config().tables.apiKeys, Key: { key_hash: hash } }));
  return out.Item as ApiKeyRecord | undefined;
}

/** The key's record when the key is valid now; undefined for unknown, revoked or expired keys alike. */
export async function verifyApiKey(presented: string, now = Date.now()): Promise<ApiKeyRecord | undefined> {
  if (presented.length === 0 || presented.length > 512) return undefined;
  const hash = sha256Hex(presented);
  const record = await getKeyRecord(hash);
  if (!record || !sameHash(record.key_hash, hash)) return undefined;
  if (record.revoked_at) return undefined;
  if (record.expires_at && Date.parse(record.expires_at) <= now) return undefined;
  await touchLastUsed(record, now);
  return record;
}

/** Records use at most once a minute per key, to keep writes off the hot path. */
async function touchLastUsed(record: ApiKeyRecord, now: number): Promise<void> {
  if (record.last_used_at && now - Date.parse(record.last_used_at) < 60_000) return;
  const iso = new Date(now).toISOString();
  // Not applied: another request recorded it.
  await conditionally(
    dynamo().send(
      new UpdateCommand({
        TableName: config().tables.apiKeys,
        Key: { key_hash: record.key_hash },
        UpdateExpression: 'SET last_used_at = :now',
        ConditionExpression: 'attribute_exists(key_hash) AND (attribute_not_exists(last_used_at) OR last_used_at < :cutoff)',
        ExpressionAttributeValues: { ':now': iso, ':cutoff': new Date(now - 60_000).toISOString() },
      }),
    ),
  );
}

export async function listApiKeys(tenantId?: string): Promise<Omit<ApiKeyRecord, 'key_hash'>[]> {
  if (!tenantId) throw new Error('listing keys needs a tenant');
  const { items } = await queryAll<ApiKeyRecord>({
    TableName: config().tables.apiKeys,
    IndexName: indexName(apiKeysTable, 'by-tenant'),
    KeyConditionExpression: 'tenant_id = :t',
    ExpressionAttributeValues: { ':t': tenantId },
  });
  return items.map(({ key_hash: _hash, ...rest }) => rest);
}

/** Revokes a tenant's key by its id; true when a key was revoked. */
export async function revokeApiKey(tenantId: string, keyId: string): Promise<boolean> {
  const keys = await dynamo().send(
    new QueryCommand({
      TableName: config().tables.apiKeys,
      IndexName: indexName(apiKeysTable, 'by-tenant'),
      KeyConditionExpression: 'tenant_id = :t',
      FilterExpression: 'key_id = :k',
      ExpressionAttributeValues: { ':t': tenantId, ':k': keyId },
    }),
  );
  let revoked = false;
  for (const item of (keys.Items ?? []) as ApiKeyRecord[]) {
    const write = await conditionally(
      dynamo().send(
        new UpdateCommand({
          TableName: config().tables.apiKeys,
          Key: { key_hash: item.key_hash },
          UpdateExpression: 'SET revoked_at = :now',
          ConditionExpression: 'attribute_not_exists(revoked_at)',
          ExpressionAttributeValues: { ':now': new Date().toISOString() },
        }),
      ),
    );
    if (write.applied) revoked = true;
  }
  return revoked;
}
