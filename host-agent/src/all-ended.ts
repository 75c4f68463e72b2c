/**
 * Promise.all for steps that each leave something behind (a mount, a renamed
 * container): a failure is thrown only once every step has ended, so the
 * caller's clean-up never races a step still running. The first failure (in
 * the steps' order) is the one thrown.
 *
 * @example
 *   const [home, cold] = await allEnded([mountHome(), mountCold()]);
 */
export async function allEnded<T extends readonly unknown[] | []>(steps: T): Promise<{ -readonly [K in keyof T]: Awaited<T[K]> }> {
  const results: PromiseSettledResult<unknown>[] = await Promise.allSettled(steps as readonly unknown[]);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
  return results.map((r) => (r as PromiseFulfilledResult<unknown>).value) as { -readonly [K in keyof T]: Awaited<T[K]> };
}
