/**
 * Benchmark (not a test): hot sync of 1,000 files / 10 MiB down and up against the
 * local S3 endpoint (s3rver), side by side with `aws s3 sync` (Debian's awscli,
 * /usr/bin/aws) on the same data in the same run. Goal: at least 2x faster.
 *
 *   npm run bench:sync            (tsx scripts/bench-sync.ts)
 *   BENCH_ROUNDS=5 npm run bench:sync
 *
 * Each tool gets fresh prefixes every round; rounds alternate which tool goes
 * first; the table shows medians. `ours (process)` runs each sync in a fresh
 * Node process from an esbuild bundle, so it pays process start, SDK load and a
 * cold JIT just as `aws` pays Python's start. `ours (in-process)` runs in this
 * long-lived process, as the host-agent's warm daemon does.
 * CPU seconds (the client's, and s3rver's) are printed too: on a shared
 * machine they vary less than wall time.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { cp, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { repoRoot } from '../lib/paths';
import { promisify } from 'node:util';
import { build } from 'esbuild';
import { hostAgentBuildOptions } from '../lib/bundling';
import { createS3Client, defaultSyncConcurrency, hotSyncDown, hotSyncUp, type HotSyncOptions } from '../host-agent/src/storage/index';
import { startS3Endpoint } from '../lib/local/s3-endpoint';

const run = promisify(execFile);
const awsCli = '/usr/bin/aws';
const bucket = 'bench-sync';
const fileCount = 1_000;
const dirCount = 10;
const totalBytes = 10 * 1024 * 1024;
const rounds = Number(process.env.BENCH_ROUNDS ?? 3);

type Op = 'down' | 'up' | 'up, nothing changed';
type Tool = 'ours (process)' | 'ours (in-process)' | 'aws s3 sync';
const ops: Op[] = ['down', 'up', 'up, nothing changed'];
const tools: Tool[] = ['ours (process)', 'ours (in-process)', 'aws s3 sync'];

/** What the bundled runner does: one sync, in its own process, printing the report. */
const runnerSource = `
import { createS3Client, hotSyncDown, hotSyncUp } from './host-agent/src/storage/index';
const [op, json] = process.argv.slice(2);
const o = JSON.parse(json!);
const s3 = createS3Client({ endpoint: o.endpoint, forcePathStyle: true });
const report = await (op === 'down' ? hotSyncDown : hotSyncUp)({ ...o, s3 });
process.stdout.write(JSON.stringify(report));
s3.destroy();
`;

async function main(): Promise<void> {
  if (!(await stat(awsCli).catch(() => undefined))) {
    throw new Error(`${awsCli} is missing: install Debian's awscli (scripts/setup-host.sh does) to compare with aws s3 sync`);
  }
  const work = await mkdtemp(join(tmpdir(), 'bench-sync-'));
  const endpoint = await startS3Endpoint({ buckets: [bucket], directory: join(work, 's3rver') });
  try {
    const source = join(work, 'source');
    const bytes = await generateHome(source);
    const runner = join(work, 'hot-sync-runner.mjs');
    await build({
      ...hostAgentBuildOptions(runner),
      stdin: { contents: runnerSource, resolveDir: repoRoot, loader: 'ts', sourcefile: 'hot-sync-runner.ts' },
      sourcemap: false,
    });

    const env = {
      ...process.env,
      AWS_ACCESS_KEY_ID: endpoint.credentials.accessKeyId,
      AWS_SECRET_ACCESS_KEY: endpoint.credentials.secretAccessKey,
      AWS_DEFAULT_REGION: 'us-east-1',
      AWS_REGION: 'us-east-1',
      AWS_CONFIG_FILE: '/dev/null',
      AWS_SHARED_CREDENTIALS_FILE: '/dev/null',
      AWS_EC2_METADATA_DISABLED: 'true',
      AWS_PAGER: '',
    };
    const samples = new Map<string, Sample[]>();
    const record = (op: Op, tool: Tool, sample: Sample) => {
      const key = `${op}|${tool}`;
      samples.set(key, [...(samples.get(key) ?? []), sample]);
    };

    console.log(
      `hot sync benchmark: ${fileCount} files in ${dirCount} directories, ${(bytes / 1024 / 1024).toFixed(1)} MiB, against s3rver at ${endpoint.url}; ${rounds} round(s)`,
    );
    for (let round = 1; round <= rounds; round++) {
      const order: Tool[] = round % 2 === 1 ? tools : [...tools].reverse();
      for (const tool of order) {
        const base = join(work, `r${round}`, tool.replace(/[^a-z]+/g, '-'));
        const prefix = `bench/r${round}/${tool.replace(/[^a-z]+/g, '-')}/`;
        const measured = await runTool(tool, { base, prefix, source, endpoint: endpoint.url, serverPid: endpoint.pid, runner, env });
        for (const op of ops) record(op, tool, measured[op]);
      }
      process.stdout.write(`  round ${round} done\n`);
    }

    const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
    const med = (op: Op, tool: Tool, field: keyof Sample) => median(samples.get(`${op}|${tool}`)!.map((x) => x[field]));
    const rows = ops.map((op) => {
      const ours = med(op, 'ours (process)', 'wallMs');
      const oursInProcess = med(op, 'ours (in-process)', 'wallMs');
      const aws = med(op, 'aws s3 sync', 'wallMs');
      return { op, ours, oursInProcess, aws, ratio: aws / ours, ratioInProcess: aws / oursInProcess };
    });
    const seconds = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
    printTable('wall time (median)', [
      ['operation', 'ours (process)', 'ours (in-process)', 'aws s3 sync', 'aws / ours (process)', 'aws / ours (in-process)'],
      ...rows.map((r) => [r.op, seconds(r.ours), seconds(r.oursInProcess), seconds(r.aws), `${r.ratio.toFixed(1)}x`, `${r.ratioInProcess.toFixed(1)}x`]),
    ]);
    printTable('CPU time, client / s3rver (median)', [
      ['operation', ...tools],
      ...ops.map((op) => [op, ...tools.map((tool) => `${seconds(med(op, tool, 'clientCpuMs'))} / ${seconds(med(op, tool, 'serverCpuMs'))}`)]),
    ]);
    const loadAverage = (await readFile('/proc/loadavg', 'utf8')).split(' ').slice(0, 3).join(' ');
    console.log(
      `load average at the end: ${loadAverage} (on ${(await readFile('/proc/cpuinfo', 'utf8')).match(/^processor/gm)?.length ?? '?'} CPUs): other work on the machine slows every column`,
    );
    const transfers = rows.filter((r) => r.op !== 'up, nothing changed');
    const verdict = (met: boolean) => (met ? 'met' : 'NOT met');
    console.log(
      `goal (down and up at least 2x faster than aws s3 sync): fresh process ${verdict(transfers.every((r) => r.ratio >= 2))}, ` +
        `warm process ${verdict(transfers.every((r) => r.ratioInProcess >= 2))}`,
    );
    console.log(
      `ours: ${defaultSyncConcurrency} parallel transfers, uploads also store ${dirCount} directory markers; aws: awscli defaults (10 parallel requests)`,
    );
  } finally {
    await endpoint.close();
    await rm(work, { recursive: true, force: true });
  }
}

/** 1,000 files of random bytes adding up to 10 MiB, in 10 directories. */
async function generateHome(dir: string): Promise<number> {
  const perFile = Math.floor(totalBytes / fileCount);
  let written = 0;
  for (let d = 0; d < dirCount; d++) {
    await mkdir(join(dir, `dir-${d}`), { recursive: true });
    await Promise.all(
      Array.from({ length: fileCount / dirCount }, (_, i) => {
        const size = perFile + (d === 0 && i === 0 ? totalBytes - perFile * fileCount : 0);
        written += size;
        return writeFile(join(dir, `dir-${d}`, `file-${String(i).padStart(3, '0')}.dat`), randomBytes(size));
      }),
    );
  }
  return written;
}

function printTable(title: string, table: string[][]): void {
  const widths = table[0]!.map((_, col) => Math.max(...table.map((row) => row[col]!.length)));
  console.log(`\n${title}`);
  for (const row of table) console.log('  ' + row.map((cell, col) => cell.padEnd(widths[col]!)).join('  '));
}

interface ToolRun {
  base: string;
  prefix: string;
  source: string;
  endpoint: string;
  serverPid: number;
  runner: string;
  env: NodeJS.ProcessEnv;
}

interface Sample {
  wallMs: number;
  /** This process plus its waited-for children (the runner, aws). */
  clientCpuMs: number;
  serverCpuMs: number;
}

/** CPU ms from /proc/<pid>/stat: own (utime+stime) and reaped children's (cutime+cstime). */
async function procCpu(pid: number | 'self'): Promise<{ own: number; children: number }> {
  const fields = (await readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1]!.split(' ').map(Number);
  const tickMs = 10; // USER_HZ is 100 on Linux
  return { own: (fields[11]! + fields[12]!) * tickMs, children: (fields[13]! + fields[14]!) * tickMs };
}

/** Up (fresh prefix), up again with nothing changed, then down (fresh directory); measures each. */
async function runTool(tool: Tool, r: ToolRun): Promise<Record<Op, Sample>> {
  const home = join(r.base, 'home');
  const restored = join(r.base, 'restored');
  const timed = async (fn: () => Promise<unknown>): Promise<Sample> => {
    const [self, server] = [await procCpu('self'), await procCpu(r.serverPid)];
    const started = performance.now();
    await fn();
    const wallMs = performance.now() - started;
    const [selfAfter, serverAfter] = [await procCpu('self'), await procCpu(r.serverPid)];
    return {
      wallMs,
      clientCpuMs: selfAfter.own - self.own + selfAfter.children - self.children,
      serverCpuMs: serverAfter.own - server.own,
    };
  };

  if (tool === 'aws s3 sync') {
    const target = `s3://${bucket}/${r.prefix}`;
    const aws = (...args: string[]) =>
      run(awsCli, ['--endpoint-url', r.endpoint, 's3', 'sync', '--only-show-errors', ...args], { env: r.env, maxBuffer: 1 << 24 });
    const up = await timed(() => aws(r.source, target));
    const again = await timed(() => aws(r.source, target));
    const down = await timed(() => aws(target, restored));
    await assertSameCount(restored, tool);
    return { up, 'up, nothing changed': again, down };
  }

  const options = (dir: string, state: string): Omit<HotSyncOptions, 's3'> & { endpoint: string } => ({
    endpoint: r.endpoint,
    bucket,
    prefix: r.prefix,
    dir,
    stateFile: join(r.base, state, 'manifest.json'),
    uid: 1000,
    gid: 1000,
    quotaBytes: 100 * 1024 * 1024,
  });
  const upOptions = options(home, 'state-up');
  const downOptions = options(restored, 'state-down');

  if (tool === 'ours (process)') {
    const sync = (op: 'down' | 'up', o: object) => run(process.execPath, [r.runner, op, JSON.stringify(o)], { env: r.env });
    // A sandbox that started with an empty home, then wrote the files (setup, not timed).
    await sync('down', upOptions);
    await cp(r.source, home, { recursive: true });
    const up = await timed(() => sync('up', upOptions));
    const again = await timed(() => sync('up', upOptions));
    const down = await timed(() => sync('down', downOptions));
    await assertSameCount(restored, tool);
    return { up, 'up, nothing changed': again, down };
  }

  const withClient = async <T>(fn: (o: HotSyncOptions) => Promise<T>, o: ReturnType<typeof options>) => {
    const s3 = createS3Client({
      endpoint: o.endpoint,
      forcePathStyle: true,
      credentials: { accessKeyId: r.env.AWS_ACCESS_KEY_ID!, secretAccessKey: r.env.AWS_SECRET_ACCESS_KEY! },
    });
    try {
      return await fn({ ...o, s3 });
    } finally {
      s3.destroy();
    }
  };
  await withClient(hotSyncDown, upOptions);
  await cp(r.source, home, { recursive: true });
  const up = await timed(() => withClient(hotSyncUp, upOptions));
  const again = await timed(() => withClient(hotSyncUp, upOptions));
  const down = await timed(() => withClient(hotSyncDown, downOptions));
  await assertSameCount(restored, tool);
  return { up, 'up, nothing changed': again, down };
}

/** A benchmark of a sync that did not copy everything would be meaningless. */
async function assertSameCount(dir: string, tool: Tool): Promise<void> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  const files = entries.filter((e) => e.isFile()).length;
  if (files !== fileCount) throw new Error(`${tool}: restored ${files} files, expected ${fileCount}`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
