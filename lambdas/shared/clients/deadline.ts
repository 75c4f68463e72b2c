/**
 * The invocation's deadline, applied to every AWS call made on its behalf.
 *
 * The SDK's own timeouts bound one attempt; its retries multiply them. A
 * handler whose table hangs (not refuses) would go on retrying past API
 * Gateway's 29 s and the caller would get a 504 with nothing said. Inside
 * `withCallDeadline`, an attempt that would start past the deadline fails at
 * once and one in flight is abandoned at it, with `DeadlineExceeded`, which
 * `dependencyDown` reads as the service being down: the answer is a 503 with
 * Retry-After in time. Outside it (the host daemon, scripts) nothing changes.
 */
import { AsyncLocalStorage } from 'node:async_hooks';

const current = new AsyncLocalStorage<{ until: number }>();

/** The error an AWS call made past the invocation's deadline fails with. */
export class DeadlineExceeded extends Error {
  override readonly name = 'DeadlineExceeded';
  constructor(
    readonly $service: string,
    /** The time was up before the call could start (the time went elsewhere, not to this service). */
    readonly before = false,
  ) {
    super(before ? `this request's time ran out before ${$service} could be asked` : `${$service} did not answer within this request's time`);
  }
}

/** Runs `fn` with its AWS calls bounded by `until` (epoch ms). */
export function withCallDeadline<T>(until: number, fn: () => Promise<T>): Promise<T> {
  return current.run({ until }, fn);
}

interface MiddlewareStackLike {
  add(
    middleware: (next: (args: unknown) => Promise<unknown>) => (args: unknown) => Promise<unknown>,
    options: { step: 'finalizeRequest'; priority: 'low'; name: string },
  ): void;
}

/**
 * Adds the deadline to a client: per attempt (after the retry middleware),
 * so a retry is never started past the deadline.
 */
export function boundByCallDeadline<C extends { middlewareStack: unknown }>(client: C, service: string): C {
  (client.middlewareStack as MiddlewareStackLike).add(
    (next) => async (args) => {
      const deadline = current.getStore();
      if (!deadline) return next(args);
      const left = deadline.until - Date.now();
      if (left <= 0) throw new DeadlineExceeded(service, true);
      let timer: NodeJS.Timeout | undefined;
      try {
        return await Promise.race([
          next(args),
          new Promise<never>((_, reject) => {
            timer = setTimeout(() => reject(new DeadlineExceeded(service)), left);
          }),
        ]);
      } finally {
        clearTimeout(timer);
      }
    },
    { step: 'finalizeRequest', priority: 'low', name: 'callDeadline' },
  );
  return client;
}
