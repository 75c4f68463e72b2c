/**
 * DNS and egress policy on the real local stack, with the upstream resolver
 * at a private address in a network namespace this test makes (as the VPC
 * resolver is on AWS) and web servers on public-looking addresses
 * (203.0.113.0/24) there: names resolve and HTTPS by name works from a
 * sandbox; deny_all stops names and hard-coded addresses; an allowlist admits
 * its names and refuses others by name, by hard-coded address, and by SNI or
 * Host on a shared address; a change at runtime is in effect within 2 s of the API's answer; the
 * egress log shows each refusal.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { isNeverReachable } from '../../contract/egress-policy';
import { startLocalStack, type LocalStack } from '../../lib/local/stack';
import { apiClient, type ApiClient } from '../support/api-client';
import { startUpstreamNet, type UpstreamNet } from '../support/upstream-net';

let stack: LocalStack;
let api: ApiClient;
let net: UpstreamNet;
const created: string[] = [];

interface Decision {
  time: string;
  kind: string;
  target: string;
  verdict: string;
  reason: string;
}

before(async () => {
  net = await startUpstreamNet({ ttl: 30 });
  stack = await startLocalStack({ port: 0, reaperIntervalMs: 0, env: { SANDBOX_DNS_UPSTREAM: net.dns } });
  api = apiClient(stack.url, stack.apiKey);
});
after(async () => {
  for (const id of created) await api.destroy(id, false).catch(() => undefined);
  await stack?.close();
  net?.close();
});

/**
 * curl's exit for a connection the egress proxy reset on its address: 35/52/56
 * (reset during TLS / an empty HTTP reply / a receive failure), or 7 when the
 * reset arrives while curl is still confirming the connect.
 */
const refusedAtConnect = /^fail (7|35|52|56)$/;

async function createSandbox(network?: unknown): Promise<string> {
  const res = await api.create('egress-user', network === undefined ? undefined : { network });
  assert.equal(res.status, 201, res.text);
  created.push(res.body.sandbox_id);
  // The test CA, so HTTPS by name is verified for real.
  const ca = await api.exec(res.body.sandbox_id, `cat > /tmp/ca.pem <<'PEM'\n${net.caPem}PEM`);
  assert.equal(ca.body.exit_code, 0, ca.text);
  return res.body.sandbox_id;
}

async function sh(id: string, command: string): Promise<string> {
  const res = await api.exec(id, command, { timeout: 30 });
  assert.equal(res.status, 200, res.text);
  return res.body.stdout;
}

/** curl from inside a sandbox: the body, or `fail <curl exit code>`. */
async function curl(id: string, args: string): Promise<string> {
  const out = await sh(id, `curl -sS -m 5 --cacert /tmp/ca.pem ${args} 2>/dev/null || echo "fail $?"`);
  return out.trim();
}

async function resolve(id: string, name: string): Promise<string> {
  return (await sh(id, `getent ahostsv4 ${name} | awk 'NR==1{print $1}'; echo "rc=\${PIPESTATUS[0]}"`)).trim();
}

async function decisions(id: string): Promise<Decision[]> {
  const res = await api.call('GET', `/sandboxes/${id}/network/log?limit=500`);
  assert.equal(res.status, 200, res.text);
  return res.body.decisions;
}

/** Waits (the log is written in batches) until the egress log holds a decision matching `want`. */
async function logged(id: string, want: Partial<Decision>): Promise<Decision> {
  const deadline = Date.now() + 10_000;
  let seen: Decision[] = [];
  while (Date.now() < deadline) {
    seen = await decisions(id);
    const hit = seen.find((d) => Object.entries(want).every(([k, v]) => d[k as keyof Decision] === v));
    if (hit) return hit;
    await new Promise((r) => setTimeout(r, 200));
  }
  assert.fail(`no ${JSON.stringify(want)} in the egress log of ${id}: ${JSON.stringify(seen.slice(0, 20))}`);
}

/**
 * When `probe` (a shell condition) first holds in the sandbox, by the host's clock (the container shares its
 * kernel): a command started before a change tries it every 50 ms for 20 s and prints the epoch ms. Timed inside
 * the sandbox, not by exec calls through the API, whose own round trip (a second on a busy machine) is not the
 * policy's. Returns the wait for that time. The tests bound it from the API's answer: the request's own path
 * (gateway, function, SSM, the host's CLI) is what a busy machine stretches (4.7 s from the request on one CI run).
 */
async function firstHolds(id: string, probe: string): Promise<() => Promise<number>> {
  const marker = `/tmp/watcher-${Date.now()}`;
  const script = `touch ${marker}; end=$(( $(date +%s) + 20 )); while [ "$(date +%s)" -lt "$end" ]; do if ${probe}; then date +%s%3N; exit 0; fi; sleep 0.05; done; echo never`;
  const started = await api.call('POST', `/sandboxes/${id}/commands`, { command: script });
  assert.ok([200, 202].includes(started.status), started.text);
  const path = `/sandboxes/${id}/commands/${started.body.command_id}`;
  // Watching before the change: one that started late would see the change late, and the test fail for nothing.
  const giveUpAt = Date.now() + 10_000;
  while ((await sh(id, `test -e ${marker} && echo up || echo not`)).trim() !== 'up') assert.ok(Date.now() < giveUpAt, 'the watcher did not start');
  return async () => {
    for (;;) {
      const res = await api.call('GET', `${path}?wait=20`);
      assert.equal(res.status, 200, res.text);
      if (res.body.status === 'running') continue;
      const out = String(res.body.stdout).trim();
      assert.match(out, /^\d{13}$/, `the condition never held: ${res.text}`);
      return Number(out);
    }
  };
}

/** A DNS question sent by hand from the sandbox to `server` (not its configured resolver): the answer's rcode. */
function directQuery(server: string, name: string): string {
  const script = [
    'import socket, struct, random',
    `name = ${JSON.stringify(name)}`,
    "q = struct.pack('>HHHHHH', random.randint(0, 65535), 0x0100, 1, 0, 0, 0) + b''.join(bytes([len(p)]) + p.encode() for p in name.split('.')) + b'\\x00' + struct.pack('>HH', 1, 1)",
    's = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)',
    `s.sendto(q, (${JSON.stringify(server)}, 53))`,
    "print('rcode', s.recv(4096)[3] & 15)",
  ].join('\n');
  return `python3 - <<'PY'\n${script}\nPY`;
}

describe('DNS where the upstream resolver is at a private address (as on AWS)', () => {
  let sandbox: string;
  before(async () => {
    sandbox = await createSandbox();
  });

  it('resolves a name, and HTTPS to the server reached by that name works', async () => {
    assert.ok(isNeverReachable(net.dns), `the upstream resolver ${net.dns} is at an address sandboxes may never reach`);
    assert.equal(await resolve(sandbox, 'web-a.egress.test'), `${net.web.shared}\nrc=0`);
    assert.equal(await curl(sandbox, 'https://web-a.egress.test/'), `hello web-a.egress.test at ${net.web.shared}`);
  });

  it('answers an unknown name NXDOMAIN, as the upstream said', async () => {
    assert.equal(await resolve(sandbox, 'missing.egress.test'), 'rc=2');
  });

  it('is the only DNS path: a question sent straight to another server is answered by the sandbox resolver', async () => {
    // Same name twice: straight to the upstream's private address, then to a public one. Both land on the host's resolver,
    // which asks the upstream from the host; a sandbox packet to those addresses would have been dropped or gone nowhere.
    const before = net.questions().length;
    assert.equal((await sh(sandbox, directQuery(net.dns, 'web-a.egress.test'))).trim(), 'rcode 0');
    assert.equal((await sh(sandbox, directQuery('198.51.100.53', 'web-a.egress.test'))).trim(), 'rcode 0');
    assert.equal(net.questions().length - before, 2);
  });
});

describe('deny_all', () => {
  let sandbox: string;
  before(async () => {
    sandbox = await createSandbox({ egress: 'deny_all' });
  });

  it('resolves no name, not even by asking another server directly, and the upstream never hears of it', async () => {
    assert.equal(await resolve(sandbox, 'web-a.egress.test'), 'rc=2');
    assert.equal((await sh(sandbox, directQuery(net.dns, 'direct-check.egress.test'))).trim(), 'rcode 3');
    assert.ok(!net.questions().some((q) => q.includes('direct-check.egress.test')), 'a refused name never reaches the upstream');
    await logged(sandbox, { kind: 'dns', target: 'web-a.egress.test', verdict: 'refused' });
  });

  it('reaches no hard-coded address, over HTTPS, HTTP or with a name forced onto it', async () => {
    assert.match(await curl(sandbox, `-k https://${net.web.shared}/`), refusedAtConnect);
    assert.match(await curl(sandbox, `http://${net.web.other}/`), refusedAtConnect);
    assert.match(await curl(sandbox, `--resolve web-a.egress.test:443:${net.web.shared} https://web-a.egress.test/`), refusedAtConnect);
    const refusal = await logged(sandbox, { kind: 'address', target: `${net.web.shared}:443`, verdict: 'refused' });
    assert.equal(refusal.reason, 'deny_all');
    assert.ok(Date.now() - Date.parse(refusal.time) < 60_000, refusal.time);
    await logged(sandbox, { kind: 'address', target: `${net.web.other}:80`, verdict: 'refused' });
  });

  it('still reaches the platform API on the host', async () => {
    assert.equal(await sh(sandbox, `curl -s -o /dev/null -w '%{http_code}' "$SANDBOX_API_URL/health"`), '200');
  });
});

describe('an allowlist', () => {
  let sandbox: string;
  before(async () => {
    sandbox = await createSandbox({ egress: { allow: ['web-a.egress.test', '*.wild.egress.test', `${net.web.cidr}/32`] } });
  });

  it('admits its names, wildcards included, by name over HTTPS and HTTP', async () => {
    assert.equal(await curl(sandbox, 'https://web-a.egress.test/'), `hello web-a.egress.test at ${net.web.shared}`);
    assert.equal(await curl(sandbox, 'http://web-a.egress.test/'), `hello web-a.egress.test at ${net.web.shared}`);
    assert.equal(await curl(sandbox, 'https://api.wild.egress.test/'), `hello api.wild.egress.test at ${net.web.wild}`);
  });

  it('admits a hard-coded address inside a listed CIDR', async () => {
    assert.equal(await curl(sandbox, `-k https://${net.web.cidr}/`), `hello - at ${net.web.cidr}`);
  });

  it('refuses another name by name', async () => {
    assert.equal(await resolve(sandbox, 'other.egress.test'), 'rc=2');
    const refusal = await logged(sandbox, { kind: 'dns', target: 'other.egress.test', verdict: 'refused' });
    assert.equal(refusal.reason, 'not on the allowlist');
  });

  it('refuses the other site by its hard-coded address', async () => {
    assert.match(await curl(sandbox, `-k https://${net.web.other}/`), refusedAtConnect);
    await logged(sandbox, { kind: 'address', target: `${net.web.other}:443`, verdict: 'refused' });
  });

  it('refuses an unlisted site behind the same address as a listed one, by its TLS server name and by its Host', async () => {
    // web-b shares web-a's address, which the resolver handed this sandbox for web-a.
    assert.equal(await curl(sandbox, 'https://web-a.egress.test/'), `hello web-a.egress.test at ${net.web.shared}`);
    assert.match(await curl(sandbox, `--resolve web-b.egress.test:443:${net.web.shared} https://web-b.egress.test/`), /^fail (35|56)$/);
    await logged(sandbox, { kind: 'sni', target: `web-b.egress.test (at ${net.web.shared}:443)`, verdict: 'refused' });
    assert.match(await curl(sandbox, `-H 'Host: web-b.egress.test' http://web-a.egress.test/`), /^fail (52|56)$/);
    await logged(sandbox, { kind: 'http_host', target: `web-b.egress.test (at ${net.web.shared}:80)`, verdict: 'refused' });
  });

  it('reads every request of a kept-alive HTTP connection: a second request for an unlisted site is refused', async () => {
    const out = await sh(
      sandbox,
      [
        'exec 3<>/dev/tcp/web-a.egress.test/80',
        "printf 'GET / HTTP/1.1\\r\\nHost: web-a.egress.test\\r\\n\\r\\n' >&3",
        'sleep 0.5',
        "printf 'GET / HTTP/1.1\\r\\nHost: web-b.egress.test\\r\\n\\r\\n' >&3",
        'timeout 3 cat <&3 | grep -o "hello [^ ]*"; true',
      ].join('; '),
    );
    assert.equal(out, 'hello web-a.egress.test\n');
    await logged(sandbox, { kind: 'http_host', target: `web-b.egress.test (at ${net.web.shared}:80)`, verdict: 'refused' });
  });

  it('logs what it admitted too, with time, name or address, and verdict', async () => {
    const entries = await decisions(sandbox);
    assert.ok(
      entries.some((d) => d.kind === 'dns' && d.target === 'web-a.egress.test' && d.verdict === 'allowed'),
      JSON.stringify(entries),
    );
    assert.ok(entries.every((d) => !Number.isNaN(Date.parse(d.time)) && d.kind && d.target && d.verdict && d.reason));
    // Newest first.
    assert.deepEqual(
      entries.map((d) => d.time),
      [...entries.map((d) => d.time)].sort().reverse(),
    );
  });
});

describe('a change while the sandbox runs', () => {
  it("is in effect within 2 s of the API's answer: a newly listed name resolves and connects, the dropped one is refused", async () => {
    const sandbox = await createSandbox({ egress: { allow: ['web-a.egress.test'] } });
    assert.equal(await curl(sandbox, 'https://web-a.egress.test/'), `hello web-a.egress.test at ${net.web.shared}`);
    const reachable = await firstHolds(sandbox, "curl -s -m 2 --cacert /tmp/ca.pem https://other.egress.test/ 2>/dev/null | grep -q '^hello other'");
    const started = Date.now();
    const put = await api.call('PUT', `/sandboxes/${sandbox}/network`, { egress: { allow: ['other.egress.test'] } });
    assert.equal(put.status, 200, put.text);
    const answered = Date.now();
    assert.deepEqual(put.body.config.network, { egress: { allow: ['other.egress.test'] } });
    const at = await reachable();
    assert.ok(at - answered <= 2_000, `in effect ${at - answered} ms after the answer (${at - started} ms after the request)`);
    assert.equal(await curl(sandbox, 'https://other.egress.test/'), `hello other.egress.test at ${net.web.other}`);
    assert.equal(await curl(sandbox, 'https://web-a.egress.test/'), 'fail 6', 'the dropped name no longer resolves');
    assert.deepEqual((await api.get(sandbox)).body.config.network, { egress: { allow: ['other.egress.test'] } });
  });

  it("takes an allow_all sandbox off the internet within 2 s of the API's answer", async () => {
    const sandbox = await createSandbox();
    assert.equal(await curl(sandbox, `-k https://${net.web.other}/`), `hello - at ${net.web.other}`);
    const refused = await firstHolds(sandbox, `! curl -s -m 2 -k -o /dev/null https://${net.web.other}/`);
    const started = Date.now();
    const put = await api.call('PUT', `/sandboxes/${sandbox}/network`, { egress: 'deny_all' });
    assert.equal(put.status, 200, put.text);
    const answered = Date.now();
    const at = await refused();
    assert.ok(at >= started, 'refused only once the change was asked for');
    assert.ok(at - answered <= 2_000, `in effect ${at - answered} ms after the answer (${at - started} ms after the request)`);
    assert.match(await curl(sandbox, `-k https://${net.web.other}/`), refusedAtConnect);
    assert.equal(await resolve(sandbox, 'web-a.egress.test'), 'rc=2');
    // And back.
    const back = await api.call('PUT', `/sandboxes/${sandbox}/network`, { egress: 'allow_all' });
    assert.equal(back.status, 200, back.text);
    assert.equal(await curl(sandbox, `-k https://${net.web.other}/`), `hello - at ${net.web.other}`);
  });

  /**
   * Two HTTPS requests on one kept-alive connection, the second once /tmp/go
   * appears: prints "first 200" and then "second 200" or "second failed".
   */
  const keepAlive = (name: string) =>
    [
      `rm -f /tmp/go /tmp/keepalive.out; setsid python3 - >/tmp/keepalive.out 2>&1 <<'PY' &`,
      'import http.client, ssl, time, os, sys',
      `c = http.client.HTTPSConnection(${JSON.stringify(name)}, context=ssl.create_default_context(cafile='/tmp/ca.pem'), timeout=2)`,
      "c.request('GET', '/'); r = c.getresponse(); r.read(); print('first', r.status, flush=True)",
      'deadline = time.time() + 4',
      "while not os.path.exists('/tmp/go') and time.time() < deadline: time.sleep(0.05)",
      'try:',
      "    c.request('GET', '/'); r = c.getresponse(); r.read(); print('second', r.status, flush=True)",
      'except Exception as e:',
      "    print('second failed', type(e).__name__, flush=True)",
      'PY',
      'for i in $(seq 1 60); do grep -q first /tmp/keepalive.out 2>/dev/null && break; sleep 0.05; done; cat /tmp/keepalive.out',
    ].join('\n');
  const second = async (sandbox: string) => {
    await sh(sandbox, 'touch /tmp/go');
    for (let i = 0; i < 50; i += 1) {
      const out = await sh(sandbox, 'cat /tmp/keepalive.out');
      if (out.includes('second')) return out.trim().split('\n').pop()!;
      await new Promise((r) => setTimeout(r, 100));
    }
    return 'no answer';
  };

  it('cuts open connections the new policy refuses, proxied or on the fast path (and keeps them when it admits them)', async () => {
    const listed = await createSandbox({ egress: { allow: ['web-a.egress.test', 'other.egress.test'] } });
    const open = await createSandbox();
    for (const sandbox of [listed, open]) {
      // Control: with no change, the kept-alive connection serves a second request.
      assert.equal((await sh(sandbox, keepAlive('web-a.egress.test'))).trim(), 'first 200');
      assert.equal(await second(sandbox), 'second 200');
      assert.equal((await sh(sandbox, keepAlive('web-a.egress.test'))).trim(), 'first 200');
      const put = await api.call('PUT', `/sandboxes/${sandbox}/network`, { egress: { allow: ['other.egress.test'] } });
      assert.equal(put.status, 200, put.text);
      await new Promise((r) => setTimeout(r, 500)); // the proxy re-decides open connections every 250 ms
      assert.match(await second(sandbox), /^second failed/, sandbox === listed ? 'proxied connection' : 'fast-path connection');
    }
  });
});

describe('the API', () => {
  it('refuses a bad policy with a 400 naming the field, at create and at change', async () => {
    const bad = await api.create('egress-user', { network: { egress: { allow: ['example.com', '10.0.0.0/8'] } } });
    assert.equal(bad.status, 400, bad.text);
    assert.equal(bad.body.error.code, 'validation_error');
    assert.match(bad.body.error.message, /^config\.network\.egress\.allow\.1: "10\.0\.0\.0\/8" overlaps 10\.0\.0\.0\/8/);
    const sandbox = await createSandbox();
    const put = await api.call('PUT', `/sandboxes/${sandbox}/network`, { egress: 'allow_some' });
    assert.equal(put.status, 400, put.text);
    assert.match(put.body.error.message, /^egress: must be "allow_all", "deny_all" or \{"allow": \[\.\.\.\]\}/);
    const extra = await api.call('PUT', `/sandboxes/${sandbox}/network`, { egress: 'deny_all', mode: 'x' });
    assert.equal(extra.status, 400, extra.text);
  });

  it('keeps "bridge" and "none" working, and refuses a policy for a sandbox without a network (409)', async () => {
    const bridge = await createSandbox('bridge');
    assert.equal((await api.get(bridge)).body.config.network, 'bridge');
    assert.equal(await curl(bridge, 'https://web-a.egress.test/'), `hello web-a.egress.test at ${net.web.shared}`);
    const res = await api.create('egress-user', { network: 'none' });
    assert.equal(res.status, 201, res.text);
    created.push(res.body.sandbox_id);
    const put = await api.call('PUT', `/sandboxes/${res.body.sandbox_id}/network`, { egress: 'deny_all' });
    assert.equal(put.status, 409, put.text);
    assert.equal(put.body.error.code, 'invalid_state');
  });

  it('answers 404 for the log of a sandbox that does not exist', async () => {
    const res = await api.call('GET', '/sandboxes/sbx-00000000000000000000/network/log');
    assert.equal(res.status, 404, res.text);
  });
});
