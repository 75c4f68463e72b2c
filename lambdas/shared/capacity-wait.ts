/**
 * Creates that found no host with room: recorded `creating` with
 * `status_detail: waiting_for_capacity` and no host (the sparse by-waiting
 * index lists them, oldest first), their host request (env and token: the
 * caller's secrets) staged in S3 under a key of their own. A host with room
 * takes one with a single transaction (its share of the host and the
 * sandbox's host together, so neither can happen without the other) and
 * makes it; the reaper fails one nobody took within CAPACITY_WAIT_SECONDS.
 */
import { DeleteObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { TransactWriteCommand } from '@aws-sdk/lib-dynamodb';
import { dynamo, queryAll, transactionally } from './clients/dynamodb';
import { s3 } from './clients/s3';
import { config } from './config';
import { logger } from './logger';
import { allocationUpdate, type HostRecord } from './host-store';
import { resourcesOf, type Resources } from './placement';
import type { SandboxRecord } from './sandbox-record';
import { indexName, sandboxesTable } from './tables';
import { stagedRequestPrefix } from '../../contract/host-protocol';

/** Where a waiting create's host request waits (the hosts fetch and delete it; the bucket expires leftovers after a day). */
export function waitingRequestKey(sandboxId: string): string {
  return `${stagedRequestPrefix}waiting/${sandboxId}.json`;
}

/** Stages a waiting create's host request (it carries the caller's env and the sandbox token: never in a table). */
export async function stageWaitingRequest(sandboxId: string, request: unknown): Promise<string> {
  const key = waitingRequestKey(sandboxId);
  await s3().send(new PutObjectCommand({ Bucket: config().bucket, Key: key, Body: JSON.stringify(request), ContentType: 'application/json' }));
  return key;
}

/** Removes a staged request nobody will fetch any more (a waiting create that ended). */
export async function dropWaitingRequest(key: string | undefined): Promise<void> {
  if (!key) return;
  try {
    await s3().send(new DeleteObjectCommand({ Bucket: config().bucket, Key: key }));
  } catch (err) {
    // The bucket's lifecycle rule expires host-requests/ after a day: a leftover does not outlive that.
    logger.warn('a waiting create\u2019s staged request was not removed; the bucket lifecycle rule expires it', { key, err });
  }
}

export type WaitingCreate = Pick<SandboxRecord, 'sandbox_id' | 'created_at' | 'config' | 'deadline_at' | 'staged_request'>;

/** Creates waiting for a host, oldest first (Query on the sparse by-waiting index). */
export async function waitingCreates(): Promise<WaitingCreate[]> {
  const { items } = await queryAll<WaitingCreate>({
    TableName: config().tables.sandboxes,
    IndexName: indexName(sandboxesTable, 'by-waiting'),
    KeyConditionExpression: '#waiting = :capacity',
    ExpressionAttributeNames: { '#waiting': 'waiting' },
    ExpressionAttributeValues: { ':capacity': 'capacity' },
  });
  return items;
}

/** What each waiting create needs from a host. */
export function waitingDemand(waiting: readonly WaitingCreate[]): Resources[] {
  return waiting.map((w) => resourcesOf(w.config, config().limits.defaultDiskMb));
}

/**
 * Takes a waiting create for `host`: in one transaction, its share of the
 * host (while the host is active, unchanged in capacity and with room) and
 * the sandbox's host (while it still waits). 'taken', or why not: the host
 * has no room left ('no_room'), or the create is no longer waiting ('gone').
 */
export async function claimWaitingCreate(
  host: Pick<HostRecord, 'host_id' | 'capacity'>,
  sandboxId: string,
  request: Resources,
  createTimeoutSeconds: number,
  now = Date.now(),
): Promise<'taken' | 'no_room' | 'gone'> {
  const write = await transactionally(
    dynamo().send(
      new TransactWriteCommand({
        TransactItems: [
          { Update: allocationUpdate(host, sandboxId, request, now) },
          {
            Update: {
              TableName: config().tables.sandboxes,
              Key: { sandbox_id: sandboxId },
              // From now on it is an ordinary create on this host: the create timeout applies.
              UpdateExpression: 'SET host_id = :h, live_host_id = :h, deadline_at = :deadline, updated_at = :iso REMOVE #waiting, status_detail',
              ConditionExpression: '#status = :creating AND #waiting = :capacity',
              ExpressionAttributeNames: { '#status': 'status', '#waiting': 'waiting' },
              ExpressionAttributeValues: {
                ':h': host.host_id,
                ':deadline': now + createTimeoutSeconds * 1000,
                ':iso': new Date(now).toISOString(),
                ':creating': 'creating',
                ':capacity': 'capacity',
              },
            },
          },
        ],
      }),
    ),
  );
  if (write.applied) return 'taken';
  const [hostItem, sandboxItem] = write.items;
  if (sandboxItem?.conditionFailed) return 'gone';
  if (hostItem?.conditionFailed) return 'no_room';
  // TransactionConflict (another host claiming it right now) and the like: someone else is at it.
  return 'gone';
}
