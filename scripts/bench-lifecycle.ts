/**
 * `npm run bench`: what the control plane adds on top of Docker, measured in
 * one run on the same machine, engine and image, each figure side by side
 * with its baseline (interleaved, so machine noise hits both alike):
 *   - time to interactive: create (answered ready) -> first `true` done,
 *     vs `docker run -d` + `docker exec` (CLI);
 *   - create alone, claiming a warm pool container and (a shape the pool does
 *     not hold) making one cold, vs `docker run -d`;
 *   - exec `true` round trip vs `docker exec` (CLI) and vs an exec through the
 *     Docker Engine API alone (create, start attached, read to the end,
 *     inspect: the floor any exec path pays);
 *   - BENCH_BURST (50) concurrent creates made as a user makes them (the SDK:
 *     a key per create, 503/504 retried under it, 202 followed to ready), time
 *     to ready p50/p95 vs the sequential p50, how many POSTs it took, and how
 *     long the warm pool takes to be full again after the burst (the host has
 *     room for the burst: HOST_ALLOCATABLE_* as on a 64-vCPU instance);
 *   - where the time goes: a per-stage breakdown (spans from lambdas/shared/timing.ts
 *     recorded by every process of the stack) of create and exec, p50 of each
 *     stage's total per operation.
 * BENCH_OUTPUT=1 adds a line's trip to a follower and reading 100 MB of output.
 *
 * Not included: API Gateway, Lambda and SSM as deployed (the local stack runs
 * the same handler bundles, authorizer, SSM protocol, host-agent wrapper and
 * daemon, but SSM's delivery to an instance and the network hops of AWS are
 * not measurable here).
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { DockerClient } from '../host-agent/src/docker';
import { poolLabel } from '../host-agent/src/warm-pool';
import { localHostSettings, startLocalStack } from '../lib/local/stack';
import { Sandbox } from '../sdk/src/index';
import { apiClient } from '../test/support/api-client';

const execRuns = Number(process.env.BENCH_EXEC_RUNS ?? 40);
const createRuns = Number(process.env.BENCH_CREATE_RUNS ?? 10);
const burstSize = Number(process.env.BENCH_BURST ?? 50);
const lineRuns = Number(process.env.BENCH_LINE_RUNS ?? 40);
const warmContainers = Number(process.env.WARM_CONTAINERS_PER_HOST ?? localHostSettings().warmContainers);

const timingsDir = mkdtempSync(join(tmpdir(), 'bench-timings-'));
const timingsFile = join(timingsDir, 'spans.jsonl');
process.env.SANDBOX_TIMINGS_FILE = timingsFile;

function percentile(values: number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

async function time(fn: () => Promise<unknown> | unknown): Promise<number> {
  const t = performance.now();
  await fn();
  return performance.now() - t;
}

const fmt = (n: number) => (Number.isFinite(n) ? n.toFixed(0) : '-');

function row(name: string, ours: number[], baseline: number[]): string {
  const [m1, p1, m2, p2] = [percentile(ours, 50), percentile(ours, 95), percentile(baseline, 50), percentile(baseline, 95)];
  return `| ${name.padEnd(52)} | ${fmt(m1).padStart(6)} | ${fmt(p1).padStart(6)} | ${fmt(m2).padStart(6)} | ${fmt(p2).padStart(6)} | ${(m1 / m2).toFixed(2).padStart(5)}x |`;
}

// --- spans ------------------------------------------------------------------------------------

interface Span {
  n: string;
  ms: number;
  s?: string;
}

let spansRead = 0;
/** The spans recorded since the last call (background work of the daemon and the pool's refill left out). */
function takeSpans(): Span[] {
  let text = '';
  try {
    const size = statSync(timingsFile).size;
    if (size <= spansRead) return [];
    const fd = readFileSync(timingsFile);
    text = fd.subarray(spansRead, size).toString('utf8');
    spansRead = size;
  } catch {
    return [];
  }
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Span)
    .filter((s) => !s.s);
}

/** Per operation: each stage's total ms and number of calls. */
type OpStages = Map<string, { ms: number; calls: number }>;

function stagesOf(spans: Span[], clientMs: number): OpStages {
  const m: OpStages = new Map();
  const add = (n: string, ms: number, calls = 1) => {
    const cur = m.get(n) ?? { ms: 0, calls: 0 };
    m.set(n, { ms: cur.ms + ms, calls: cur.calls + calls });
  };
  for (const s of spans) add(s.n, s.ms);
  const get = (n: string) => m.get(n)?.ms ?? 0;
  const sumOf = (prefix: string) => [...m].filter(([n]) => n.startsWith(prefix)).reduce((a, [, v]) => a + v.ms, 0);
  // Derived stages: the time between spans, where nothing of ours records.
  add('= client <-> gateway (HTTP on loopback)', clientMs - get('gateway.request'), 0);
  add('= gateway outside authorizer and Lambda', get('gateway.request') - get('gateway.authorizer') - get('lambda.invoke'), 0);
  add('= Lambda runtime (worker hop, JSON)', get('lambda.invoke') - get('handler handler'), 0);
  const dispatch = sumOf('handler ssm.dispatch.');
  add('= handler own code (outside DynamoDB, S3, SSM)', get('handler handler') - sumOf('handler ddb.') - sumOf('handler s3.') - dispatch, 0);
  // The polls run while the script does: what is left is the SSM agent's start of the script and the last poll after its end.
  add(
    '= SSM: script start and the answer noticed (dispatch outside SendCommand and the script)',
    dispatch - get('handler ssm.SendCommand') - get('ssm-agent.script'),
    0,
  );
  const daemon = sumOf('host daemon.');
  add('= host-agent wrapper (script outside the daemon)', get('ssm-agent.script') - daemon, 0);
  return m;
}

function breakdown(columns: { title: string; ops: OpStages[]; clientMs: number[] }[]): string {
  const names = new Set<string>();
  for (const c of columns) for (const op of c.ops) for (const n of op.keys()) names.add(n);
  const order = (n: string) => {
    const keys = [
      'client',
      'gateway',
      'lambda',
      'Lambda',
      'handler handler',
      'handler own',
      'handler ddb',
      'handler s3',
      'handler ssm.dispatch',
      'handler ssm.Send',
      'handler ssm.poll',
      'handler ssm.Get',
      'SSM',
      'ssm-agent',
      'host-agent wrapper',
      'host daemon',
      'host host.staged',
      'host host.storage',
      'host host.network',
      'host host.image',
      'host host.claim',
      'host claim',
      'host host.egress',
      'host runner.claim',
      'host runner',
      'host ddb',
      'host s3',
      'host docker',
      'host host.record',
    ];
    const key = n.replace(/^= /, '');
    const i = keys.findIndex((k) => key.startsWith(k));
    return (i === -1 ? keys.length : i) * 1000 + (n.startsWith('= ') ? 0 : 1);
  };
  const sorted = [...names].sort((a, b) => order(a) - order(b) || a.localeCompare(b));
  const lines = [
    `| stage (ms, p50 of each operation's total; calls) | ${columns.map((c) => c.title.padStart(18)).join(' | ')} |`,
    `|---|${columns.map(() => '---:').join('|')}|`,
    `| whole round trip, as the client saw it | ${columns.map((c) => fmt(percentile(c.clientMs, 50)).padStart(18)).join(' | ')} |`,
  ];
  for (const n of sorted) {
    const cells = columns.map((c) => {
      const ms = c.ops.map((op) => op.get(n)?.ms ?? 0);
      const calls = percentile(
        c.ops.map((op) => op.get(n)?.calls ?? 0),
        50,
      );
      const p = percentile(ms, 50);
      if (c.ops.every((op) => !op.has(n))) return '-'.padStart(18);
      return `${p.toFixed(1)}${calls > 0 ? ` (${calls})` : ''}`.padStart(18);
    });
    lines.push(`| ${n} | ${cells.join(' | ')} |`);
  }
  return lines.join('\n');
}

// --- the run ------------------------------------------------------------------------------------

const stack = await startLocalStack({
  port: 0,
  reaperIntervalMs: 0,
  slots: Math.max(64, burstSize + 8),
  // Room for the burst on the one host (a 64-vCPU, 256 GiB instance), so it measures concurrency, not capacity.
  allocatable: { cpu: 64, memoryMb: 256 * 1024 },
  warmContainers,
  // Background loops rarely, so their work stays out of the figures (their spans are scoped out anyway).
  hostHeartbeatMs: 30_000,
  rateLimit: 1000,
  burstLimit: 1000,
  env: { MAX_SANDBOXES_PER_TENANT: String(burstSize + 16) },
});
const api = apiClient(stack.url, stack.apiKey);
const image = stack.env.SANDBOX_IMAGE!;
const docker = new DockerClient('/var/run/docker.sock');

async function readyPoolContainers(): Promise<number> {
  const list = await docker.listContainers({ label: [`${poolLabel}`, `dev.ephemeral-sandbox.host-id=${stack.hostId}`] }, false);
  return list.filter((c) => (c.Names[0] ?? '').startsWith('/sbxpool-')).length;
}

async function poolFull(timeoutMs = 180_000): Promise<number> {
  const t = performance.now();
  while ((await readyPoolContainers()) < warmContainers) {
    if (performance.now() - t > timeoutMs) throw new Error(`the warm pool did not fill within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
  return performance.now() - t;
}

/** `docker exec` through the Engine API only: create, start attached, read to the end, inspect the exit code. */
async function engineExec(container: string): Promise<void> {
  const { Id } = await docker.createExec(container, { Cmd: ['true'], AttachStdout: true, AttachStderr: true });
  const stream = await docker.startExec(Id);
  for await (const _ of stream) void _;
  const info = await docker.inspectExec(Id);
  if (info.ExitCode !== 0) throw new Error(`engine exec exited ${info.ExitCode}`);
}

async function createReady(user: string, config?: Record<string, unknown>): Promise<string> {
  const r = await api.create(user, config);
  if (r.status !== 201 || r.body.status !== 'ready') throw new Error(`create failed: ${r.status} ${r.text}`);
  return r.body.sandbox_id as string;
}

async function execTrue(id: string): Promise<void> {
  const r = await api.exec(id, 'true');
  if (r.status !== 200 || r.body.exit_code !== 0) throw new Error(`exec failed: ${r.status} ${r.text}`);
}

try {
  await poolFull();
  // Warm both paths once so neither pays first-use costs in the figures.
  const warm = await createReady('bench-warmup');
  await execTrue(warm);
  execFileSync('docker', ['exec', warm, 'true']);
  await engineExec(warm);
  await api.destroy(warm, false);
  await poolFull();
  takeSpans();

  // Time to interactive and create, interleaved with docker run -d + docker exec.
  const tti: number[] = [];
  const createPooled: number[] = [];
  const createCold: number[] = [];
  const dockerTti: number[] = [];
  const dockerRun: number[] = [];
  const createOps: OpStages[] = [];
  const coldOps: OpStages[] = [];
  for (let i = 0; i < createRuns; i++) {
    await poolFull();
    takeSpans();
    let id = '';
    const t0 = performance.now();
    const c = await time(async () => (id = await createReady(`bench-user-${i}`)));
    createOps.push(stagesOf(takeSpans(), c));
    await execTrue(id);
    tti.push(performance.now() - t0);
    createPooled.push(c);
    takeSpans();
    await api.destroy(id, false);

    // A shape the pool does not hold (another /tmp size): the cold path, in the same run, with no refill beside
    // it (the claim above deferred one: warm-pool.ts refillDelayMs).
    await poolFull();
    takeSpans();
    let cold = '';
    const cc = await time(async () => (cold = await createReady(`bench-cold-${i}`, { memory_mb: 2048 })));
    coldOps.push(stagesOf(takeSpans(), cc));
    createCold.push(cc);
    await api.destroy(cold, false);

    const name = `bench-docker-run-${process.pid}-${i}`;
    const d0 = performance.now();
    dockerRun.push(
      await time(() =>
        execFileSync('docker', ['run', '-d', '--name', name, '--label', 'dev.ephemeral-sandbox.owner=ephemeral-sandbox', image, 'sleep', 'infinity']),
      ),
    );
    execFileSync('docker', ['exec', name, 'true']);
    dockerTti.push(performance.now() - d0);
    execFileSync('docker', ['rm', '-f', name]);
  }

  // Exec round trip: API vs docker exec (CLI) vs the Engine API alone.
  await poolFull();
  const id = await createReady('bench-exec');
  const apiExec: number[] = [];
  const cliExec: number[] = [];
  const engine: number[] = [];
  const execOps: OpStages[] = [];
  await execTrue(id);
  for (let i = 0; i < execRuns; i++) {
    takeSpans();
    const e = await time(() => execTrue(id));
    execOps.push(stagesOf(takeSpans(), e));
    apiExec.push(e);
    cliExec.push(await time(() => execFileSync('docker', ['exec', id, 'true'])));
    engine.push(await time(() => engineExec(id)));
  }

  // A burst of concurrent creates against the one host; then how long the pool takes to be full again.
  await poolFull();
  const burst: number[] = [];
  const burstIds: string[] = [];
  const failures: string[] = [];
  let pooledInBurst = 0;
  let burstPosts = 0;
  // Counts the POSTs (first tries and the SDK's retries) on their way to the gateway.
  const countingFetch: typeof fetch = (input, init) => {
    if (init?.method === 'POST' && String(input).endsWith('/sandboxes')) burstPosts++;
    return fetch(input, init);
  };
  const b0 = performance.now();
  await Promise.all(
    Array.from({ length: burstSize }, async (_, i) => {
      const t = performance.now();
      try {
        const s = await Sandbox.create({ apiKey: stack.apiKey, apiUrl: stack.url, userId: `bench-burst-${i}`, config: { disk_mb: 64 }, fetch: countingFetch });
        burst.push(performance.now() - t);
        burstIds.push(s.sandboxId);
      } catch (err) {
        failures.push((err as Error).message.slice(0, 200));
      }
    }),
  );
  const burstWall = performance.now() - b0;
  const refillMs = await poolFull();
  for (const s of takeSpans()) if (s.n === 'host host.claim') pooledInBurst++;
  await Promise.all(burstIds.map((b) => api.destroy(b, false)));

  let outputFigures = '';
  if (process.env.BENCH_OUTPUT === '1') outputFigures = await commandOutputFigures(id);
  await api.destroy(id, false);

  console.log(
    `\nEphemeral Sandbox benchmark (${new Date().toISOString()}; ${createRuns} creates, ${execRuns} execs, a burst of ${burstSize}; warm pool of ${warmContainers} per host)\n`,
  );
  console.log(`| ${'figure (ms)'.padEnd(52)} |    p50 |    p95 | base50 | base95 | ratio |`);
  console.log(`|${'-'.repeat(54)}|-------:|-------:|-------:|-------:|------:|`);
  console.log(row('TTI: create -> first `true` vs docker run -d + exec', tti, dockerTti));
  console.log(row('create (ready), warm pool vs docker run -d', createPooled, dockerRun));
  console.log(row('create (ready), cold (2 GiB shape) vs docker run -d', createCold, dockerRun));
  console.log(row('exec `true` vs docker exec (CLI)', apiExec, cliExec));
  console.log(row('exec `true` vs Engine API exec (the floor)', apiExec, engine));
  console.log(row(`${burstSize} concurrent creates vs sequential (pool)`, burst, createPooled));
  console.log(row(`${burstSize} concurrent creates vs sequential (cold)`, burst, createCold));
  console.log(
    `\nburst: ${burst.length} of ${burstSize} ready, ${failures.length} failed${failures.length ? ` (${failures.slice(0, 3).join('; ')})` : ''}; ${burstPosts} POSTs for ${burstSize} creates; ${pooledInBurst} claimed a warm container, the rest made cold; all answered within ${(burstWall / 1000).toFixed(1)} s`,
  );
  console.log(`warm pool refill: ${(refillMs / 1000).toFixed(1)} s from the end of the burst until ${warmContainers} containers were ready again`);
  console.log('\nWhere the time goes (spans of every process of the stack; "=" rows are the time between spans, negative where calls overlap):\n');
  console.log(
    breakdown([
      { title: 'create (pool)', ops: createOps, clientMs: createPooled },
      { title: 'create (cold)', ops: coldOps, clientMs: createCold },
      { title: 'exec `true`', ops: execOps, clientMs: apiExec },
    ]),
  );
  if (outputFigures) console.log(outputFigures);
  console.log(
    '\nours = HTTP -> local API Gateway (authorizer) -> handler (its bundle, in a worker) -> DynamoDB Local -> local SSM -> host-agent wrapper -> host daemon -> Docker Engine API',
  );
  console.log('base = the docker CLI (or the Engine API) against the same engine, same image, same container');
  console.log('not included: SSM delivery to an EC2 instance, API Gateway and Lambda as deployed, AWS network hops (not measurable here)');
} finally {
  await stack.close();
  // BENCH_SPANS=<file> keeps every span of the run (one JSON line each) for a closer look.
  if (process.env.BENCH_SPANS) copyFileSync(timingsFile, process.env.BENCH_SPANS);
  rmSync(timingsDir, { recursive: true, force: true });
}

/** A line's trip to a follower, and 100 MB of output read back by offsets (BENCH_OUTPUT=1). */
async function commandOutputFigures(id: string): Promise<string> {
  const lineCommand = `for i in $(seq 1 ${lineRuns}); do sleep 0.4; date +%s%N; done`;
  const started = await api.call('POST', `/sandboxes/${id}/commands`, { command: lineCommand, command_id: 'bench-lines', timeout: 300 });
  if (started.status !== 202) throw new Error(`line command failed to start: ${started.text}`);
  const lineLatency: number[] = [];
  let offset = 0;
  let pending = '';
  while (lineLatency.length < lineRuns) {
    const g = await api.call('GET', `/sandboxes/${id}/commands/bench-lines?stdout_offset=${offset}&wait=10`);
    const seenAt = Date.now();
    offset = g.body.stdout_offset_next;
    pending += g.body.stdout;
    const lines = pending.split('\n');
    pending = lines.pop() ?? '';
    for (const line of lines) if (line) lineLatency.push(seenAt - Number(BigInt(line) / 1_000_000n));
    if (!['running', 'pending'].includes(g.body.status) && g.body.stdout === '') break;
  }
  const big = await api.call('POST', `/sandboxes/${id}/commands`, {
    command: 'head -c 75000000 /dev/urandom | base64 -w 100 | tee /tmp/bench-out.txt',
    command_id: 'bench-100mb',
    timeout: 600,
    wait: 20,
  });
  for (let status = big.body.status; status === 'running' || status === 'pending'; ) {
    status = (await api.call('GET', `/sandboxes/${id}/commands/bench-100mb?stdout_offset=999999999999&wait=10`)).body.status;
  }
  let readBytes = 0;
  const apiRead = await time(async () => {
    let so = 0;
    for (;;) {
      const g = await api.call('GET', `/sandboxes/${id}/commands/bench-100mb?stdout_offset=${so}`);
      if (g.body.stdout_offset_next === so) break;
      readBytes += Buffer.byteLength(g.body.stdout);
      so = g.body.stdout_offset_next;
    }
  });
  const dockerRead = await time(() => execFileSync('docker', ['exec', id, 'cat', '/tmp/bench-out.txt'], { maxBuffer: 200 * 1024 * 1024 }));
  const mbps = (ms: number) => readBytes / 1e6 / (ms / 1000);
  return [
    `\nline written -> returned to a follower (GET ?wait=): p50 ${fmt(percentile(lineLatency, 50))} ms, p95 ${fmt(percentile(lineLatency, 95))} ms (${lineLatency.length} lines)`,
    `reading ${(readBytes / 1e6).toFixed(0)} MB of output by offsets: API ${mbps(apiRead).toFixed(1)} MB/s (${(apiRead / 1000).toFixed(1)} s) vs docker exec cat ${mbps(dockerRead).toFixed(1)} MB/s (${(dockerRead / 1000).toFixed(1)} s)`,
  ].join('\n');
}
