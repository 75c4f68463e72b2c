/**
 * Telling a dependency that is down (DynamoDB, S3, SSM unreachable, throttling
 * or failing on its side) from a fault of ours: the first is answered 503 with
 * Retry-After and retried where the work must land; the second is a bug.
 */

/**
 * The AWS service behind an error that says it is down, throttling or
 * unreachable (a retry later would go through), or undefined.
 */
export function dependencyDown(err: unknown): string | undefined {
  const e = err as { name?: string; code?: string; $metadata?: { httpStatusCode?: number }; $retryable?: unknown; $service?: string; cause?: unknown } | null;
  if (!e || typeof e !== 'object') return undefined;
  const service = typeof e.$service === 'string' ? e.$service : 'a service this API depends on';
  const transientNames = [
    'ThrottlingException',
    'ProvisionedThroughputExceededException',
    'RequestLimitExceeded',
    'InternalServerError',
    'InternalFailure',
    'ServiceUnavailable',
    'ServiceUnavailableException',
    'TimeoutError',
    'RequestTimeout',
    'TransactionConflictException',
    // Our own: an AWS call that would outlast the request's time (clients/deadline.ts).
    'DeadlineExceeded',
  ];
  const networkCodes = ['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EAI_AGAIN', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'UND_ERR_SOCKET'];
  if (transientNames.includes(e.name ?? '') || networkCodes.includes(e.code ?? '')) return service;
  if ((e.$metadata?.httpStatusCode ?? 0) >= 500) return service;
  if (e.cause && e.cause !== err) return dependencyDown(e.cause);
  return undefined;
}

/**
 * Runs `fn` until it succeeds, retrying while its dependency is down (backing
 * off up to `maxDelayMs`), for at most `forMs`; any other error is thrown at once.
 */
export async function whileDependencyDown<T>(fn: () => Promise<T>, o: { forMs: number; maxDelayMs?: number; onRetry?: (err: unknown) => void }): Promise<T> {
  const until = Date.now() + o.forMs;
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (!dependencyDown(err) || Date.now() >= until) throw err;
      o.onRetry?.(err);
      await new Promise((r) => setTimeout(r, Math.min(o.maxDelayMs ?? 10_000, 100 * 2 ** Math.min(attempt, 10))));
    }
  }
}
