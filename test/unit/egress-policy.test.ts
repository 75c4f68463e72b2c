/**
 * Egress policy rules in milliseconds: reading policies from untrusted JSON,
 * matching names and addresses, reading the name a connection carries, the
 * connection table's lines, and the answers the resolver remembers.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { describe, it } from 'node:test';
import { AddressGrants, EgressAuthority, type SandboxEgress } from '../../host-agent/src/egress/authority';
import type { EgressDecision } from '../../contract/egress-decision';
import { findRedirected, parseConntrackLine } from '../../host-agent/src/egress/conntrack';
import {
  allowlistAdmitsAddress,
  allowlistAdmitsName,
  compileAllowlist,
  isNeverReachable,
  readEgressPolicy,
  type EgressPolicy,
} from '../../contract/egress-policy';
import { bareAnswer, resolvConfUpstreams } from '../../host-agent/src/egress/resolver';
import { HttpRequestFramer, sniff } from '../../host-agent/src/egress/sniff';
import { createSandboxBody, networkBody } from '../../lambdas/shared/schemas';
import { loadConfig } from '../../lambdas/shared/config';

const sandbox = (policy: EgressPolicy): SandboxEgress => ({
  sandboxId: 'sbx-aaaaaaaaaaaaaaaaaaaa',
  policy,
  ...(typeof policy === 'object' ? { allowlist: compileAllowlist(policy.allow) } : {}),
});

function authority(decisions: EgressDecision[] = []) {
  // Directory and policy files are not consulted by the verdicts tested here.
  return new EgressAuthority(undefined as never, undefined as never, ['api.sandbox.example'], { record: (d) => decisions.push(d) }, new AddressGrants(5));
}

describe('reading an egress policy', () => {
  it('accepts the two words and an allowlist, lower-casing names, masking CIDRs and dropping duplicates', () => {
    assert.deepEqual(readEgressPolicy('allow_all'), { ok: true, policy: 'allow_all' });
    assert.deepEqual(readEgressPolicy('deny_all'), { ok: true, policy: 'deny_all' });
    assert.deepEqual(readEgressPolicy({ allow: ['API.GitHub.com.', 'api.github.com', '*.Example.com', '203.0.113.7/24', '198.51.100.9'] }), {
      ok: true,
      policy: { allow: ['api.github.com', '*.example.com', '203.0.113.0/24', '198.51.100.9/32'] },
    });
    assert.deepEqual(readEgressPolicy({ allow: [] }), { ok: true, policy: { allow: [] } });
  });

  it('refuses ranges no sandbox may reach, IPv6, misplaced wildcards and bad names, naming the entry', () => {
    const problem = (entry: string) => {
      const read = readEgressPolicy({ allow: ['ok.example.com', entry] });
      assert.equal(read.ok, false, entry);
      if (read.ok) return '';
      assert.deepEqual(read.path, ['allow', 1]);
      return read.message;
    };
    assert.match(problem('10.1.2.0/24'), /overlaps 10\.0\.0\.0\/8/);
    assert.match(problem('169.254.169.254'), /overlaps 169\.254\.0\.0\/16/);
    assert.match(problem('0.0.0.0/0'), /overlaps/);
    assert.match(problem('127.0.0.1'), /overlaps 127\.0\.0\.0\/8/);
    assert.match(problem('2001:db8::/32'), /IPv6/);
    assert.match(problem('api.*.example.com'), /wildcard/);
    assert.match(problem('*.com'), /too broad/);
    assert.match(problem('bad_name.example.com'), /not a host name/);
    assert.match(problem('203.0.113.0/33'), /not an IPv4 address or CIDR/);
  });

  it('refuses other shapes and more than 256 entries', () => {
    assert.equal(readEgressPolicy('allow').ok, false);
    assert.equal(readEgressPolicy({ allow: 'api.github.com' }).ok, false);
    assert.equal(readEgressPolicy({ allow: [], deny: [] }).ok, false);
    assert.equal(readEgressPolicy({ allow: Array.from({ length: 257 }, (_, i) => `h${i}.example.com`) }).ok, false);
  });

  it('names the offending field in the API schemas', () => {
    const body = createSandboxBody(loadConfig().limits);
    const bad = body.safeParse({ user_id: 'u1', config: { network: { egress: { allow: ['example.com', '192.168.1.1'] } } } });
    assert.equal(bad.success, false);
    assert.deepEqual(bad.error!.issues[0]!.path, ['config', 'network', 'egress', 'allow', 1]);
    assert.deepEqual(body.parse({ user_id: 'u1', config: { network: 'bridge' } }).config!.network, 'bridge');
    assert.deepEqual(body.parse({ user_id: 'u1', config: { network: 'none' } }).config!.network, 'none');
    assert.deepEqual(body.parse({ user_id: 'u1', config: { network: { egress: 'deny_all' } } }).config!.network, { egress: 'deny_all' });
    assert.equal(body.safeParse({ user_id: 'u1', config: { network: { egress: 'deny_all', mode: 'x' } } }).success, false);
    assert.equal(networkBody.safeParse({}).success, false);
    assert.deepEqual(networkBody.parse({ egress: { allow: ['*.Example.com'] } }), { egress: { allow: ['*.example.com'] } });
  });
});

describe('matching names and addresses', () => {
  const list = compileAllowlist(['api.github.com', '*.example.com', '203.0.113.0/24']);

  it('admits listed names, any depth below a wildcard but not the wildcard apex, whatever the case', () => {
    assert.ok(allowlistAdmitsName(list, 'api.github.com'));
    assert.ok(allowlistAdmitsName(list, 'API.GITHUB.COM.'));
    assert.ok(allowlistAdmitsName(list, 'a.example.com'));
    assert.ok(allowlistAdmitsName(list, 'a.b.example.com'));
    assert.ok(!allowlistAdmitsName(list, 'example.com'));
    assert.ok(!allowlistAdmitsName(list, 'badexample.com'));
    assert.ok(!allowlistAdmitsName(list, 'github.com'));
    assert.ok(!allowlistAdmitsName(list, 'api.github.com.evil.net'));
  });

  it('admits addresses in listed CIDRs only, and never private, link-local or reserved ones', () => {
    assert.ok(allowlistAdmitsAddress(list, '203.0.113.200'));
    assert.ok(!allowlistAdmitsAddress(list, '203.0.114.1'));
    for (const ip of ['10.0.0.1', '172.20.0.1', '192.168.1.1', '169.254.169.254', '100.64.0.1', '127.0.0.1', '0.0.0.0', '224.0.0.1', 'fd00:ec2::254']) {
      assert.ok(isNeverReachable(ip), ip);
    }
    assert.ok(!isNeverReachable('203.0.113.1'));
  });

  it('lets an address through only for an unexpired answer to a name the current policy admits', () => {
    const a = authority();
    const allowlist = sandbox({ allow: ['web-a.egress.test'] });
    const now = Date.now();
    a.grants.grant(allowlist.sandboxId, 'web-a.egress.test', '203.0.113.1', 30, now);
    a.grants.grant(allowlist.sandboxId, 'other.egress.test', '203.0.113.2', 30, now);
    assert.equal(a.addressVerdict(allowlist, '203.0.113.1', now).allowed, true);
    assert.equal(a.addressVerdict(allowlist, '203.0.113.2', now).allowed, false, 'answered, but for a name this policy does not admit');
    assert.equal(a.addressVerdict(allowlist, '203.0.113.1', now + 31_000).allowed, false, 'past its TTL');
    assert.equal(a.addressVerdict(sandbox('deny_all'), '203.0.113.1', now).allowed, false);
    assert.equal(a.addressVerdict(sandbox('allow_all'), '203.0.113.9', now).allowed, true);
    assert.equal(a.addressVerdict(sandbox('allow_all'), '10.0.0.1', now).allowed, false);
  });

  it('keeps a TTL-0 answer usable for the floor, so the connection right after the lookup gets through', () => {
    const grants = new AddressGrants(5);
    grants.grant('s', 'a.test', '203.0.113.1', 0, 1_000);
    assert.deepEqual(grants.namesFor('s', '203.0.113.1', 5_999), ['a.test']);
    assert.deepEqual(grants.namesFor('s', '203.0.113.1', 6_001), []);
  });

  it('admits the platform API name under every policy', () => {
    const a = authority();
    assert.equal(a.nameVerdict(sandbox('deny_all'), 'API.sandbox.example').allowed, true);
    assert.equal(a.nameVerdict(sandbox({ allow: [] }), 'api.sandbox.example').allowed, true);
    assert.equal(a.nameVerdict(sandbox('deny_all'), 'example.com').allowed, false);
  });
});

/** The first bytes a real TLS client sends, from Node's own TLS stack. */
async function clientHello(servername: string | undefined): Promise<Buffer> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as { port: number }).port;
  const received = new Promise<Buffer>((resolve) => server.once('connection', (socket) => socket.once('data', (d: Buffer) => (resolve(d), socket.destroy()))));
  const client = tlsConnect({ host: '127.0.0.1', port, ...(servername ? { servername } : {}), rejectUnauthorized: false });
  client.on('error', () => undefined);
  const hello = await received;
  client.destroy();
  server.close();
  return hello;
}

describe('the name a connection carries', () => {
  it('reads the SNI of a real ClientHello, and waits while it is incomplete', async () => {
    const hello = await clientHello('web-a.egress.test');
    assert.deepEqual(sniff(hello), { state: 'named', protocol: 'tls', name: 'web-a.egress.test' });
    assert.deepEqual(sniff(hello.subarray(0, 40)), { state: 'need-more' });
  });

  it('reassembles a ClientHello split over two TLS records', async () => {
    const hello = await clientHello('split.egress.test');
    const body = hello.subarray(5);
    const record = (part: Buffer) => Buffer.concat([Buffer.from([0x16, 0x03, 0x01, part.length >> 8, part.length & 255]), part]);
    const split = Buffer.concat([record(body.subarray(0, 30)), record(body.subarray(30))]);
    assert.deepEqual(sniff(split), { state: 'named', protocol: 'tls', name: 'split.egress.test' });
  });

  it('says so when TLS carries no name', async () => {
    assert.deepEqual(sniff(await clientHello(undefined)), { state: 'named', protocol: 'tls', name: undefined });
  });

  it('reads the HTTP Host, an absolute URI over Host, and refuses two Hosts by naming none', () => {
    const http = (text: string) => sniff(Buffer.from(text));
    assert.deepEqual(http('GET / HTTP/1.1\r\nHost: Web-A.egress.test:80\r\n\r\n'), { state: 'named', protocol: 'http', name: 'web-a.egress.test' });
    assert.deepEqual(http('GET http://web-b.egress.test/x HTTP/1.1\r\nHost: web-a.egress.test\r\n\r\n'), {
      state: 'named',
      protocol: 'http',
      name: 'web-b.egress.test',
    });
    assert.deepEqual(http('GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n'), { state: 'named', protocol: 'http', name: '' });
    assert.deepEqual(http('GET / HTTP/1.1\r\nHost: 203.0.113.1\r\n\r\n'), { state: 'named', protocol: 'http', name: undefined });
    assert.deepEqual(http('GET / HTTP/1.1\r\nHost: a.te'), { state: 'need-more' });
    assert.deepEqual(http('SSH-2.0-OpenSSH_9.2\r\n'), { state: 'other' });
  });
});

describe('following the requests of a plain HTTP connection', () => {
  const req = (host: string, extra = '') => `GET / HTTP/1.1\r\nHost: ${host}\r\n${extra}\r\n`;
  const push = (f: HttpRequestFramer, text: string) => {
    const step = f.push(Buffer.from(text));
    return 'error' in step ? step : { forward: step.forward.toString(), names: step.names };
  };

  it('reads the Host of every request on a kept-alive connection, pipelined or not', () => {
    const f = new HttpRequestFramer();
    assert.deepEqual(push(f, req('a.test')), { forward: req('a.test'), names: ['a.test'] });
    assert.deepEqual(push(f, req('b.test') + req('c.test')), { forward: req('b.test') + req('c.test'), names: ['b.test', 'c.test'] });
  });

  it('holds a request head back until it is whole', () => {
    const f = new HttpRequestFramer();
    assert.deepEqual(push(f, 'GET / HTTP/1.1\r\nHo'), { forward: '', names: [] });
    assert.deepEqual(push(f, 'st: a.test\r\n\r\n'), { forward: req('a.test'), names: ['a.test'] });
  });

  it('does not take a body for a request: Content-Length and chunked bodies are skipped whole', () => {
    const smuggled = req('evil.test');
    const f = new HttpRequestFramer();
    const post = `POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: ${smuggled.length}\r\n\r\n${smuggled}`;
    assert.deepEqual(push(f, post + req('b.test')), { forward: post + req('b.test'), names: ['a.test', 'b.test'] });
    const chunked = `POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n${smuggled.length.toString(16)};x=y\r\n${smuggled}\r\n0\r\nTrailer: 1\r\n\r\n`;
    assert.deepEqual(push(f, chunked), { forward: chunked, names: ['a.test'] });
    assert.deepEqual(push(f, '\r\n' + req('c.test')), { forward: '\r\n' + req('c.test'), names: ['c.test'] });
  });

  it('refuses what is not HTTP where a request is due, and a Content-Length it cannot trust', () => {
    const f = new HttpRequestFramer();
    push(f, req('a.test'));
    assert.ok('error' in push(f, 'SSH-2.0-x\r\n\r\n'));
    assert.ok('error' in push(new HttpRequestFramer(), req('a.test', 'Content-Length: 5\r\nContent-Length: 6\r\n')));
    assert.ok('error' in push(new HttpRequestFramer(), `POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n`));
  });

  it('stops reading after an Upgrade or CONNECT (the stream is no longer HTTP)', () => {
    const f = new HttpRequestFramer();
    push(f, req('a.test', 'Upgrade: websocket\r\nConnection: Upgrade\r\n'));
    assert.deepEqual(push(f, '\x81\x05hello'), { forward: '\x81\x05hello', names: [] });
  });
});

describe('the connection table', () => {
  const proc =
    'ipv4     2 tcp      6 431999 ESTABLISHED src=172.22.0.2 dst=203.0.113.7 sport=60200 dport=443 src=172.22.0.1 dst=172.22.0.2 sport=15001 dport=60200 [ASSURED] mark=0 zone=0 use=2';
  const tool =
    'tcp      6 431999 ESTABLISHED src=172.22.0.2 dst=203.0.113.8 sport=60201 dport=22 src=172.22.0.1 dst=172.22.0.2 sport=15001 dport=60201 [ASSURED] mark=0 use=1';

  it('reads both directions of a line in /proc and conntrack-tool form', () => {
    assert.deepEqual(parseConntrackLine(proc)?.original.dst, { ip: '203.0.113.7', port: 443 });
    assert.deepEqual(parseConntrackLine(tool)?.reply.src, { ip: '172.22.0.1', port: 15001 });
    assert.equal(parseConntrackLine('ipv4 2 udp 17 29 src=1.1.1.1 dst=2.2.2.2 sport=1 dport=53'), undefined);
  });

  it('finds the original destination of the redirected connection from one client port', () => {
    const proxy = { ip: '172.22.0.1', port: 15001 };
    assert.deepEqual(findRedirected([tool, proc], { ip: '172.22.0.2', port: 60200 }, proxy), { ip: '203.0.113.7', port: 443 });
    assert.equal(findRedirected([proc], { ip: '172.22.0.2', port: 60200 }, { ip: '172.22.0.1', port: 15002 }), undefined);
  });
});

describe('resolver helpers', () => {
  it('reads nameservers from resolv.conf', () => {
    assert.deepEqual(resolvConfUpstreams('# x\nnameserver 10.0.0.2\nsearch ec2.internal\nnameserver fe80::1%eth0\nnameserver 169.254.169.253\n'), [
      { address: '10.0.0.2', port: 53 },
      { address: '169.254.169.253', port: 53 },
    ]);
  });

  it('answers NXDOMAIN with the question and id of the query', async () => {
    const dnsPacket = (await import('dns-packet')).default;
    const query = dnsPacket.encode({ id: 4242, type: 'query', flags: dnsPacket.RECURSION_DESIRED, questions: [{ type: 'A', name: 'x.test' }] });
    const answer = dnsPacket.decode(bareAnswer(query, 3)!);
    assert.equal(answer.id, 4242);
    assert.equal(answer.type, 'response');
    assert.equal((answer as { rcode?: string }).rcode, 'NXDOMAIN');
    assert.deepEqual(answer.questions, [{ type: 'A', name: 'x.test', class: 'IN' }]);
  });
});
