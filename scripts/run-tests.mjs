#!/usr/bin/env node
/**
 * `npm test`: the typecheck and every test file, in two lanes that run at the
 * same time.
 *
 * - The stack lane: files that start a local stack, drive Docker, mount FUSE
 *   or touch the host's network. Each starts its own stack and looks only at
 *   what its own stack made (its host's containers, firewall chains, mounts and
 *   state by the host id, its own registry repository), so STACK_LANES of them
 *   (2) run side by side, each in its own process, its report printed whole
 *   when it ends. STACK_LANES=1 runs them all one at a time, streamed as they go.
 * - The isolated lane: the typecheck, then files that share nothing with
 *   anything (pure functions, CDK synthesis, the SSM endpoint's rules, an
 *   authorizer on its own DynamoDB Local, hot sync on its own S3 endpoint, the
 *   sandbox helper against a local HTTP server).
 *   They run alongside the stack lane at a lower CPU priority, so the stack
 *   lane's timings stay close to what they are alone; their report is printed
 *   after the stack lane's.
 *
 * Which lane a file is in is decided here, once; a file in the isolated lane
 * that imports the local stack or the Docker client is refused before anything
 * runs. `node scripts/run-tests.mjs <files...>` runs only those files (same
 * lanes). Exit code: 0 only when every lane passed.
 */
import { spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..');

/** Files that share no engine, port, mount or network with other tests (paths relative to the repository). */
const isolated = [
  /^test\/unit\//,
  /^test\/cdk\//,
  /^test\/sdk\/types-parity\.test\.ts$/,
  /^test\/ssm\/ssm-endpoint\.test\.ts$/,
  /^test\/tenancy\/authorizer\.test\.ts$/,
  /^test\/storage\/hot-sync\.test\.ts$/,
  /^test\/image\/sandbox-helper\.test\.ts$/,
];

/**
 * How many stack-lane files run side by side.
 * Two on this 2-core machine: one file alone leaves the CPU about 60 % idle
 * (it waits on Docker, DynamoDB Local and its own timers); three starve the
 * isolated lane.
 */
const stackLanes = Math.max(1, Number(process.env.STACK_LANES ?? 2) || 1);

/**
 * The longest stack-lane files (one and a half to four minutes each, measured in CI), started first so that no lane
 * is left running one of them alone at the end while the other lanes sit idle; the rest follow by name.
 */
const longestFirst = [
  'test/files/files.test.ts',
  'test/commands/commands.test.ts',
  'test/faults/faults.test.ts',
  'test/sdk/sdk.test.ts',
  'test/lifecycle/spot-drain.test.ts',
  'test/lifecycle/reaper.test.ts',
  'test/lifecycle/signals.test.ts',
  'test/lifecycle/aws-limits.test.ts',
];
const byLength = (a, b) => {
  const rank = (f) => (longestFirst.includes(f) ? longestFirst.indexOf(f) : longestFirst.length);
  return rank(a) - rank(b) || a.localeCompare(b);
};

/** What makes a file a stack-lane file whatever the list says. */
const sharedState = /from '[^']*(lib\/local\/stack|support\/docker|host-agent\/src\/docker)'/;

function allTestFiles() {
  const files = [];
  for (const dir of readdirSync(join(repoRoot, 'test'), { withFileTypes: true })) {
    if (!dir.isDirectory()) continue;
    for (const f of readdirSync(join(repoRoot, 'test', dir.name))) if (f.endsWith('.test.ts')) files.push(`test/${dir.name}/${f}`);
  }
  return files.sort();
}

const asked = process.argv.slice(2).map((f) => relative(repoRoot, join(process.cwd(), f)));
const files = asked.length > 0 ? asked : allTestFiles();
const inIsolated = (f) => isolated.some((re) => re.test(f));
const isolatedFiles = files.filter(inIsolated);
const stackFiles = files.filter((f) => !inIsolated(f));

const misplaced = isolatedFiles.filter((f) => sharedState.test(readFileSync(join(repoRoot, f), 'utf8')));
if (misplaced.length > 0) {
  console.error(`run-tests: these files use the local stack or Docker, so they belong in the stack lane: ${misplaced.join(', ')}`);
  process.exit(2);
}

const nodeTest = (list) => [process.execPath, ['--import', 'tsx', '--test', '--test-concurrency=1', '--test-timeout=600000', ...list]];

/** Runs `steps` one after another; resolves with the first failing exit code, or 0. */
function lane(steps, output, o = {}) {
  return (async () => {
    for (const [cmd, args] of steps) {
      const code = await new Promise((resolve) => {
        const child = spawn(o.nice ? 'nice' : cmd, o.nice ? ['-n', '10', cmd, ...args] : args, { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
        child.stdout.on('data', (d) => output(d));
        child.stderr.on('data', (d) => output(d));
        child.on('close', (c, signal) => resolve(c ?? (signal ? 1 : 0)));
        child.on('error', (err) => {
          output(`run-tests: ${cmd} could not start: ${err.message}\n`);
          resolve(1);
        });
      });
      if (code !== 0) return code;
    }
    return 0;
  })();
}

/**
 * The machine's CPU time so far, busy and in all, in clock ticks (Linux /proc/stat; undefined elsewhere): the
 * summary says how busy the run kept the machine, so a slow run shows whether it waited or computed.
 */
function cpuTicks() {
  try {
    const fields = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0].trim().split(/\s+/).slice(1).map(Number);
    const idle = fields[3] + (fields[4] ?? 0);
    const total = fields.reduce((a, b) => a + b, 0);
    return { busy: total - idle, total };
  } catch {
    return undefined;
  }
}

const started = Date.now();
const cpuAtStart = cpuTicks();
let isolatedText = '';
/** The stack lane's output, for its TAP footer and its failures in the summary. */
let stackText = '';
let isolatedDoneAt;

const typecheck = asked.length > 0 ? [] : [[process.execPath, [join(repoRoot, 'node_modules', 'typescript', 'bin', 'tsc'), '--noEmit', '-p', '.']]];
const isolatedRun = lane([...typecheck, ...(isolatedFiles.length > 0 ? [nodeTest(isolatedFiles)] : [])], (d) => (isolatedText += d), { nice: true }).then(
  (code) => {
    isolatedDoneAt = Date.now();
    return code;
  },
);
/** Side by side: each file in its own process, its report printed whole when it ends. */
async function parallelStack() {
  const queue = [...stackFiles].sort(byLength);
  let worst = 0;
  const runOne = async (f) => {
    let text = '';
    const t0 = Date.now();
    const code = await lane([nodeTest([f])], (d) => (text += d));
    const report = `\n# ---- ${f} (${((Date.now() - t0) / 1000).toFixed(0)} s, exit ${code}) ----\n${text}`;
    process.stdout.write(report);
    stackText += report;
    if (code !== 0 && worst === 0) worst = code;
  };
  await Promise.all(
    Array.from({ length: Math.min(stackLanes, queue.length) }, async () => {
      for (let f = queue.shift(); f !== undefined; f = queue.shift()) await runOne(f);
    }),
  );
  return worst;
}

const stackRun =
  stackFiles.length === 0
    ? Promise.resolve(0)
    : stackLanes > 1
      ? parallelStack()
      : lane([nodeTest(stackFiles)], (d) => {
          process.stdout.write(d);
          stackText += d;
        });

let interrupted = false;
process.on('SIGINT', () => {
  interrupted = true;
});

const [isolatedCode, stackCode] = await Promise.all([isolatedRun, stackRun]);
const minutes = (ms) => `${(ms / 60_000).toFixed(1)} min`;
process.stdout.write(
  `\n# ---- isolated lane (typecheck and ${isolatedFiles.length} files, run alongside the stack lane; done after ${minutes(isolatedDoneAt - started)}) ----\n`,
);
process.stdout.write(isolatedText);

/** Sums the TAP footers ("# pass N") of both lanes. */
const tally = (text, key) => [...text.matchAll(new RegExp(`^# ${key} (\\d+)$`, 'gm'))].reduce((n, m) => n + Number(m[1]), 0);
const both = `${isolatedText}\n${stackText}`;

/**
 * Every failing test with its YAML block (where, what error, the stack's first
 * lines), printed again at the end: a CI log that keeps only its tail still
 * says which tests failed and why.
 */
function failures(text) {
  const lines = text.split('\n');
  const out = [];
  for (let i = 0; i < lines.length; i++) {
    if (!/^\s*not ok \d+ - /.test(lines[i])) continue;
    const block = [lines[i]];
    if (/^\s*---\s*$/.test(lines[i + 1] ?? '')) {
      for (let j = i + 1; j < lines.length && !/^\s*\.\.\.\s*$/.test(lines[j]); j++) block.push(lines[j]);
    }
    // A suite that failed only because a test in it did says so in one line; a test's own block is kept to 40 lines.
    if (block.some((l) => /subtests? failed/.test(l))) out.push(lines[i]);
    else out.push(...block.slice(0, 40), ...(block.length > 40 ? [`${block[0].match(/^\s*/)[0]}  (${block.length - 40} more lines above in the log)`] : []));
  }
  return out;
}
const failed = failures(both);
const cpuAtEnd = cpuTicks();
if (cpuAtStart && cpuAtEnd && cpuAtEnd.total > cpuAtStart.total) {
  const busy = cpuAtEnd.busy - cpuAtStart.busy;
  const share = busy / (cpuAtEnd.total - cpuAtStart.total);
  // Clock ticks are 1/100 s on Linux: busy ticks / 6000 are CPU-minutes.
  process.stdout.write(
    `\n# ---- the machine's CPU while the lanes ran: ${(share * 100).toFixed(0)} % busy over ${availableParallelism()} cores, ${(busy / 6000).toFixed(1)} CPU-minutes of work ----\n`,
  );
}
if (failed.length > 0) process.stdout.write(`\n# ---- failures (also above, in their lane's report) ----\n${failed.join('\n')}\n`);
process.stdout.write(
  `\n# ---- all lanes: ${files.length} files in ${minutes(Date.now() - started)}: tests ${tally(both, 'tests')}, pass ${tally(both, 'pass')}, fail ${tally(both, 'fail')}` +
    ` (stack lane exit ${stackCode}, isolated lane exit ${isolatedCode}) ----\n`,
);
process.exit(interrupted ? 130 : isolatedCode !== 0 ? isolatedCode : stackCode);
