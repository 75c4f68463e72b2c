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
import { checkEgressRules, ensureSandboxNetwork } from '../../host-agent/src/network';
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
  const result = (await host.exec(sandboxId, `timeout 3 bash -c 'exec 3<>/dev/tcp/${ip}/${port}; head -c 64 <&3' 2>/dev/null && echo :open || echo :closed`));
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
    const rules = await hostCommand('iptables', ['-S', `SBX-FWD-${check.bridge}`]);
    for (const range of ['169.254.0.0/16', '10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '100.64.0.0/10']) {
      assert.match(rules, new RegExp(`-d ${range.replace(/[./]/g, '\\$&')} -j DROP`));
    }
    assert.match(rules, /--ctstate RELATED,ESTABLISHED -j ACCEPT/);
    const jumps = await hostCommand('iptables', ['-S', 'DOCKER-USER']);
    assert.match(jumps, new RegExp(`-A DOCKER-USER -i ${check.bridge} -j SBX-FWD-${check.bridge}`));
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
    assert.ok(stale.missing.some((line) => line.includes('extra or reordered')), JSON.stringify(stale.missing));
    await ensureSandboxNetwork(config(), new DockerClient('/var/run/docker.sock'), { recheck: true });
    assert.equal(await probe(first, gateway, hostPort), 'closed');
  });

  it('reports a removed rule and puts it back', async () => {
    const { bridge } = await checkEgressRules(config());
    await hostCommand('iptables', ['-D', `SBX-FWD-${bridge}`, '-d', '169.254.0.0/16', '-j', 'DROP']);
    await hostCommand('iptables', ['-D', 'INPUT', '-i', bridge!, '-j', `SBX-IN-${bridge}`]);
    const broken = await checkEgressRules(config());
    assert.ok(broken.missing.includes(`-A SBX-FWD-${bridge} -d 169.254.0.0/16 -j DROP`), JSON.stringify(broken.missing));
    assert.ok(broken.missing.some((line) => line.startsWith(`-I INPUT -i ${bridge} -j SBX-IN-${bridge}`)), JSON.stringify(broken.missing));
    await ensureSandboxNetwork(config(), new DockerClient('/var/run/docker.sock'), { recheck: true });
    assert.deepEqual((await checkEgressRules(config())).missing, []);
  });

  it('gives a sandbox created with network none only a loopback interface and no route', async () => {
    const isolated = await host.createSandbox({ network: 'none' });
    const info = await docker.getContainer(isolated).inspect();
    assert.equal(info.HostConfig.NetworkMode, 'none');
    const result = (await host.exec(isolated, 'ls /sys/class/net; tail -n +2 /proc/net/route | wc -l'));
    assert.equal(result.stdout, 'lo\n0\n');
    assert.equal(await probe(isolated, gateway, hostPort), 'closed');
  });
});
