/**
 * The sandbox network and its egress firewall, with real iptables and real
 * containers. Only bridge addresses on this machine are ever targeted.
 * Run: node --import tsx --test test/host-agent/network.test.ts
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, connect, type Server } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { loadHostConfig } from '../../host-agent/src/config';
import { DockerClient } from '../../host-agent/src/docker';
import { chainNames, checkEgressRules, ensureSandboxNetwork } from '../../host-agent/src/network';
import { TestHost, docker, hostCommand } from './fixture';

const host = new TestHost();
let gateway: string;
let hostService: Server;
let hostPort: number;

before(async () => {
  await host.start();
  hostService = createServer((socket) => socket.end('host-service\n'));
  hostService.listen(0, '0.0.0.0');
  await once(hostService, 'listening');
  hostPort = (hostService.address() as { port: number }).port;
});
after(async () => {
  hostService?.close();
  await host.close();
});

const config = (extra: Record<string, string> = {}) => loadHostConfig(host.agentEnv(extra));

async function ipOf(sandboxId: string): Promise<string> {
  const info = await docker.getContainer(sandboxId).inspect();
  const ip = info.NetworkSettings.Networks[host.network]?.IPAddress;
  assert.ok(ip, `${sandboxId} has no address on ${host.network}`);
  return ip;
}

/** Tries a TCP connection from inside a sandbox; `open` only when the peer answered. */
async function probe(sandboxId: string, ip: string, port: number): Promise<'open' | 'closed'> {
  const result = await host.exec(sandboxId, `timeout 3 bash -c 'exec 3<>/dev/tcp/${ip}/${port}; head -c 64 <&3' 2>/dev/null && echo :open || echo :closed`);
  return result.stdout.trim().endsWith(':open') ? 'open' : 'closed';
}

describe('sandbox network', () => {
  let first: string;

  before(async () => {
    first = await host.createSandbox();
    const found = (await docker.getNetwork(host.network).inspect()).IPAM?.Config?.[0]?.Gateway;
    assert.ok(found, 'the sandbox network has an IPv4 gateway');
    gateway = found;
  });

  it('is a bridge with inter-container communication off, and every egress rule is in place', async () => {
    const info = await docker.getNetwork(host.network).inspect();
    assert.equal(info.Driver, 'bridge');
    assert.equal(info.Options?.['com.docker.network.bridge.enable_icc'], 'false');
    const check = await checkEgressRules(config());
    assert.deepEqual(check.missing, []);
    const c = chainNames(check.bridge!);
    const open = await hostCommand('iptables', ['-S', c.open]);
    for (const range of ['169.254.0.0/16', '10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '100.64.0.0/10']) {
      assert.match(open, new RegExp(`-d ${range.replace(/[./]/g, '\\$&')} -j DROP`));
    }
    assert.match(open, /--ctstate RELATED,ESTABLISHED -j ACCEPT/);
    assert.match(open, /--dport 853 -j DROP/, 'DNS-over-TLS is no way around the resolver');
    const jumps = await hostCommand('iptables', ['-S', 'DOCKER-USER']);
    assert.match(jumps, new RegExp(`-A DOCKER-USER -i ${check.bridge} -j ${c.forward}`));
    // The first sandbox's policy is the default, allow_all: its address takes the fast path, everyone else is dropped.
    const policy = await hostCommand('iptables', ['-S', c.policy]);
    assert.match(policy, new RegExp(`-A ${c.policy} -s ${(await ipOf(first)).replace(/\./g, '\\.')}/32 -g ${c.open}`));
    assert.match(policy, new RegExp(`-A ${c.policy} -j DROP\n$`));
    const nat = await hostCommand('iptables', ['-t', 'nat', '-S', c.nat]);
    assert.match(nat, /-p udp -m udp --dport 53 -j REDIRECT --to-ports 53/, 'every DNS packet goes to the sandbox resolver');
    assert.match(await hostCommand('iptables', ['-t', 'nat', '-S', 'PREROUTING']), new RegExp(`-A PREROUTING -i ${check.bridge} -j ${c.nat}`));
  });

  it('keeps sandboxes from reaching each other', async () => {
    const target = await host.createSandbox();
    await host.exec(
      target,
      `nohup perl -MIO::Socket::INET -e '$s = IO::Socket::INET->new(LocalPort => 8080, Listen => 5, ReuseAddr => 1) or die; while ($c = $s->accept) { print $c "sandbox-service\\n"; close $c }' >/dev/null 2>&1 &`,
    );
    const ip = await ipOf(target);
    // The listener is up: the host (allowed to reach containers) gets an answer.
    let answer = '';
    for (let attempt = 0; attempt < 20 && !answer.includes('sandbox-service'); attempt += 1) {
      answer = await new Promise<string>((resolve) => {
        const socket = connect(8080, ip);
        let data = '';
        socket.on('data', (d) => (data += d));
        socket.on('close', () => resolve(data));
        socket.on('error', () => resolve(''));
      });
      if (!answer) await new Promise((r) => setTimeout(r, 150));
    }
    assert.match(answer, /sandbox-service/);
    assert.equal(await probe(first, ip, 8080), 'closed');
  });

  it('blocks host services on the gateway unless EGRESS_ALLOW lists them', async () => {
    assert.equal(await probe(first, gateway, hostPort), 'closed');

    host.env = { EGRESS_ALLOW: `${gateway}:${hostPort}` };
    const allowedSandbox = await host.createSandbox(); // a create installs the rules for the new allow list
    assert.equal(await probe(allowedSandbox, gateway, hostPort), 'open');
    assert.equal(await probe(first, gateway, hostPort), 'open', 'the rules are per network, not per container');
    assert.deepEqual((await checkEgressRules(config())).missing, []);

    // Against the old configuration the allow rules are extra: the check says so.
    host.env = {};
    const stale = await checkEgressRules(config());
    assert.ok(
      stale.missing.some((line) => line.includes('extra or reordered')),
      JSON.stringify(stale.missing),
    );
    await ensureSandboxNetwork(config(), new DockerClient('/var/run/docker.sock'), { recheck: true });
    assert.equal(await probe(first, gateway, hostPort), 'closed');
  });

  it('reports a removed rule and puts it back', async () => {
    const { bridge } = await checkEgressRules(config());
    await hostCommand('iptables', ['-D', `SBX-OPEN-${bridge}`, '-d', '169.254.0.0/16', '-j', 'DROP']);
    await hostCommand('iptables', ['-D', 'INPUT', '-i', bridge!, '-j', `SBX-IN-${bridge}`]);
    const broken = await checkEgressRules(config());
    assert.ok(broken.missing.includes(`-A SBX-OPEN-${bridge} -d 169.254.0.0/16 -j DROP`), JSON.stringify(broken.missing));
    assert.ok(
      broken.missing.some((line) => line.startsWith(`-I INPUT -i ${bridge} -j SBX-IN-${bridge}`)),
      JSON.stringify(broken.missing),
    );
    await ensureSandboxNetwork(config(), new DockerClient('/var/run/docker.sock'), { recheck: true });
    assert.deepEqual((await checkEgressRules(config())).missing, []);
  });

  it('gives a sandbox created with network none only a loopback interface and no route', async () => {
    const isolated = await host.createSandbox({ network: 'none' });
    const info = await docker.getContainer(isolated).inspect();
    assert.equal(info.HostConfig.NetworkMode, 'none');
    const result = await host.exec(isolated, 'ls /sys/class/net; tail -n +2 /proc/net/route | wc -l');
    assert.equal(result.stdout, 'lo\n0\n');
    assert.equal(await probe(isolated, gateway, hostPort), 'closed');
  });
  it('keeps a sandbox under deny_all off the fast path: without the host daemon its TCP goes nowhere (fail closed)', async () => {
    const fenced = await host.createSandbox({ egress: 'deny_all' });
    const ip = await ipOf(fenced);
    const { bridge } = await checkEgressRules(config());
    const c = chainNames(bridge!);
    assert.doesNotMatch(await hostCommand('iptables', ['-S', c.policy]), new RegExp(`-s ${ip.replace(/\./g, '\\.')}/32`));
    assert.doesNotMatch(await hostCommand('iptables', ['-t', 'nat', '-S', c.natPolicy]), new RegExp(`-s ${ip.replace(/\./g, '\\.')}/32`));
    // Redirected to the egress proxy's port on the gateway, where (no daemon in this test) nothing listens: refused at
    // once, where an unredirected packet to this unrouted address would wait for the timeout.
    const result = await host.exec(fenced, `curl -sS -m 5 -o /dev/null https://203.0.113.1/ 2>&1; echo "rc=$?"`);
    assert.match(result.stdout, /rc=7\n$/);
  });

  it("gives an address Docker hands out again the policy of its new sandbox, not the departed one's fast path", async () => {
    const { bridge } = await checkEgressRules(config());
    const c = chainNames(bridge!);
    const leaving = await host.createSandbox();
    const address = await ipOf(leaving);
    assert.match(await hostCommand('iptables', ['-S', c.policy]), new RegExp(`-s ${address.replace(/\./g, '\\.')}/32`));
    // Removed behind the host-agent's back: its fast-path rule stays until something rebuilds the chain.
    await docker.getContainer(leaving).remove({ force: true });
    let reused: string | undefined;
    for (let attempt = 0; attempt < 5 && reused === undefined; attempt += 1) {
      const next = await host.createSandbox({ egress: 'deny_all' });
      if ((await ipOf(next)) === address) reused = next;
    }
    assert.ok(reused, `Docker did not hand ${address} out again within 5 creates`);
    assert.doesNotMatch(await hostCommand('iptables', ['-S', c.policy]), new RegExp(`-s ${address.replace(/\./g, '\\.')}/32`));
    assert.doesNotMatch(await hostCommand('iptables', ['-t', 'nat', '-S', c.natPolicy]), new RegExp(`-s ${address.replace(/\./g, '\\.')}/32`));
  });

  it('moves a sandbox off and back onto the fast path when its policy changes (the network verb)', async () => {
    const { bridge } = await checkEgressRules(config());
    const c = chainNames(bridge!);
    const sandbox = await host.createSandbox();
    const pattern = new RegExp(`-s ${(await ipOf(sandbox)).replace(/\./g, '\\.')}/32`);
    assert.match(await hostCommand('iptables', ['-S', c.policy]), pattern);
    assert.deepEqual(await host.ok('network', { sandboxId: sandbox, egress: { allow: ['Example.COM'] } }), { egress: { allow: ['example.com'] } });
    assert.doesNotMatch(await hostCommand('iptables', ['-S', c.policy]), pattern);
    assert.doesNotMatch(await hostCommand('iptables', ['-t', 'nat', '-S', c.natPolicy]), pattern);
    await host.ok('network', { sandboxId: sandbox, egress: 'allow_all' });
    assert.match(await hostCommand('iptables', ['-S', c.policy]), pattern);
    assert.deepEqual((await checkEgressRules(config())).missing, []);
    const refused = await host.run('network', { sandboxId: sandbox, egress: { allow: ['10.0.0.0/8'] } });
    assert.equal(refused.envelope.ok, false);
    assert.match(JSON.stringify(refused.envelope), /egress.allow.0: .*10\.0\.0\.0\/8.*never reach/);
  });
});
