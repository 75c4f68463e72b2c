/**
 * Idempotent create: the first request with an Idempotency-Key claims it with
 * a conditional put; a retry with the same key and body gets the same sandbox
 * (waiting for the first to finish), and never makes a second container.
 */
import { createHash } from 'node:crypto';
import { ConditionalCheckFailedException } from '@aws-sdk/client-dynamodb';
import { DeleteCommand, GetCommand, PutCommand, UpdateCommand } from '@aws-sdk/lib-dynamodb';
import { dynamo } from './clients/dynamodb';
import { config } from './config';
import { ApiError } from './errors';
import { toView, type SandboxView } from './sandbox-record';
import { getSandbox } from './sandbox-store';

interface IdempotencyRecord {
  idempotency_key: string;
  fingerprint: string;
  state: 'in_progress' | 'done';
  sandbox_id?: string;
  created_at: string;
  expires_at_s: number;
}

const keyPattern = /^[A-Za-z0-9_.:-]{1,128}$/;
const retentionSeconds = 24 * 3600;
const waitForFirstMs = 180_000;
/**
 * An in-progress claim older than this belongs to a create that died: longer
 * than any create may run (its 120 s host timeout, after which the reaper
 * fails the half-made sandbox) plus the handler's own time.
 */
const abandonedAfterMs = 300_000;

/** Drops an abandoned claim, only if it is still the one we saw (a concurrent retry may have taken it over). */
async function releaseAbandoned(table: string, seen: IdempotencyRecord): Promise<void> {
  try {
    await dynamo().send(
      new DeleteCommand({
        TableName: table,
        Key: { idempotency_key: seen.idempotency_key },
        ConditionExpression: '#state = :in_progress AND created_at = :created',
        ExpressionAttributeNames: { '#state': 'state' },
        ExpressionAttributeValues: { ':in_progress': 'in_progress', ':created': seen.created_at },
      }),
    );
  } catch (err) {
    if (!(err instanceof ConditionalCheckFailedException)) throw err;
  }
}

function stableJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(stableJson).join(',')}]`;
  if (value && typeof value === 'object') {
    return `{${Object.keys(value as object)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${stableJson((value as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(value);
}

export async function withIdempotency(
  tenantId: string,
  key: string | undefined,
  body: unknown,
  create: () => Promise<SandboxView>,
): Promise<SandboxView> {
  if (key === undefined) return create();
  if (!keyPattern.test(key)) {
    throw new ApiError(400, 'validation_error', 'Idempotency-Key: must be 1-128 characters of letters, digits and _.:-');
  }
  const table = config().tables.idempotency;
  const id = `${tenantId}#${key}`;
  const fingerprint = createHash('sha256').update(stableJson(body)).digest('hex');
  const deadline = Date.now() + waitForFirstMs;

  for (;;) {
    try {
      await dynamo().send(
        new PutCommand({
          TableName: table,
          Item: {
            idempotency_key: id,
            fingerprint,
            state: 'in_progress',
            created_at: new Date().toISOString(),
            expires_at_s: Math.floor(Date.now() / 1000) + retentionSeconds,
          } satisfies IdempotencyRecord,
          ConditionExpression: 'attribute_not_exists(idempotency_key)',
        }),
      );
    } catch (err) {
      if (!(err instanceof ConditionalCheckFailedException)) throw err;
      const existing = (await dynamo().send(new GetCommand({ TableName: table, Key: { idempotency_key: id }, ConsistentRead: true })))
        .Item as IdempotencyRecord | undefined;
      if (!existing) continue; // the first attempt failed and let go of the key: claim it
      if (existing.fingerprint !== fingerprint) {
        throw new ApiError(409, 'conflict', 'Idempotency-Key was already used with a different request body');
      }
      if (existing.state === 'done' && existing.sandbox_id) {
        const record = await getSandbox(existing.sandbox_id);
        if (record) return toView(record);
      }
      if (existing.state === 'in_progress' && Date.now() - Date.parse(existing.created_at) > abandonedAfterMs) {
        // The first attempt died mid-create (the reaper has failed whatever it made): let this one start over.
        await releaseAbandoned(table, existing);
        continue;
      }
      if (Date.now() > deadline) throw new ApiError(409, 'conflict', 'a request with this Idempotency-Key is still in progress');
      await new Promise((r) => setTimeout(r, 250));
      continue;
    }

    try {
      const view = await create();
      await dynamo().send(
        new UpdateCommand({
          TableName: table,
          Key: { idempotency_key: id },
          UpdateExpression: 'SET #state = :done, sandbox_id = :sid',
          ExpressionAttributeNames: { '#state': 'state' },
          ExpressionAttributeValues: { ':done': 'done', ':sid': view.sandbox_id },
        }),
      );
      return view;
    } catch (err) {
      // Let a retry try again rather than replaying a failure forever.
      await dynamo().send(new DeleteCommand({ TableName: table, Key: { idempotency_key: id } }));
      throw err;
    }
  }
}
