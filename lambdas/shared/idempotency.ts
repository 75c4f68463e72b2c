/**
 * Idempotent create: the first request with an Idempotency-Key claims it with
 * a conditional put and names its sandbox there as soon as the sandbox is
 * recorded; a retry with the same key and body answers that sandbox as it
 * stands (creating, ready or failed) and never makes a second container.
 *
 * Why not Powertools Idempotency: it replays the first answer; a retry here
 * must see the sandbox's current state (a create answered 202 `creating` is
 * `ready` a moment later), and an in-progress create must be reachable by its
 * retry within the same few seconds the first request is still running.
 */
import { createHash } from 'node:crypto';
import { DeleteCommand, GetCommand, PutCommand, UpdateCommand } from '@aws-sdk/lib-dynamodb';
import { conditionally, dynamo } from './clients/dynamodb';
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
/** A retry finding the first request between its claim and its sandbox record (milliseconds apart) waits this long at most. */
const waitForRecordMs = 5_000;
/**
 * A claim that names no sandbox yet and is older than this belongs to a
 * create that died before recording its sandbox (a create names it within
 * milliseconds of its claim, and no handler outlives API Gateway's 29 s).
 */
const abandonedAfterMs = 60_000;

/** Drops an abandoned claim, only if it is still the one we saw (a concurrent retry may have taken it over). */
async function releaseAbandoned(table: string, seen: IdempotencyRecord): Promise<void> {
  // Not applied: a concurrent retry took it over.
  await conditionally(
    dynamo().send(
      new DeleteCommand({
        TableName: table,
        Key: { idempotency_key: seen.idempotency_key },
        ConditionExpression: '#state = :in_progress AND created_at = :created',
        ExpressionAttributeNames: { '#state': 'state' },
        ExpressionAttributeValues: { ':in_progress': 'in_progress', ':created': seen.created_at },
      }),
    ),
  );
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
  deadline: number,
  create: (onRecorded: (sandboxId: string) => Promise<void>) => Promise<SandboxView>,
): Promise<SandboxView> {
  if (key === undefined) return create(async () => undefined);
  if (!keyPattern.test(key)) {
    throw new ApiError(400, 'validation_error', 'Idempotency-Key: must be 1-128 characters of letters, digits and _.:-');
  }
  const table = config().tables.idempotency;
  const id = `${tenantId}#${key}`;
  const fingerprint = createHash('sha256').update(stableJson(body)).digest('hex');
  const waitUntil = Math.min(deadline - 1_000, Date.now() + waitForRecordMs);

  for (;;) {
    const claim = await conditionally(
      dynamo().send(
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
      ),
    );
    if (!claim.applied) {
      const existing = (await dynamo().send(new GetCommand({ TableName: table, Key: { idempotency_key: id }, ConsistentRead: true }))).Item as
        | IdempotencyRecord
        | undefined;
      if (!existing) continue; // the first attempt failed and let go of the key: claim it
      if (existing.fingerprint !== fingerprint) {
        throw new ApiError(409, 'conflict', 'Idempotency-Key was already used with a different request body');
      }
      // The sandbox exists (ready, still creating, or failed): answer it as it is now.
      if (existing.sandbox_id) {
        const record = await getSandbox(existing.sandbox_id);
        if (record) return toView(record);
      }
      if (existing.state === 'in_progress' && Date.now() - Date.parse(existing.created_at) > abandonedAfterMs) {
        // The first attempt died mid-create (the reaper has failed whatever it made): let this one start over.
        await releaseAbandoned(table, existing);
        continue;
      }
      if (Date.now() > waitUntil) {
        throw new ApiError(409, 'conflict', 'a request with this Idempotency-Key is still in progress; retry shortly', { 'Retry-After': '1' });
      }
      await new Promise((r) => setTimeout(r, 250));
      continue;
    }

    const onRecorded = async (sandboxId: string) => {
      await dynamo().send(
        new UpdateCommand({
          TableName: table,
          Key: { idempotency_key: id },
          UpdateExpression: 'SET sandbox_id = :sid',
          ExpressionAttributeValues: { ':sid': sandboxId },
        }),
      );
    };
    try {
      const view = await create(onRecorded);
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
      await dynamo()
        .send(new DeleteCommand({ TableName: table, Key: { idempotency_key: id } }))
        .catch(() => undefined);
      throw err;
    }
  }
}
