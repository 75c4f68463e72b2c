/**
 * freePort(): a port below the kernel's ephemeral range (which listeners on
 * port 0 and outgoing connections of the stacks running beside take from), free
 * to listen on.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { describe, it } from 'node:test';
import { freePort } from '../../lib/local/free-port';

describe('freePort()', () => {
  it('answers a port below the ephemeral range that a listener can take', async () => {
    const [ephemeralLow] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
    for (let i = 0; i < 20; i++) {
      const port = await freePort();
      assert.ok(port >= 10_000 && port < ephemeralLow!, `${port} is below ${ephemeralLow}`);
      const server = createServer();
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(port, '127.0.0.1', () => resolve());
      });
      await new Promise((r) => server.close(r));
    }
  });
});
