import { randomInt } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';

/**
 * A TCP port free on 127.0.0.1 right now, for a listener made seconds later (the stack's API: its
 * functions are given its URL first). Chosen below the kernel's ephemeral range: a port from that
 * range could be handed meanwhile to any listener on port 0 or any outgoing connection of another
 * stack running beside this one (EADDRINUSE when the API listens); a random one below it is only
 * ever taken by another caller of this function picking the same of twenty thousand.
 */
export async function freePort(): Promise<number> {
  const low = 10_000;
  const high = Math.max(low + 1_000, ephemeralLow()) - 1;
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = randomInt(low, high + 1);
    if (await isFree(port)) return port;
  }
  throw new Error(`no free TCP port on 127.0.0.1 between ${low} and ${high} after 50 tries`);
}

/** The first port of the kernel's ephemeral range. */
function ephemeralLow(): number {
  try {
    const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    if (Number.isInteger(low) && low > 0) return low;
  } catch {
    // not Linux: the IANA range
  }
  return 49152;
}

function isFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.unref();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}
