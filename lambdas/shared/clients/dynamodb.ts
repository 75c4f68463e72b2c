/** The DynamoDB document client, created once per process (endpoint from AWS_ENDPOINT_URL_DYNAMODB when set). */
import { ConditionalCheckFailedException, DynamoDBClient, TransactionCanceledException } from '@aws-sdk/client-dynamodb';
import { DynamoDBDocumentClient, QueryCommand, type QueryCommandInput } from '@aws-sdk/lib-dynamodb';
import { unmarshall } from '@aws-sdk/util-dynamodb';
import { boundByCallDeadline } from './deadline';
import { traced } from './capture';
import { timeSdkClient } from '../timing';

let client: DynamoDBDocumentClient | undefined;

export function dynamo(): DynamoDBDocumentClient {
  // Timeouts: a table that hangs (not refuses) must fail in time for a 503, not outlast the API's 29 s.
  if (!client) {
    const base = new DynamoDBClient({ maxAttempts: 4, requestHandler: { connectionTimeout: 2_000, requestTimeout: 4_000, throwOnRequestTimeout: true } });
    timeSdkClient(base, 'ddb');
    client = DynamoDBDocumentClient.from(traced(boundByCallDeadline(base, 'DynamoDB')), { marshallOptions: { removeUndefinedValues: true } });
  }
  return client;
}

/** Every item a Query matches, page by page, with the read capacity it consumed. */
export async function queryAll<T>(input: QueryCommandInput): Promise<{ items: T[]; consumedReadUnits: number }> {
  const items: T[] = [];
  let consumedReadUnits = 0;
  let startKey: Record<string, unknown> | undefined;
  do {
    const out = await dynamo().send(new QueryCommand({ ...input, ExclusiveStartKey: startKey }));
    consumedReadUnits += out.ConsumedCapacity?.CapacityUnits ?? 0;
    items.push(...((out.Items ?? []) as T[]));
    startKey = out.LastEvaluatedKey;
  } while (startKey);
  return { items, consumedReadUnits };
}

/** The item a refused write returned (`ReturnValuesOnConditionCheckFailure: 'ALL_OLD'`), as plain values; undefined when none was asked for. */
function itemAsItStood(item: Record<string, unknown> | undefined): Record<string, unknown> | undefined {
  return item ? (unmarshall(item as never) as Record<string, unknown>) : undefined;
}

/**
 * A conditional write's answer: applied (with the SDK's output), or refused by
 * its condition, with the item as it stood when the write was asked for
 * `ReturnValuesOnConditionCheckFailure: 'ALL_OLD'` (else undefined).
 */
export type Conditional<T> = { applied: true; output: T } | { applied: false; current: Record<string, unknown> | undefined };

/**
 * Awaits one conditional write (Put, Update or Delete). A condition that did
 * not hold is an answer, not an error: someone else changed the item first,
 * and the caller decides what that means. Every other failure is thrown.
 */
export async function conditionally<T>(write: Promise<T>): Promise<Conditional<T>> {
  try {
    return { applied: true, output: await write };
  } catch (err) {
    if (!(err instanceof ConditionalCheckFailedException)) throw err;
    return { applied: false, current: itemAsItStood(err.Item) };
  }
}

/**
 * Why one item of a cancelled transaction did not apply: its condition did
 * not hold (`conditionFailed`, with the item as it stood when the item asked
 * for `ALL_OLD`), or another reason in `code` (TransactionConflict: someone
 * else is writing it now; 'None' for the items that were fine).
 */
interface CancelledItem {
  code: string | undefined;
  conditionFailed: boolean;
  current: Record<string, unknown> | undefined;
}

/**
 * A transaction's answer: applied, or cancelled with each item's reason, in
 * the order of TransactItems, and the SDK's error for a caller to throw when
 * the reasons are not ones it expects.
 */
export type Transaction<T> = { applied: true; output: T } | { applied: false; items: CancelledItem[]; error: TransactionCanceledException };

/**
 * Awaits one TransactWrite. A cancelled transaction is an answer (each item
 * says why), not an error: the caller decides what the refusals mean. Every
 * other failure is thrown.
 */
export async function transactionally<T>(write: Promise<T>): Promise<Transaction<T>> {
  try {
    return { applied: true, output: await write };
  } catch (err) {
    if (!(err instanceof TransactionCanceledException)) throw err;
    return {
      applied: false,
      error: err,
      items: (err.CancellationReasons ?? []).map((r) => ({
        code: r.Code,
        conditionFailed: r.Code === 'ConditionalCheckFailed',
        current: itemAsItStood(r.Item),
      })),
    };
  }
}
