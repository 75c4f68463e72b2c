/**
 * The local stack's back-end services (DynamoDB, S3, SSM) on the real stack,
 * probed as an attacker would: an unprivileged local user (made for the test,
 * requests sent with runuser) and a container on Docker's default bridge.
 * Only requests signed with the stack's own credentials get through: unsigned
 * ones, other keys, s3rver's public S3RVER key, a wrong secret and a body
 * changed after signing are all refused, nothing they asked for happens, and
 * the credentials are nowhere such a user can read them.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync, spawnSync } from 'node:child_process';
import { randomBytes, createHash } from 'node:crypto';
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { GetCommandInvocationCommand, SendCommandCommand } from '@aws-sdk/client-ssm';
import { s3 } from '../../lambdas/shared/clients/s3';
import { ssm } from '../../lambdas/shared/clients/ssm';
import { startLocalStack, type LocalStack } from '../../lib/local/stack';
import { apiClient } from '../support/api-client';
import { docker } from '../support/docker';
import { signRequest, type RawRequest } from '../support/sigv4';

const run = promisify(execFile);
let stack: LocalStack;
let work: string;
const probeUser = `sbx-probe-${process.pid % 100000}`;
const runId = randomBytes(4).toString('hex');
const secret = `probe-secret-${runId}`;
const marker = join(tmpdir(), `sbx-probe-ran-${runId}`);
const homeKey = `tenants/default/users/victim-${runId}/hot/.profile`;
const intruderKey = `esk_intruder01_${randomBytes(24).toString('base64url')}`;

interface Probe {
  name: string;
  url: string;
  method: string;
  headers: Record<string, string>;
  body?: string;
}
type ProbeResult = { status: number; text: string } | { error: string };

/** Runs where it is put (as a user, in a container): sends each request as given, reports what came back. */
const probeScript = `
import { readFileSync } from 'node:fs';
const { requests, files } = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const results = {};
await Promise.all(requests.map(async (r) => {
  try {
    const res = await fetch(r.url, { method: r.method, headers: r.headers, body: r.body, signal: AbortSignal.timeout(4000) });
    results[r.name] = { status: res.status, text: (await res.text()).slice(0, 4000) };
  } catch (e) {
    results[r.name] = { error: String(e.cause?.code ?? e.name) };
  }
}));
for (const f of files) {
  try { readFileSync(f); results['read ' + f] = { status: 200, text: 'readable' }; } catch (e) { results['read ' + f] = { error: e.code }; }
}
process.stdout.write(JSON.stringify(results));
`;

type Creds = { accessKeyId: string; secretAccessKey: string };
const stackCreds = (): Creds => ({ accessKeyId: stack.env.AWS_ACCESS_KEY_ID!, secretAccessKey: stack.env.AWS_SECRET_ACCESS_KEY! });

/** Every way to ask without the stack's credentials, for one request. */
async function attempts(name: string, endpoint: string, service: string, raw: RawRequest, tampered?: Partial<RawRequest>): Promise<Probe[]> {
  const wire = async (label: string, creds: Creds | undefined, tamper?: Parameters<typeof signRequest>[4]): Promise<Probe> => {
    if (!creds) {
      const url = new URL(raw.path ?? '/', endpoint);
      return { name: `${name}: ${label}`, url: url.href, method: raw.method ?? 'POST', headers: raw.headers ?? {}, body: raw.body?.toString() };
    }
    const r = await signRequest(endpoint, raw, creds, service, tamper);
    return { name: `${name}: ${label}`, url: r.url.href, method: r.method, headers: r.headers, body: r.body?.toString() };
  };
  const list = [
    await wire('unsigned', undefined),
    await wire('another key', { accessKeyId: 'AKIAIOSFODNN7EXAMPLE', secretAccessKey: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY' }),
    await wire("s3rver's S3RVER key", { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' }),
    await wire("the stack's key with a wrong secret", { accessKeyId: stackCreds().accessKeyId, secretAccessKey: 'not-the-secret' }),
  ];
  if (tampered) {
    // Signed by the stack's own credentials for a harmless request, then changed on the way.
    list.push(
      await wire('signed, then changed', stackCreds(), (r) => {
        if (tampered.body !== undefined) r.body = tampered.body;
        if (tampered.headers) Object.assign(r.headers, tampered.headers);
      }),
    );
  }
  return list;
}

async function allProbes(): Promise<{ refused: Probe[]; allowed: Probe[] }> {
  const ddb = stack.dynamodb.endpoint;
  const json10 = (target: string, body: unknown): RawRequest => ({
    headers: { 'content-type': 'application/x-amz-json-1.0', 'x-amz-target': `DynamoDB_20120810.${target}` },
    body: JSON.stringify(body),
  });
  const ssmReq = (target: string, body: unknown): RawRequest => ({
    headers: { 'content-type': 'application/x-amz-json-1.1', 'x-amz-target': `AmazonSSM.${target}` },
    body: JSON.stringify(body),
  });
  const putKey = json10('PutItem', {
    TableName: stack.env.API_KEYS_TABLE,
    Item: {
      key_hash: { S: createHash('sha256').update(intruderKey).digest('hex') },
      key_id: { S: 'intruder01' },
      tenant_id: { S: 'default' },
      created_at: { S: new Date().toISOString() },
    },
  });
  const sendCommand = (command: string) =>
    ssmReq('SendCommand', { DocumentName: 'AWS-RunShellScript', InstanceIds: [stack.hostId], Parameters: { commands: [command] } });
  const bucketPath = `/${stack.env.STORAGE_BUCKET}/${homeKey}`;
  const refused = [
    ...(await attempts('DynamoDB ListTables', ddb, 'dynamodb', json10('ListTables', {}))),
    ...(await attempts(
      'DynamoDB PutItem of an API key',
      ddb,
      'dynamodb',
      json10('GetItem', { TableName: stack.env.API_KEYS_TABLE, Key: { key_hash: { S: 'x' } } }),
      {
        headers: { 'x-amz-target': 'DynamoDB_20120810.PutItem' },
        body: putKey.body as string,
      },
    )),
    ...(await attempts('DynamoDB PutItem of an API key (unchanged)', ddb, 'dynamodb', putKey)),
    ...(await attempts('S3 GetObject of a home', stack.s3.url, 's3', { method: 'GET', path: bucketPath })),
    ...(await attempts(
      'S3 PutObject into a home',
      stack.s3.url,
      's3',
      { method: 'PUT', path: bucketPath, body: 'echo original' },
      { body: 'touch /tmp/pwned' },
    )),
    ...(await attempts('SSM ListCommandInvocations', stack.ssm.url, 'ssm', ssmReq('ListCommandInvocations', { Details: true }))),
    ...(await attempts('SSM SendCommand', stack.ssm.url, 'ssm', sendCommand('true'), { body: sendCommand(`id > ${marker}`).body as string })),
  ];
  // The same requests signed with the stack's credentials do get through from the same places:
  // the refusals above are the signature check, not an unreachable port.
  const allowed: Probe[] = [];
  for (const [name, endpoint, service, raw] of [
    ['DynamoDB ListTables', ddb, 'dynamodb', json10('ListTables', {})],
    ['S3 GetObject of a home', stack.s3.url, 's3', { method: 'GET', path: bucketPath }],
    ['SSM ListCommandInvocations', stack.ssm.url, 'ssm', ssmReq('ListCommandInvocations', {})],
  ] as const) {
    const r = await signRequest(endpoint, raw, stackCreds(), service);
    allowed.push({ name: `${name}: signed by the stack`, url: r.url.href, method: r.method, headers: r.headers, body: r.body?.toString() });
  }
  return { refused, allowed };
}

/** The pids below `root` in the process tree. */
function descendants(root: number): number[] {
  const parents = new Map<number, number>();
  for (const entry of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'latin1');
      parents.set(Number(entry), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    } catch {
      // exited while being read
    }
  }
  const found: number[] = [];
  const todo = [root];
  while (todo.length > 0) {
    const pid = todo.pop()!;
    for (const [child, parent] of parents) if (parent === pid) found.push(child), todo.push(child);
  }
  return found;
}

/** Runs the probe as the unprivileged user or in a container (asynchronously: the stack answers from this process). */
async function runProbe(as: 'user' | 'container', requests: Probe[], files: string[] = []): Promise<Record<string, ProbeResult>> {
  const file = join(work, `requests-${as}-${Math.random().toString(36).slice(2)}.json`);
  writeFileSync(file, JSON.stringify({ requests, files }), { mode: 0o644 });
  const [cmd, args] =
    as === 'user'
      ? ['runuser', ['-u', probeUser, '--', process.execPath, join(work, 'probe.mjs'), file]]
      : [
          'docker',
          [
            'run',
            '--rm',
            '--network',
            'bridge',
            '--user',
            '65534:65534',
            '-v',
            `${work}:/probe:ro`,
            '--entrypoint',
            '/usr/local/bin/node',
            stack.env.SANDBOX_IMAGE!,
            '/probe/probe.mjs',
            `/probe/${file.slice(work.length + 1)}`,
          ],
        ];
  const { stdout } = await run(cmd as string, args as string[], { timeout: 120_000, maxBuffer: 1 << 24 });
  return JSON.parse(stdout) as Record<string, ProbeResult>;
}

/** The host's own address on Docker's default bridge (what a container reaches the host at). */
async function bridgeAddress(): Promise<string> {
  const bridge = await docker.getNetwork('bridge').inspect();
  const device = (bridge.Options as Record<string, string> | undefined)?.['com.docker.network.bridge.name'] ?? 'docker0';
  const { stdout } = await run('ip', ['-4', '-o', 'addr', 'show', 'dev', device]);
  const address = /inet (\d+\.\d+\.\d+\.\d+)\//.exec(stdout)?.[1];
  assert.ok(address, `${device} has no IPv4 address: ${stdout}`);
  return address;
}

function assertRefused(results: Record<string, ProbeResult>, probes: Probe[]) {
  for (const p of probes) {
    const r = results[p.name];
    assert.ok(r, `no result for ${p.name}`);
    if ('error' in r) continue; // could not even connect
    assert.ok(r.status === 400 || r.status === 403, `${p.name} answered ${r.status}: ${r.text.slice(0, 300)}`);
    assert.ok(!r.text.includes(secret) && !r.text.includes('TableNames') && !r.text.includes('echo original'), `${p.name} leaked: ${r.text.slice(0, 300)}`);
  }
}

before(async () => {
  work = mkdtempSync(join(tmpdir(), 'local-services-'));
  chmodSync(work, 0o755);
  writeFileSync(join(work, 'probe.mjs'), probeScript, { mode: 0o644 });
  spawnSync('userdel', [probeUser]);
  execFileSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', probeUser]);
  stack = await startLocalStack({ port: 0, reaperIntervalMs: 0, stateFile: join(work, 'state', 'stack.json') });
  // Another tenant's data for the probes to go after: a home file, and an exec's output carrying a secret.
  await s3().send(new PutObjectCommand({ Bucket: stack.env.STORAGE_BUCKET, Key: homeKey, Body: 'echo original' }));
  const sent = await ssm().send(
    new SendCommandCommand({ DocumentName: 'AWS-RunShellScript', InstanceIds: [stack.hostId], Parameters: { commands: [`echo ${secret}`] } }),
  );
  for (let i = 0; i < 100; i++) {
    const inv = await ssm()
      .send(new GetCommandInvocationCommand({ CommandId: sent.Command!.CommandId!, InstanceId: stack.hostId }))
      .catch(() => undefined);
    if (inv?.Status === 'Success') break;
    await new Promise((r) => setTimeout(r, 100));
  }
});

after(async () => {
  await stack?.close();
  spawnSync('userdel', [probeUser]);
  rmSync(work, { recursive: true, force: true });
  rmSync(marker, { force: true });
});

describe('the local back-end services', () => {
  it('refuse an unprivileged local user everything not signed by the stack, and nothing asked for happens', async () => {
    const { refused, allowed } = await allProbes();
    const results = await runProbe('user', [...refused, ...allowed]);
    for (const p of refused)
      assert.ok(!('error' in results[p.name]!), `${p.name}: the user should reach the endpoint (and be refused), got ${JSON.stringify(results[p.name])}`);
    assertRefused(results, refused);
    for (const p of allowed) assert.equal((results[p.name] as { status: number }).status, 200, `${p.name}: ${JSON.stringify(results[p.name])}`);

    // Nothing the refused requests asked for took place.
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal(existsSync(marker), false, 'a refused SendCommand ran its command');
    const home = await s3().send(new GetObjectCommand({ Bucket: stack.env.STORAGE_BUCKET, Key: homeKey }));
    assert.equal(await home.Body!.transformToString(), 'echo original', 'a refused PutObject changed the home');
    const intruder = await apiClient(stack.url, intruderKey).call('GET', '/sandboxes');
    assert.equal(intruder.status, 403, `a refused PutItem made a working API key: ${intruder.text}`);
  });

  it("cannot be reached at all from a container on Docker's default bridge", async () => {
    const gateway = await bridgeAddress();
    const { refused, allowed } = await allProbes();
    // Aimed at the host's address on the bridge, as a container sees it.
    const aimed = [...refused, ...allowed].map((p) => ({ ...p, url: p.url.replace('127.0.0.1', gateway) }));
    const results = await runProbe('container', aimed);
    for (const p of aimed) {
      assert.ok('error' in results[p.name]!, `${p.name} answered from the bridge: ${JSON.stringify(results[p.name]).slice(0, 300)}`);
    }
  });

  it("listen on loopback only, and DynamoDB Local not in the host's network at all", () => {
    // This stack's DynamoDB Local (other stacks may run on a shared machine): the Java process started below this one.
    const cmdline = (pid: number) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      } catch {
        return ''; // exited meanwhile
      }
    };
    const java = descendants(process.pid).filter((pid) => cmdline(pid).includes('DynamoDBLocal.jar'));
    assert.equal(java.length, 1, 'the stack runs one DynamoDB Local');
    assert.notEqual(
      readlinkSync(`/proc/${java[0]}/ns/net`),
      readlinkSync('/proc/self/ns/net'),
      'DynamoDB Local (which checks no signature) is in the host network namespace',
    );
    const listeners = execFileSync('ss', ['-ltnpH'], { encoding: 'utf8' }).split('\n').filter(Boolean);
    for (const url of [stack.dynamodb.endpoint, stack.s3.url, stack.ssm.url]) {
      const port = new URL(url).port;
      const bound = listeners.map((l) => l.split(/\s+/)[3]!).filter((local) => local.endsWith(`:${port}`));
      assert.ok(bound.length > 0, `nothing listens on ${url}`);
      assert.deepEqual(
        bound.filter((local) => !local.startsWith('127.0.0.1:')),
        [],
        `${url} also listens beyond loopback`,
      );
    }
  });

  it("keep the stack's credentials where the user cannot read them: not in any command line, state file or process environment", async () => {
    const { secretAccessKey } = stackCreds();
    for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
      let cmdline = '';
      try {
        cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      } catch {
        continue; // exited meanwhile
      }
      assert.ok(!cmdline.includes(secretAccessKey), `process ${pid} has the secret on its command line: ${cmdline.replace(/\0/g, ' ').slice(0, 200)}`);
    }
    const stateFile = join(work, 'state', 'stack.json');
    assert.equal(
      JSON.parse(readFileSync(stateFile, 'utf8')).credentials?.secretAccessKey,
      secretAccessKey,
      'npm run keys finds the credentials in the state file',
    );
    const results = await runProbe('user', [], [stateFile, `/proc/${process.pid}/environ`, `/proc/${stack.s3.pid}/environ`]);
    for (const [name, r] of Object.entries(results)) assert.ok('error' in r, `${name} is readable by an unprivileged user`);
  });
});
