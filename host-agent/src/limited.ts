/**
 * Runs at most `n` jobs at a time; the others wait their turn in the order
 * they asked. For work that slows everyone when run all at once: fifty creates
 * on one host, each making a home file system and a FUSE mount, take longer
 * side by side than a few at a time, and all finish near the end, while a
 * queue has the first ones ready in seconds and the last no later.
 *
 * A job still running after `turnMs` gives its turn to the next one and goes
 * on outside the count: one that hangs (a Docker call that never answers)
 * slows the queue once, never stops it.
 *
 * @example
 *   const creates = limited(4);
 *   await Promise.all(requests.map((r) => creates(() => create(r)))); // four at a time, first come first served
 */
export function limited(n: number, o: { turnMs?: number } = {}): <T>(work: () => Promise<T>) => Promise<T> {
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`limited: expected a whole number of at least 1, got ${n}`);
  let running = 0;
  const waiting: (() => void)[] = [];
  return async (work) => {
    // A turn is free, or one is handed over by a job that ends (running stays the same).
    if (running < n) running++;
    else await new Promise<void>((turn) => waiting.push(turn));
    let handedOn = false;
    const handOn = () => {
      if (handedOn) return;
      handedOn = true;
      const next = waiting.shift();
      if (next) next();
      else running--;
    };
    const timer = o.turnMs === undefined ? undefined : setTimeout(handOn, o.turnMs);
    try {
      return await work();
    } finally {
      clearTimeout(timer);
      handOn();
    }
  };
}
