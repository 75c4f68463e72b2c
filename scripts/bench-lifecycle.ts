/**
 * `npm run bench`: what the control plane adds on top of Docker, measured in
 * one run on the same machine, image and container:
 *   - exec round trip through the API (`true`) vs `docker exec <container> true`
 *   - create through the API (answers when ready) vs `docker run -d <image>`
 *   - a line's trip from a running command to a caller following it
 *     (GET .../commands/{id}?wait=), p50 and p95
 *   - reading 100 MB of a command's output through the API by offsets, vs
 *     `docker exec <container> cat` of the same bytes
 * Prints median and p95 of each, side by side, with the ratios.
 */
import { execFileSync } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { startLocalStack } from '../lib/local/stack';
import { apiClient } from '../test/support/api-client';

const execRuns = Number(process.env.BENCH_EXEC_RUNS ?? 40);
const lineRuns = Number(process.env.BENCH_LINE_RUNS ?? 40);
const createRuns = Number(process.env.BENCH_CREATE_RUNS ?? 12);

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

async function time(fn: () => Promise<unknown> | unknown): Promise<number> {
  const t = performance.now();
  await fn();
  return performance.now() - t;
}

function row(name: string, ours: number[], baseline: number[]): string {
  const [m1, p1, m2, p2] = [percentile(ours, 50), percentile(ours, 95), percentile(baseline, 50), percentile(baseline, 95)];
  return `| ${name.padEnd(34)} | ${m1.toFixed(0).padStart(6)} | ${p1.toFixed(0).padStart(6)} | ${m2.toFixed(0).padStart(6)} | ${p2.toFixed(0).padStart(6)} | ${(m1 / m2).toFixed(2).padStart(5)}x |`;
}

const stack = await startLocalStack({ port: 0, reaperIntervalMs: 0 });
const api = apiClient(stack.url, stack.apiKey);
const image = stack.env.SANDBOX_IMAGE!;
try {
  const created = await api.create('bench-user');
  if (created.status !== 201) throw new Error(`create failed: ${created.text}`);
  const id = created.body.sandbox_id as string;

  // Warm both paths once so neither pays first-use costs in the figures.
  await api.exec(id, 'true');
  execFileSync('docker', ['exec', id, 'true']);

  const apiExec: number[] = [];
  const dockerExec: number[] = [];
  for (let i = 0; i < execRuns; i++) {
    // Interleaved, so machine noise hits both alike.
    apiExec.push(
      await time(async () => {
        const r = await api.exec(id, 'true');
        if (r.status !== 200 || r.body.exit_code !== 0) throw new Error(`exec failed: ${r.text}`);
      }),
    );
    dockerExec.push(await time(() => execFileSync('docker', ['exec', id, 'true'])));
  }
  // A line's trip: the command prints its own clock (same machine, same clock); a follower waits for each line.
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

  // 100 MB of output, read back through the API by offsets, and the same bytes through docker exec.
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
  await api.destroy(id, false);

  const apiCreate: number[] = [];
  const dockerRun: number[] = [];
  for (let i = 0; i < createRuns; i++) {
    let sid = '';
    apiCreate.push(
      await time(async () => {
        const r = await api.create(`bench-user-${i}`);
        if (r.status !== 201 || r.body.status !== 'ready') throw new Error(`create failed: ${r.text}`);
        sid = r.body.sandbox_id;
      }),
    );
    await api.destroy(sid, false);
    const name = `bench-docker-run-${process.pid}-${i}`;
    dockerRun.push(
      await time(() =>
        execFileSync('docker', ['run', '-d', '--name', name, '--label', 'dev.ephemeral-sandbox.owner=ephemeral-sandbox', image, 'sleep', 'infinity']),
      ),
    );
    execFileSync('docker', ['rm', '-f', name]);
  }

  console.log(`\nEphemeral Sandbox benchmark (${new Date().toISOString()}, ${execRuns} exec runs, ${createRuns} create runs)\n`);
  console.log('| operation (ms)                     | ours p50 | ours p95 | docker p50 | docker p95 | ratio |'.replace(/ours p50 \| ours p95 \| docker p50 \| docker p95/, '   p50 |    p95 | base50 | base95'));
  console.log('|------------------------------------|--------|--------|--------|--------|-------|');
  console.log(row('exec `true`: API vs docker exec', apiExec, dockerExec));
  console.log(row('create: API (ready) vs docker run -d', apiCreate, dockerRun));
  const mbps = (ms: number) => readBytes / 1e6 / (ms / 1000);
  console.log(`\nline written -> returned to a follower (GET ?wait=): p50 ${percentile(lineLatency, 50).toFixed(0)} ms, p95 ${percentile(lineLatency, 95).toFixed(0)} ms (${lineLatency.length} lines)`);
  console.log(`reading ${(readBytes / 1e6).toFixed(0)} MB of output by offsets: API ${mbps(apiRead).toFixed(1)} MB/s (${(apiRead / 1000).toFixed(1)} s) vs docker exec cat ${mbps(dockerRead).toFixed(1)} MB/s (${(dockerRead / 1000).toFixed(1)} s)`);
  console.log('\nours = HTTP -> local API Gateway -> handler (its bundle, in a worker) -> DynamoDB Local -> local SSM -> host-agent -> host daemon -> Docker API; output via s3rver');
  console.log('base = the docker CLI against the same engine, same image, same container');
} finally {
  await stack.close();
}
