/**
 * Bundles every Lambda handler exactly as the CDK stack does (minified ESM,
 * node22, SDK v3 bundled; options from lib/handler-bundling.ts) and prints
 * each bundle's size and its cold-start init time: how long loading the
 * bundle takes in a fresh Node process with a Lambda-like environment, as
 * deployed (no NODE_OPTIONS: the bundle maps its own stack traces, reading
 * its source map only when one is formatted; lambdas/shared/stack-traces.ts),
 * the part of Lambda's Init Duration the code controls; and, for comparison,
 * with `--enable-source-maps`, which reads the map at load. The median of
 * several runs. Next to each figure is the baseline (docs/bundle-baseline.json),
 * so a change shows what it cost; and the floor: the same measure of a bundle
 * of the handler's libraries alone (its AWS SDK clients with the commands it
 * sends, Powertools, middy; none of the project's code), which no change to
 * the project's own code can go below.
 *
 *   npm run bundle-report                        # table, with the baseline
 *   npm run bundle-report -- --markdown          # table for the README / DEPLOY
 *   npm run bundle-report -- --json              # machine-readable
 *   npm run bundle-report -- --save-baseline     # measure and keep as the new baseline
 *   npm run bundle-report -- --check             # exit 1 if any init is over the budget
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { backgroundHandlerNames, handlerNames } from '../lambdas/shared/routes';
import { tables } from '../lambdas/shared/tables';
import { build } from 'esbuild';
import { bundleHandlers, type HandlerBundle } from '../lib/bundle-analysis';
import { handlerBuildOptions } from '../lib/bundling';
import { repoRoot } from '../lib/paths';

/** The issue's budget for a handler's init. */
const initBudgetMs = 150;
const runs = Number(process.env.BUNDLE_REPORT_RUNS ?? 7);
const baselineFile = join(repoRoot, 'docs', 'bundle-baseline.json');

interface Measured extends HandlerBundle {
  /** Median CPU ms (user + system) to import the bundle in a fresh process, as deployed (no NODE_OPTIONS). */
  initMs: number;
  /** Median wall-clock ms of the same imports (inflated when the machine is busy). */
  initWallMs: number;
  /** Median CPU ms of the same imports with --enable-source-maps (the map read at load, as the functions ran before). */
  initEagerMapsMs: number;
  /** Median CPU ms to import a bundle of the handler's libraries alone (librariesEntry), as deployed. */
  librariesInitMs: number;
  librariesBytes: number;
}

interface Baseline {
  measuredAt: string;
  commit: string;
  note: string;
  /** initMs: CPU without NODE_OPTIONS, as `initMs` of a measurement. */
  handlers: Record<string, { bytes: number; gzipBytes: number; initMs: number; initWallMs: number }>;
}

const kb = (bytes: number) => (bytes / 1024).toFixed(0);

function clientsOf(b: HandlerBundle): string {
  return [...new Set(b.sdkOperations.map((op) => op.split(':')[0]))].join(', ') || '-';
}

/** What Lambda sets (and the stack adds) before the handler module loads; nothing is called. */
function lambdaLikeEnv(handler: string): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH,
    AWS_REGION: 'us-east-1',
    AWS_EXECUTION_ENV: 'AWS_Lambda_nodejs22.x',
    AWS_LAMBDA_FUNCTION_NAME: handler,
    AWS_LAMBDA_FUNCTION_MEMORY_SIZE: '512',
    AWS_ACCESS_KEY_ID: 'AKIDEXAMPLE',
    AWS_SECRET_ACCESS_KEY: 'secret',
    _X_AMZN_TRACE_ID: 'Root=1-00000000-000000000000000000000000;Parent=0000000000000000;Sampled=0',
    POWERTOOLS_SERVICE_NAME: 'ephemeral-sandbox',
    POWERTOOLS_METRICS_NAMESPACE: 'EphemeralSandbox/report',
    EVENT_BUS_NAME: 'ephemeral-sandbox-report',
    ...Object.fromEntries(tables.map((t) => [t.envVar, t.id.toLowerCase()])),
  };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/**
 * Median import time of `file` over `runs` fresh processes: CPU time (what the
 * code costs, steady on a shared machine) and wall time (what a quiet machine
 * would also show, plus any waiting for the CPU).
 */
function initTime(handler: string, file: string, nodeOptions: readonly string[]): { cpuMs: number; wallMs: number } {
  const probe = [
    'const c = process.cpuUsage(); const t = performance.now();',
    `await import(${JSON.stringify(file)});`,
    'const u = process.cpuUsage(c); process.stdout.write(JSON.stringify({ cpu: (u.user + u.system) / 1000, wall: performance.now() - t }));',
  ].join(' ');
  const cpu: number[] = [];
  const wall: number[] = [];
  for (let i = 0; i < runs; i++) {
    const out = spawnSync(process.execPath, [...nodeOptions, '--input-type=module', '-e', probe], { env: lambdaLikeEnv(handler), encoding: 'utf8' });
    if (out.status !== 0) throw new Error(`${handler}: loading the bundle failed: ${out.stderr.trim().split('\n').slice(-3).join(' | ')}`);
    const m = JSON.parse(out.stdout) as { cpu: number; wall: number };
    cpu.push(m.cpu);
    wall.push(m.wall);
  }
  return { cpuMs: median(cpu), wallMs: median(wall) };
}

/**
 * An entry that loads what `b` holds of the AWS SDK (each client it uses, made once, with the commands it sends;
 * the DynamoDB document client), Powertools (Logger, Metrics, Tracer capturing each client) and middy, as the
 * handler's modules do, and none of the project's code: its init is the floor of the handler's.
 */
function librariesEntry(b: HandlerBundle): string {
  const has = (pkg: string) => b.packages.includes(pkg);
  const imports: string[] = [];
  const kept: string[] = [];
  const tracing = has('@aws-lambda-powertools/tracer');
  if (has('@aws-lambda-powertools/logger')) {
    imports.push("import { Logger } from '@aws-lambda-powertools/logger';");
    kept.push('new Logger()');
  }
  if (has('@aws-lambda-powertools/metrics')) {
    imports.push("import { Metrics } from '@aws-lambda-powertools/metrics';");
    kept.push('new Metrics()');
  }
  if (tracing) imports.push("import { Tracer } from '@aws-lambda-powertools/tracer'; const tracer = new Tracer();");
  const clients = [...new Set(b.sdkOperations.map((op) => op.split(':')[0]!))];
  clients.forEach((client, i) => {
    const pkg = `@aws-sdk/client-${client}`;
    const clientClass = readdirSync(join(repoRoot, 'node_modules', pkg, 'dist-es'))
      .find((f) => f.endsWith('Client.js'))
      ?.slice(0, -'.js'.length);
    if (!clientClass) throw new Error(`${pkg} has no *Client.js in dist-es`);
    const commands = b.sdkOperations.filter((op) => op.startsWith(`${client}:`)).map((op) => `${op.slice(client.length + 1)}Command`);
    imports.push(`import { ${[`${clientClass} as Client${i}`, ...commands.map((c) => `${c} as C${i}${c}`)].join(', ')} } from '${pkg}';`);
    const made = `new Client${i}({})`;
    imports.push(`const client${i} = ${tracing ? `tracer.captureAWSv3Client(${made})` : made};`);
    kept.push(`client${i}`, ...commands.map((c) => `C${i}${c}`));
    if (client === 'dynamodb' && has('@aws-sdk/lib-dynamodb')) {
      imports.push("import { DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';");
      kept.push(`DynamoDBDocumentClient.from(client${i})`);
    }
  });
  const body = `async () => [${kept.join(', ')}]`;
  if (has('@middy/core')) imports.push("import middy from '@middy/core';");
  return [...imports, `export const handler = ${has('@middy/core') ? `middy(${body})` : body};`].join('\n');
}

/** Bundles librariesEntry(b) with the handlers' own options (no inject: the stack-trace module is the project's) into `outfile`. */
async function bundleLibraries(b: HandlerBundle, outfile: string): Promise<number> {
  const { entryPoints: _entry, inject: _ours, ...options } = handlerBuildOptions('', outfile);
  await build({
    ...options,
    stdin: { contents: librariesEntry(b), resolveDir: repoRoot, loader: 'ts', sourcefile: `${b.handler}-libraries.ts` },
    metafile: false,
  });
  return readFileSync(outfile).length;
}

function readBaseline(): Baseline | undefined {
  return existsSync(baselineFile) ? (JSON.parse(readFileSync(baselineFile, 'utf8')) as Baseline) : undefined;
}

function table(bundles: Measured[], baseline: Baseline | undefined, markdown: boolean): string {
  const header = [
    'handler',
    'bundle KB',
    'gzip KB',
    'init ms (CPU)',
    'init ms (wall)',
    'with --enable-source-maps: init ms (CPU)',
    'libraries alone: KB',
    'libraries alone: init ms (CPU)',
    'before: KB',
    'before: init ms (CPU)',
    'SDK clients',
  ];
  const rows = bundles.map((b) => {
    const before = baseline?.handlers[b.handler];
    return [
      b.handler,
      kb(b.bytes),
      kb(b.gzipBytes),
      b.initMs.toFixed(0),
      b.initWallMs.toFixed(0),
      b.initEagerMapsMs.toFixed(0),
      kb(b.librariesBytes),
      b.librariesInitMs.toFixed(0),
      before ? kb(before.bytes) : '-',
      before ? before.initMs.toFixed(0) : '-',
      clientsOf(b),
    ];
  });
  const total = bundles.reduce((sum, b) => sum + b.bytes, 0);
  const slowest = Math.max(...bundles.map((b) => b.initMs));
  const under = bundles.filter((b) => b.initMs <= initBudgetMs).length;
  const floorOver = bundles.filter((b) => b.librariesInitMs > initBudgetMs).length;
  const footer = `${bundles.length} handlers, ${kb(total)} KB in total; slowest init ${slowest.toFixed(0)} ms of CPU as deployed, ${under} of ${bundles.length} within the budget, ${floorOver} over it with their libraries alone (budget ${initBudgetMs} ms; median of ${runs} fresh processes on this machine, load average ${loadavg()[0]!.toFixed(1)})${
    baseline ? `; before: ${baseline.note} (${baseline.commit.slice(0, 10)})` : ''
  }`;
  if (markdown) {
    return [
      `| ${header.join(' | ')} |`,
      `|${header.map((_, i) => (i === 0 || i === header.length - 1 ? '---' : '---:')).join('|')}|`,
      ...rows.map((r) => `| ${r.join(' | ')} |`),
      '',
      footer,
    ].join('\n');
  }
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 || i === header.length - 1 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [line(header), ...rows.map(line), '', footer].join('\n');
}

function gitCommit(): string {
  const out = spawnSync('git', ['rev-parse', 'HEAD'], { cwd: repoRoot, encoding: 'utf8' });
  return out.status === 0 ? out.stdout.trim() : 'unknown';
}

async function main(): Promise<void> {
  const args = new Set(process.argv.slice(2));
  const unknown = [...args].filter((a) => !['--json', '--markdown', '--save-baseline', '--check'].includes(a));
  if (unknown.length > 0) {
    console.error(`bundle-report: unknown argument ${unknown.join(' ')} (use --json, --markdown, --save-baseline or --check)`);
    process.exit(2);
  }
  const outDir = mkdtempSync(join(tmpdir(), 'bundle-report-'));
  try {
    const bundles = await bundleHandlers([...handlerNames, ...backgroundHandlerNames], outDir);
    // One at a time: parallel imports on a small machine would measure each other.
    const measured: Measured[] = [];
    for (const b of bundles) {
      const file = join(outDir, b.handler, 'index.mjs');
      const libraries = join(outDir, b.handler, 'libraries.mjs');
      const librariesBytes = await bundleLibraries(b, libraries);
      const deployed = initTime(b.handler, file, []);
      const eagerMaps = initTime(b.handler, file, ['--enable-source-maps']);
      const floor = initTime(b.handler, libraries, []);
      measured.push({
        ...b,
        initMs: deployed.cpuMs,
        initWallMs: deployed.wallMs,
        initEagerMapsMs: eagerMaps.cpuMs,
        librariesInitMs: floor.cpuMs,
        librariesBytes,
      });
    }
    if (args.has('--save-baseline')) {
      const baseline: Baseline = {
        measuredAt: new Date().toISOString(),
        commit: gitCommit(),
        note: process.env.BASELINE_NOTE ?? 'the baseline',
        handlers: Object.fromEntries(
          measured.map((m) => [
            m.handler,
            { bytes: m.bytes, gzipBytes: m.gzipBytes, initMs: Number(m.initMs.toFixed(1)), initWallMs: Number(m.initWallMs.toFixed(1)) },
          ]),
        ),
      };
      writeFileSync(baselineFile, JSON.stringify(baseline, null, 2) + '\n');
    }
    const baseline = readBaseline();
    if (args.has('--json')) console.log(JSON.stringify({ budgetMs: initBudgetMs, bundles: measured, baseline }, null, 2));
    else console.log(table(measured, baseline, args.has('--markdown')));
    const over = measured.filter((m) => m.initMs > initBudgetMs);
    if (args.has('--check') && over.length > 0) {
      console.error(`bundle-report: init over ${initBudgetMs} ms: ${over.map((m) => `${m.handler} ${m.initMs.toFixed(0)} ms`).join(', ')}`);
      process.exitCode = 1; // not exit(): the bundles' temporary directory is removed first
    }
  } finally {
    rmSync(outDir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(`bundle-report: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
