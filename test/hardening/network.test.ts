/**
 * Sandbox networking on the real local stack: nothing inbound, no traffic
 * between sandboxes, no way to the instance metadata address or private
 * ranges (local listeners on a dummy interface stand in for them), only the
 * API's ip:port on the host, and `network: "none"` means no network at all.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { checkEgressRules } from '../../host-agent/src/network';
import { loadHostConfig } from '../../host-agent/src/config';
import { startLocalStack, type LocalStack } from '../../lib/local/stack';
import { apiClient, type ApiClient } from '../support/api-client';
import { docker, inspect } from '../support/docker';

let stack: LocalStack;
let api: ApiClient;
const created: string[] = [];
const servers: Server[] = [];
const dummy = `es-meta${process.pid % 1000}`;
const runId = `${process.pid}-${Date.now()}`;

/** Addresses a sandbox must never reach, bound on a local interface of the host so no packet leaves the machine. */
const forbiddenIpv4 = {
  'instance metadata (169.254.169.254)': '169.254.169.254',
  'RFC 1918 10/8': '10.255.255.254',
  'RFC 1918 192.168/16': '192.168.255.254',
  'carrier-grade NAT 100.64/10': '100.64.255.254',
};
const metadataIpv6 = 'fd00:ec2::254';

function listen(host: string, port = 0): Promise<{ server: Server; port: number }> {
  return new Promise((resolve, reject) => {
    const server = createServer((_req, res) => res.end('reached\n'));
    server.once('error', reject);
    server.listen(port, host, () => {
      servers.push(server);
      resolve({ server, port: (server.address() as { port: number }).port });
    });
  });
}

async function hostGet(url: string): Promise<string> {
  const res = await fetch(url, { signal: AbortSignal.timeout(5000) });
  return res.text();
}

async function createSandbox(config?: Record<string, unknown>): Promise<string> {
  const res = await api.create('network-user', config);
  assert.equal(res.status, 201, res.text);
  created.push(res.body.sandbox_id);
  return res.body.sandbox_id;
}

/** curl from inside a sandbox: the HTTP code, or `fail <curl exit code>`. */
async function curlFrom(id: string, url: string): Promise<string> {
  const res = await api.exec(id, `curl -gsS -o /dev/null -m 3 -w '%{http_code}' '${url}' 2>/dev/null || echo "fail $?"`, { timeout: 30 });
  assert.equal(res.status, 200, res.text);
  return res.body.stdout.trim().replace(/^000/, '');
}

function ip(...args: string[]): void {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

let ipv6Bound = false;

before(async () => {
  stack = await startLocalStack({ port: 0, reaperIntervalMs: 0 });
  api = apiClient(stack.url, stack.apiKey);
  spawnSync('ip', ['link', 'del', dummy]);
  // A dummy interface where the kernel has the module; else a port-less bridge (Docker needs bridges, so it is there).
  const made = spawnSync('ip', ['link', 'add', dummy, 'type', 'dummy']);
  if (made.status !== 0) ip('link', 'add', dummy, 'type', 'bridge');
  for (const address of Object.values(forbiddenIpv4)) ip('addr', 'add', `${address}/32`, 'dev', dummy);
  try {
    ip('-6', 'addr', 'add', `${metadataIpv6}/128`, 'dev', dummy, 'nodad');
    ipv6Bound = true;
  } catch {
    // IPv6 off on this host: the IPv6 check below says so and skips.
  }
  ip('link', 'set', dummy, 'up');
  for (const address of Object.values(forbiddenIpv4)) await listen(address, 80);
  if (ipv6Bound) await listen(metadataIpv6, 80);
});
after(async () => {
  for (const id of created) await api.destroy(id, false).catch(() => undefined);
  for (const s of servers) s.close();
  spawnSync('ip', ['link', 'del', dummy]);
  await stack?.close();
});

describe('egress from a sandbox', () => {
  let sandbox: string;
  before(async () => {
    sandbox = await createSandbox();
  });

  it('has the host firewall installed and complete', async () => {
    const check = await checkEgressRules(loadHostConfig(stack.env));
    assert.deepEqual(check.missing, []);
  });

  for (const [name, address] of Object.entries(forbiddenIpv4)) {
    it(`cannot reach ${name}, which the host itself reaches`, async () => {
      assert.equal(await hostGet(`http://${address}/`), 'reached\n');
      assert.match(await curlFrom(sandbox, `http://${address}/`), /^fail (7|28)$/);
    });
  }

  it(`cannot reach the IPv6 metadata address ${metadataIpv6}`, async (t) => {
    if (!ipv6Bound) return t.skip('IPv6 is off on this host');
    assert.equal(await hostGet(`http://[${metadataIpv6}]/`), 'reached\n');
    assert.match(await curlFrom(sandbox, `http://[${metadataIpv6}]/`), /^fail \d+$/);
  });

  it("reaches the API on the host's sandbox gateway, and nothing else there", async () => {
    assert.equal(await curlFrom(sandbox, `${stack.sandboxApiUrl}/health`), '200');
    const gateway = new URL(stack.sandboxApiUrl).hostname;
    const other = await listen(gateway);
    assert.equal(await hostGet(`http://${gateway}:${other.port}/`), 'reached\n');
    assert.match(await curlFrom(sandbox, `http://${gateway}:${other.port}/`), /^fail (7|28)$/);
  });

  it('cannot reach a container on another Docker network (private range, routed through the host)', async () => {
    const name = `hardening-neighbour-${runId}`;
    const neighbour = await docker.createContainer({
      name,
      Image: stack.env.SANDBOX_IMAGE,
      Entrypoint: ['python3', '-m', 'http.server', '8080', '--bind', '0.0.0.0'],
      Labels: { 'dev.ephemeral-sandbox.owner': 'ephemeral-sandbox' },
      HostConfig: { NetworkMode: 'bridge', AutoRemove: false },
    });
    try {
      await neighbour.start();
      const address = (await neighbour.inspect()).NetworkSettings.Networks.bridge!.IPAddress;
      let reached = '';
      for (let i = 0; i < 50 && reached === ''; i++) {
        reached = await hostGet(`http://${address}:8080/`).catch(() => '');
        if (!reached) await new Promise((r) => setTimeout(r, 100));
      }
      assert.ok(reached.length > 0, 'the host reaches the neighbour');
      // TCP to a private range is handed to the egress proxy, which refuses it (a reset: 56, or 7 when it lands while
      // curl still confirms the connect) and logs it.
      assert.match(await curlFrom(sandbox, `http://${address}:8080/`), /^fail (7|52|56)$/);
      await refusalLogged(sandbox, `${address}:8080`);
    } finally {
      await neighbour.remove({ force: true });
    }
  });
});

describe('between sandboxes', () => {
  it('one sandbox cannot reach another one, though the other serves and the host reaches it', async () => {
    const [a, b] = await Promise.all([createSandbox(), createSandbox()]);
    // A server that outlives the exec: its own session, output away from the exec's pipes.
    const serve = await api.exec(b, 'setsid nohup python3 -m http.server 8080 --bind 0.0.0.0 >/dev/null 2>&1 < /dev/null & sleep 1; echo started');
    assert.equal(serve.body.stdout, 'started\n', serve.text);
    assert.equal(await curlFrom(b, 'http://127.0.0.1:8080/'), '200', 'b serves');
    const addressOfB = (await inspect(b)).NetworkSettings.Networks[stack.env.SANDBOX_NETWORK!]!.IPAddress;
    assert.ok(addressOfB);
    assert.ok((await hostGet(`http://${addressOfB}:8080/`)).length > 0, 'the host reaches b');
    assert.match(await curlFrom(a, `http://${addressOfB}:8080/`), /^fail (7|52|56)$/);
    await refusalLogged(a, `${addressOfB}:8080`);
  });

  it('publishes no port: nothing from outside the host comes in', async () => {
    for (const id of created) {
      const info = await inspect(id);
      assert.deepEqual(info.HostConfig.PortBindings ?? {}, {});
      assert.ok(
        Object.values(info.NetworkSettings.Ports ?? {}).every((bindings) => !bindings || bindings.length === 0),
        id,
      );
    }
  });
});

describe('network: "none"', () => {
  it('gives the sandbox no interface but loopback, no route, and no way to the API', async () => {
    const id = await createSandbox({ network: 'none' });
    const info = await inspect(id);
    assert.equal(info.HostConfig.NetworkMode, 'none');
    const res = await api.exec(
      id,
      'ls /sys/class/net; echo ---; tail -n +2 /proc/net/route; echo ---; tail -n +2 /proc/net/ipv6_route 2>/dev/null | grep -v " lo$" || true',
    );
    assert.equal(res.status, 200, res.text);
    const [ifaces, routes, routes6] = res.body.stdout.split('---\n');
    assert.equal(ifaces, 'lo\n');
    assert.equal(routes, '', 'no IPv4 route');
    assert.equal(routes6, '', 'no IPv6 route but loopback');
    assert.match(await curlFrom(id, `${stack.sandboxApiUrl}/health`), /^fail 7$/);
    assert.match(await curlFrom(id, 'http://169.254.169.254/'), /^fail 7$/);
  });
});

describe('the host firewall at daemon start', () => {
  it('is put back by a restarted daemon, which checks it before it takes sandboxes', async () => {
    const config = loadHostConfig(stack.env);
    const { bridge } = await checkEgressRules(config);
    assert.ok(bridge);
    // Knock out one rule, as a careless operator or another tool might.
    execFileSync('iptables', ['-w', '10', '-D', 'INPUT', '-i', bridge, '-j', `SBX-IN-${bridge}`]);
    try {
      const broken = await checkEgressRules(config);
      assert.ok(
        broken.missing.some((m) => m.includes(`-I INPUT -i ${bridge} -j SBX-IN-${bridge}`)),
        broken.missing.join('\n'),
      );
    } finally {
      await stack.stopDaemon();
      const since = Date.now();
      stack.startDaemon();
      await waitForRegistration(since);
    }
    assert.deepEqual((await checkEgressRules(config)).missing, []);
    const sandbox = await createSandbox();
    assert.match(await curlFrom(sandbox, 'http://169.254.169.254/'), /^fail (7|28)$/);
  });
});

/** Waits for the egress log to show a refused connection to `target` (it is written in batches). */
async function refusalLogged(sandboxId: string, target: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  let last = '';
  while (Date.now() < deadline) {
    const res = await api.call('GET', `/sandboxes/${sandboxId}/network/log`);
    last = res.text;
    if (
      res.status === 200 &&
      res.body.decisions.some((d: { kind: string; target: string; verdict: string }) => d.kind === 'address' && d.target === target && d.verdict === 'refused')
    )
      return;
    await new Promise((r) => setTimeout(r, 200));
  }
  assert.fail(`no refusal of ${target} in the egress log of ${sandboxId}: ${last}`);
}

async function waitForRegistration(since: number): Promise<void> {
  const { getHost } = await import('../../lambdas/shared/host-store');
  while (Date.now() - since < 30_000) {
    const host = await getHost(stack.hostId);
    if (host && host.last_heartbeat_at >= since) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('the restarted host daemon did not register within 30 s');
}
