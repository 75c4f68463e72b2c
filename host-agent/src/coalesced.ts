/**
 * Runs an idempotent job at most once at a time, folding the calls that
 * arrive while it runs into one next run. For work that rebuilds from the
 * whole current state (the egress firewall): fifty creates in a burst need
 * two runs, not fifty, and every caller still waits for a run that began
 * after it asked, so it sees its own change applied.
 *
 * @example
 *   const refresh = coalesced(() => rebuildFirewall());
 *   await Promise.all([refresh(), refresh(), refresh()]); // one run, or two
 */
export function coalesced(run: () => Promise<void>): () => Promise<void> {
  let current: Promise<void> | undefined;
  let next: Promise<void> | undefined;
  const start = (): Promise<void> => {
    const p = run().finally(() => {
      if (current === p) current = undefined;
    });
    current = p;
    return p;
  };
  return () => {
    // A run is queued: it has not begun, so it serves this call too.
    if (next) return next;
    if (!current) return start();
    // The one running may have read the state before this caller changed it: queue one more.
    next = current
      .catch(() => undefined)
      .then(() => {
        next = undefined;
        return start();
      });
    return next;
  };
}
