/**
 * The egress proxy: every TCP connection of a sandbox under deny_all or an
 * allowlist (and allow_all's attempts at private ranges) is redirected here
 * by the nat rules. For each one it learns where the connection was going
 * (conntrack), decides the address against the sandbox's policy (listed
 * CIDRs, and addresses the sandbox resolver handed it for an admitted name,
 * within their TTL), then reads the name the connection carries, TLS SNI or
 * HTTP Host on any port, and decides that too: an unlisted site behind the
 * address of a listed one stays out. Allowed connections are spliced to
 * their destination from the host; refused ones are reset and logged.
 * When a sandbox's policy changes, its open connections are decided again
 * and the ones the new policy refuses are cut.
 */
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { logger } from '../../../lambdas/shared/logger';
import type { EgressAuthority, SandboxEgress, Verdict } from './authority';
import type { Endpoint, OriginalDestination } from './conntrack';
import { isNeverReachable } from '../../../contract/egress-policy';
import { HttpRequestFramer, maxSniffBytes, sniff } from './sniff';

/** Open proxied connections one sandbox may hold. */
const maxConnectionsPerSandbox = 1024;
/** How long a client may take to send the first bytes we wait for (TLS hello, HTTP head). */
const sniffTimeoutMs = 30_000;
/** How often open connections are checked against a changed policy. */
const recheckIntervalMs = 250;
const upstreamConnectTimeoutMs = 15_000;

interface Tracked {
  sandboxId: string;
  destination: Endpoint;
  /** The policy object the connection was last decided under (PolicyFiles hands out a new one when the file changes). */
  decidedUnder: SandboxEgress;
  /** Names under which the resolver had handed out the address when the connection was admitted. */
  grantedAs: string[];
  /** The name the connection carries (SNI or Host), once read. */
  carried: { kind: 'sni' | 'http_host'; name: string } | undefined;
  /** Resets both sides; logs the verdict unless it is the daemon stopping. */
  cut(reason: Verdict | undefined, kind: 'address' | 'sni' | 'http_host'): void;
}

export interface EgressProxyOptions {
  /** The sandbox network's gateway address. */
  address: string;
  port: number;
  authority: EgressAuthority;
  originalDestination: OriginalDestination;
}

export interface EgressProxy {
  port: number;
  /** Open connections per sandbox (for tests and status). */
  openConnections(): Map<string, number>;
  close(): Promise<void>;
}

function reset(socket: Socket): void {
  if (!socket.destroyed) socket.resetAndDestroy();
}

/** Starts the proxy; resolves once it listens. */
export async function startEgressProxy(o: EgressProxyOptions): Promise<EgressProxy> {
  const open = new Map<string, Set<Tracked>>();
  const proxy: Endpoint = { ip: o.address, port: o.port };

  const track = (t: Tracked) => {
    let set = open.get(t.sandboxId);
    if (!set) {
      set = new Set();
      open.set(t.sandboxId, set);
    }
    set.add(t);
    return () => {
      set!.delete(t);
      if (set!.size === 0) open.delete(t.sandboxId);
    };
  };

  async function handle(client: Socket): Promise<void> {
    client.on('error', () => client.destroy());
    const source: Endpoint = { ip: (client.remoteAddress ?? '').replace(/^::ffff:/, ''), port: client.remotePort ?? 0 };
    const sandbox = await o.authority.identify(source.ip);
    if (!sandbox) return reset(client); // not a sandbox of this host
    if ((open.get(sandbox.sandboxId)?.size ?? 0) >= maxConnectionsPerSandbox) {
      o.authority.note(sandbox, 'address', 'proxy', { allowed: false, reason: `more than ${maxConnectionsPerSandbox} open connections` });
      return reset(client);
    }
    const destination = await o.originalDestination(source, proxy);
    if (!destination) {
      logger.error('egress proxy: no connection-tracking entry for a redirected connection; refusing it', { sandboxId: sandbox.sandboxId, source });
      // A refusal the sandbox's owner sees in its egress log too, though where it was going is not known.
      o.authority.note(sandbox, 'address', 'unknown', { allowed: false, reason: 'its original destination could not be read from connection tracking' });
      return reset(client);
    }
    const target = `${destination.ip}:${destination.port}`;
    const addressVerdict = o.authority.addressVerdict(sandbox, destination.ip);
    o.authority.note(sandbox, 'address', target, addressVerdict);
    if (!addressVerdict.allowed) return reset(client);

    client.pause();
    const upstream = createConnection({ host: destination.ip, port: destination.port, allowHalfOpen: true });
    upstream.setTimeout(upstreamConnectTimeoutMs, () => upstream.connecting && upstream.destroy(new Error('connect timed out')));
    upstream.on('connect', () => upstream.setTimeout(0));
    let untrack = () => {};
    const tracked: Tracked = {
      sandboxId: sandbox.sandboxId,
      destination,
      decidedUnder: sandbox,
      grantedAs: o.authority.grants.namesFor(sandbox.sandboxId, destination.ip),
      carried: undefined,
      cut: (verdict, kind) => {
        if (verdict) o.authority.note(tracked.decidedUnder, kind, tracked.carried ? `${tracked.carried.name} (at ${target})` : target, verdict);
        reset(client);
        upstream.destroy();
      },
    };
    untrack = track(tracked);
    const done = () => {
      untrack();
      reset(client);
      upstream.destroy();
    };
    upstream.on('error', done);
    client.on('close', () => {
      untrack();
      upstream.destroy();
    });
    // Server-first protocols (SMTP, MySQL) get their greeting at once; what the client sends waits for the name check.
    upstream.pipe(client);

    let head = Buffer.alloc(0);
    const timer = setTimeout(() => done(), sniffTimeoutMs);
    const onData = (chunk: Buffer) => {
      head = Buffer.concat([head, chunk]);
      const seen = sniff(head);
      if (seen.state === 'need-more') {
        if (head.length > maxSniffBytes) done();
        return;
      }
      clearTimeout(timer);
      client.off('data', onData);
      client.off('end', onEnd);
      if (seen.state === 'named' && seen.protocol === 'http') return followHttp(head);
      if (seen.state === 'named' && seen.name !== undefined && !admitsName('sni', seen.name)) return done();
      upstream.write(head);
      client.pipe(upstream);
    };
    /** Decides a name the connection carries; remembers it for re-decisions when the policy changes. */
    const admitsName = (kind: 'sni' | 'http_host', name: string): boolean => {
      tracked.carried = { kind, name };
      const verdict = o.authority.nameVerdict(tracked.decidedUnder, name);
      o.authority.note(tracked.decidedUnder, kind, `${name} (at ${target})`, verdict);
      return verdict.allowed;
    };
    /** Plain HTTP: every request's Host is decided before the request goes on, not only the first one's. */
    const followHttp = (first: Buffer) => {
      const framer = new HttpRequestFramer();
      const feed = (chunk: Buffer) => {
        const step = framer.push(chunk);
        if ('error' in step) {
          o.authority.note(tracked.decidedUnder, 'http_host', target, { allowed: false, reason: `refused: ${step.error}` });
          return done();
        }
        if (!step.names.every((name) => name === undefined || admitsName('http_host', name))) return done();
        if (step.forward.length > 0 && !upstream.write(step.forward)) {
          client.pause();
          upstream.once('drain', () => client.resume());
        }
      };
      client.on('data', feed);
      client.on('end', () => upstream.end());
      feed(first);
    };
    const onEnd = () => {
      clearTimeout(timer);
      upstream.end(head);
    };
    client.on('data', onData);
    client.on('end', onEnd);
    client.resume();
  }

  /** Decides every open connection of a sandbox whose policy changed, again. */
  function recheck(): void {
    for (const [sandboxId, connections] of open) {
      const current = o.authority.policies.policyOf(sandboxId);
      for (const t of connections) {
        if (t.decidedUnder === current) continue;
        t.decidedUnder = current;
        const address = o.authority.addressVerdict(current, t.destination.ip);
        // An answer whose TTL ran out since does not end a connection made on it, while its name is still admitted.
        const stillGranted = !isNeverReachable(t.destination.ip) && t.grantedAs.some((name) => o.authority.nameVerdict(current, name).allowed);
        if (!address.allowed && !stillGranted) {
          t.cut(address, 'address');
          continue;
        }
        if (t.carried) {
          const name = o.authority.nameVerdict(current, t.carried.name);
          if (!name.allowed) t.cut(name, t.carried.kind);
        }
      }
    }
  }

  const server: Server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, (client) => {
    handle(client).catch((error) => {
      logger.error('egress proxy: a connection failed', { err: error });
      reset(client);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: o.address, port: o.port }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', (error) => logger.error('egress proxy: server error', { err: error }));
  const interval = setInterval(recheck, recheckIntervalMs);
  interval.unref();

  return {
    port: o.port,
    openConnections: () => new Map([...open].map(([id, set]) => [id, set.size])),
    close: async () => {
      clearInterval(interval);
      for (const set of open.values()) for (const t of set) t.cut(undefined, 'address');
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
