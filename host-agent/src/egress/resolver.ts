/**
 * The sandbox resolver: a DNS forwarder on the sandbox network's gateway,
 * run by the host daemon. It is the only DNS path out of a sandbox (the
 * containers are given it as their DNS server, and the firewall redirects any
 * other port-53 traffic from the sandbox network to it), and it forwards from
 * the host itself, so it works whatever the host's upstream is: a public
 * resolver, the VPC resolver at VPC+2 or 169.254.169.253, or systemd-resolved
 * on 127.0.0.53 (addresses the sandboxes themselves may never reach).
 *
 * Each question is decided against the asking sandbox's egress policy: a name
 * the policy does not admit gets NXDOMAIN and a line in the egress log; an
 * admitted one is forwarded, and the IPv4 addresses of the answer are granted
 * to that sandbox (under the asked name, for the answer's TTL) so the egress
 * proxy lets it connect to them.
 */
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { readFileSync } from 'node:fs';
import { createConnection, createServer, isIPv6, type Server, type Socket } from 'node:net';
import dnsPacket from 'dns-packet';
import { logger } from '../../../lambdas/shared/logger';
import type { DnsUpstream } from '../config';
import type { EgressAuthority } from './authority';

/** Per-upstream wait before trying the next one. */
const upstreamTimeoutMs = 2_000;
const maxTcpMessage = 65_535;
/** A TCP client that sends nothing for this long is dropped. */
const tcpIdleMs = 10_000;

const rcode = { FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, REFUSED: 5 } as const;

/** The `nameserver` lines of a resolv.conf, as upstreams (port 53). */
export function resolvConfUpstreams(text: string): DnsUpstream[] {
  const upstreams: DnsUpstream[] = [];
  for (const line of text.split('\n')) {
    const match = /^\s*nameserver\s+(\S+)/.exec(line);
    // A zone index (fe80::1%eth0) cannot be dialled without its interface; such lines are rare and skipped.
    if (match && !match[1]!.includes('%')) upstreams.push({ address: match[1]!, port: 53 });
  }
  return upstreams;
}

/** An answer to `query` that carries only a response code (no records). */
export function bareAnswer(query: Buffer, code: number): Buffer | undefined {
  if (query.length < 12) return undefined;
  let questions: dnsPacket.Question[] = [];
  try {
    questions = dnsPacket.decode(query).questions ?? [];
  } catch {
    // A question we cannot parse is not echoed back.
  }
  const flags = (query.readUInt16BE(2) & dnsPacket.RECURSION_DESIRED) | dnsPacket.RECURSION_AVAILABLE | code;
  return dnsPacket.encode({ id: query.readUInt16BE(0), type: 'response', flags, questions });
}

export interface SandboxResolverOptions {
  /** The sandbox network's gateway address. */
  address: string;
  /** @default 53 */
  port?: number;
  /** Upstreams, asked in order; read on every query so a changed resolv.conf applies at once. */
  upstreams: () => DnsUpstream[];
  authority: EgressAuthority;
}

export interface SandboxResolver {
  address: string;
  port: number;
  close(): Promise<void>;
}

/** Reads the host's resolvers from /etc/resolv.conf, at most once a second. */
export function hostUpstreams(path = '/etc/resolv.conf'): () => DnsUpstream[] {
  let cached: DnsUpstream[] = [];
  let readAt = 0;
  return () => {
    if (Date.now() - readAt > 1_000) {
      cached = resolvConfUpstreams(readFileSync(path, 'utf8'));
      readAt = Date.now();
    }
    return cached;
  };
}

function askOverUdp(upstream: DnsUpstream, query: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    // A fresh socket per question: a random source port, and answers cannot be mixed up.
    const socket = createSocket(isIPv6(upstream.address) ? 'udp6' : 'udp4');
    const id = query.readUInt16BE(0);
    const timer = setTimeout(() => finish(new Error(`no answer from ${upstream.address}:${upstream.port} in ${upstreamTimeoutMs} ms`)), upstreamTimeoutMs);
    const finish = (error: Error | undefined, answer?: Buffer) => {
      clearTimeout(timer);
      socket.close();
      if (error) reject(error);
      else resolve(answer!);
    };
    socket.on('error', (error) => finish(error));
    socket.on('message', (answer, from) => {
      // Only the upstream's answer to this question (the id must match).
      if (from.address !== upstream.address || from.port !== upstream.port || answer.length < 12 || answer.readUInt16BE(0) !== id) return;
      finish(undefined, answer);
    });
    socket.send(query, upstream.port, upstream.address, (error) => error && finish(error));
  });
}

function askOverTcp(upstream: DnsUpstream, query: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const socket = createConnection({ host: upstream.address, port: upstream.port });
    let received = Buffer.alloc(0);
    const timer = setTimeout(
      () => finish(new Error(`no answer from ${upstream.address}:${upstream.port} (TCP) in ${upstreamTimeoutMs} ms`)),
      upstreamTimeoutMs,
    );
    const finish = (error: Error | undefined, answer?: Buffer) => {
      clearTimeout(timer);
      socket.destroy();
      if (error) reject(error);
      else resolve(answer!);
    };
    socket.on('error', (error) => finish(error));
    socket.on('connect', () => {
      const length = Buffer.alloc(2);
      length.writeUInt16BE(query.length);
      socket.write(Buffer.concat([length, query]));
    });
    socket.on('data', (chunk) => {
      received = Buffer.concat([received, chunk]);
      if (received.length >= 2 && received.length >= 2 + received.readUInt16BE(0)) finish(undefined, received.subarray(2, 2 + received.readUInt16BE(0)));
    });
    socket.on('end', () => finish(new Error(`${upstream.address}:${upstream.port} closed the TCP connection before answering`)));
  });
}

/**
 * Starts the resolver on `address:port` (UDP and TCP).
 *
 * @example
 *   const resolver = await startSandboxResolver({ address: '172.18.0.1', upstreams: hostUpstreams(), authority });
 */
export async function startSandboxResolver(o: SandboxResolverOptions): Promise<SandboxResolver> {
  const port = o.port ?? 53;
  const failures = new Map<string, number>();

  /** Forwards to the upstreams in order; the first answer wins. */
  async function forward(query: Buffer, transport: 'udp' | 'tcp'): Promise<Buffer> {
    const upstreams = o.upstreams().filter((u) => !(u.address === o.address && u.port === port));
    if (upstreams.length === 0)
      throw new Error('no upstream resolver: /etc/resolv.conf lists none (or only this resolver) and SANDBOX_DNS_UPSTREAM is not set');
    const errors: string[] = [];
    for (const upstream of upstreams) {
      try {
        return transport === 'udp' ? await askOverUdp(upstream, query) : await askOverTcp(upstream, query);
      } catch (error) {
        errors.push((error as Error).message);
      }
    }
    throw new Error(errors.join('; '));
  }

  /** One question from `sourceIp`: the answer to send back, or undefined to send nothing. */
  async function answer(query: Buffer, sourceIp: string, transport: 'udp' | 'tcp'): Promise<Buffer | undefined> {
    let question: dnsPacket.Question | undefined;
    try {
      const decoded = dnsPacket.decode(query);
      if (decoded.type !== 'query') return undefined;
      question = decoded.questions?.[0];
    } catch {
      return bareAnswer(query, rcode.FORMERR);
    }
    if (!question) return bareAnswer(query, rcode.FORMERR);
    const sandbox = await o.authority.identify(sourceIp).catch((error: Error) => {
      logger.error('sandbox resolver: cannot tell which sandbox asked; answering SERVFAIL', { sourceIp, err: error });
      return null;
    });
    if (sandbox === null) return bareAnswer(query, rcode.SERVFAIL);
    if (!sandbox) return bareAnswer(query, rcode.REFUSED); // not a sandbox of this host
    const verdict = o.authority.nameVerdict(sandbox, question.name);
    o.authority.note(sandbox, 'dns', question.name, verdict);
    if (!verdict.allowed) return bareAnswer(query, rcode.NXDOMAIN);

    let reply: Buffer;
    try {
      reply = await forward(query, transport);
    } catch (error) {
      // Say so once a minute per cause, not once per query.
      const message = (error as Error).message;
      if (Date.now() - (failures.get(message) ?? 0) > 60_000) {
        failures.set(message, Date.now());
        logger.error('sandbox resolver: upstream resolvers did not answer; sandboxes get SERVFAIL', { err: message });
      }
      return bareAnswer(query, rcode.SERVFAIL);
    }
    try {
      for (const record of dnsPacket.decode(reply).answers ?? []) {
        if (record.type === 'A' && typeof record.data === 'string') o.authority.grants.grant(sandbox.sandboxId, question.name, record.data, record.ttl ?? 0);
      }
    } catch (error) {
      // An answer we cannot read grants nothing; the sandbox still gets it (its connections will be refused).
      logger.warn('sandbox resolver: could not read an upstream answer; no addresses granted', { name: question.name, err: error });
    }
    return reply;
  }

  const udp: UdpSocket = createSocket({ type: 'udp4', reuseAddr: true });
  udp.on('message', (query, from) => {
    answer(query, from.address, 'udp')
      .then((reply) => reply && udp.send(reply, from.port, from.address))
      .catch((error) => logger.error('sandbox resolver: a UDP question failed', { err: error }));
  });
  await new Promise<void>((resolve, reject) => {
    udp.once('error', reject);
    udp.bind({ address: o.address, port, exclusive: true }, () => {
      udp.off('error', reject);
      udp.on('error', (error) => logger.error('sandbox resolver: UDP socket error', { err: error }));
      resolve();
    });
  });

  const tcp: Server = createServer((socket: Socket) => {
    let pending = Buffer.alloc(0);
    socket.setTimeout(tcpIdleMs, () => socket.destroy());
    socket.on('error', () => socket.destroy());
    socket.on('data', (chunk) => {
      pending = Buffer.concat([pending, chunk]);
      while (pending.length >= 2) {
        const length = pending.readUInt16BE(0);
        if (length === 0 || length > maxTcpMessage) return socket.destroy();
        if (pending.length < 2 + length) break;
        const query = Buffer.from(pending.subarray(2, 2 + length));
        pending = pending.subarray(2 + length);
        answer(query, socket.remoteAddress?.replace(/^::ffff:/, '') ?? '', 'tcp')
          .then((reply) => {
            if (!reply || socket.destroyed) return;
            const prefix = Buffer.alloc(2);
            prefix.writeUInt16BE(reply.length);
            socket.write(Buffer.concat([prefix, reply]));
          })
          .catch((error) => logger.error('sandbox resolver: a TCP question failed', { err: error }));
      }
    });
  });
  await new Promise<void>((resolve, reject) => {
    tcp.once('error', (error) => {
      udp.close();
      reject(error);
    });
    tcp.listen({ host: o.address, port }, () => resolve());
  });

  return {
    address: o.address,
    port,
    close: async () => {
      await Promise.all([new Promise<void>((r) => udp.close(() => r())), new Promise<void>((r) => tcp.close(() => r()))]);
    },
  };
}
