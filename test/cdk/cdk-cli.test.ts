/**
 * The real CLI, offline: `cdk synth -c env=<name>` with the pinned aws-cdk
 * CLI, real esbuild bundles and the host-agent build. Proves cdk.json runs,
 * the CLI accepts the library's cloud assembly, and the bundles that would
 * deploy are the ones scripts/bundle-report.ts measures.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { backgroundHandlerNames, handlerNames } from '../../lambdas/shared/routes';
import { bundleHandlers } from '../../lib/bundle-analysis';
import { pascal } from '../../lib/constructs/control-plane-functions';
import { repoRoot } from '../../lib/paths';

const cdkBin = join(repoRoot, 'node_modules', '.bin', 'cdk');
const allHandlers = [...handlerNames, ...backgroundHandlerNames];

function cdk(args: string[]) {
  // Offline: skip the notices download and telemetry upload (both would only time out).
  const result = spawnSync(cdkBin, [...args, '--no-notices'], {
    cwd: repoRoot,
    encoding: 'utf8',
    // Generous: it runs at a lower priority alongside the stack lane (scripts/run-tests.mjs).
    timeout: 540_000,
    env: { ...process.env, CDK_DISABLE_CLI_TELEMETRY: 'true' },
  });
  return { status: result.status, output: `${result.stdout}\n${result.stderr}` };
}

describe('cdk CLI (pinned version, offline)', () => {
  const outdirs: string[] = [];
  after(() => {
    for (const d of outdirs) rmSync(d, { recursive: true, force: true });
  });
  const synthesized = new Map<string, string>();

  it('is the version package.json pins', () => {
    const pinned = (JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as { devDependencies: Record<string, string> }).devDependencies['aws-cdk'];
    const { status, output } = cdk(['--version']);
    assert.equal(status, 0, output);
    assert.match(output, new RegExp(`^${pinned!.replace(/\./g, '\\.')} `, 'm'));
  });

  // dev with real bundles; prod with bundling limited (-e) to its stateful stack, which has none: the bundling
  // code is the same for both, and bundling it twice would cost the suite two minutes.
  for (const [env, bundling] of [
    ['dev', []],
    ['prod', ['-e', 'EphemeralSandbox-prod-Stateful']],
  ] as const) {
    it(`synthesizes -c env=${env}${bundling.length === 0 ? ' with real bundles' : ' (bundles left to dev)'}`, () => {
      const outdir = mkdtempSync(join(tmpdir(), `cdk-synth-${env}-`));
      outdirs.push(outdir);
      const { status, output } = cdk(['synth', ...bundling, '-c', `env=${env}`, '-q', '-o', outdir]);
      assert.equal(status, 0, output);
      // With a stack selected the CLI names no output folder; the manifest below is the proof either way.
      if (bundling.length === 0) assert.match(output, new RegExp(`Successfully synthesized to ${outdir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
      const manifest = JSON.parse(readFileSync(join(outdir, 'manifest.json'), 'utf8')) as { artifacts: Record<string, { type: string }> };
      const stacks = Object.entries(manifest.artifacts)
        .filter(([, a]) => a.type === 'aws:cloudformation:stack')
        .map(([id]) => id)
        .sort();
      assert.deepEqual(stacks, [`EphemeralSandbox-${env}-Service`, `EphemeralSandbox-${env}-Stateful`]);
      synthesized.set(env, outdir);
    });
  }

  it('deploys handler bundles of the sizes bundle-report measures, and the host-agent as single .mjs files', async () => {
    const outdir = synthesized.get('dev');
    assert.ok(outdir, 'dev synthesized');
    const template = JSON.parse(readFileSync(join(outdir, 'EphemeralSandbox-dev-Service.template.json'), 'utf8')) as { Resources: Record<string, any> };
    const reportDir = mkdtempSync(join(tmpdir(), 'bundle-compare-'));
    outdirs.push(reportDir);
    const measured = new Map((await bundleHandlers(allHandlers, reportDir)).map((b) => [b.handler, b.bytes]));
    for (const handler of allHandlers) {
      const [, fn] = Object.entries(template.Resources).find(
        ([id, r]) => r.Type === 'AWS::Lambda::Function' && new RegExp(`^Handlers${pascal(handler)}[0-9A-F]{8}$`).test(id),
      )!;
      const assetPath = fn.Metadata['aws:asset:path'] as string;
      const files = readdirSync(join(outdir, assetPath)).sort();
      assert.deepEqual(files, ['index.mjs', 'index.mjs.map'], `${handler} asset holds only the bundle and its map (SDK bundled, no node_modules)`);
      const size = statSync(join(outdir, assetPath, 'index.mjs')).size;
      const expected = measured.get(handler)!;
      assert.ok(Math.abs(size - expected) <= expected * 0.01, `${handler}: deployed ${size} bytes, bundle-report ${expected}`);
      const code = readFileSync(join(outdir, assetPath, 'index.mjs'), 'utf8');
      assert.ok(code.startsWith("import { createRequire as __esCreateRequire } from 'node:module'"), `${handler}: ESM with the createRequire banner`);
      // The functions have no --enable-source-maps: the injected lambdas/shared/stack-traces.ts maps their stacks.
      assert.match(code, /Error\.prepareStackTrace=/, `${handler}: maps its own stack traces`);
    }

    const hostAgentAssets = readdirSync(outdir).filter((f) => /^asset\.[0-9a-f]{64}\.mjs$/.test(f));
    assert.equal(hostAgentAssets.length, 2, 'host-agent CLI and daemon, each one file');
    // Both come from scripts/build.mjs: minified ESM with its createRequire banner, and they are different programs.
    const contents = hostAgentAssets.map((f) => readFileSync(join(outdir, f), 'utf8'));
    for (const code of contents) {
      assert.match(code.slice(0, 200), /^import\{createRequire as \w+\}from"node:module";|^import \{ createRequire as \w+ \} from 'node:module';/);
      assert.ok(code.length > 50_000);
    }
    assert.notEqual(contents[0], contents[1]);
    const userData = JSON.stringify(
      Object.values(template.Resources).find((r: any) => r.Type === 'AWS::EC2::LaunchTemplate').Properties.LaunchTemplateData.UserData,
    );
    for (const f of hostAgentAssets) assert.ok(userData.includes(f.slice('asset.'.length)), `user data downloads ${f}`);
  });

  it('stops with the valid names when the environment is unknown', () => {
    const outdir = mkdtempSync(join(tmpdir(), 'cdk-synth-bad-'));
    outdirs.push(outdir);
    const { status, output } = cdk(['synth', '-c', 'env=staging', '-q', '-o', outdir]);
    assert.notEqual(status, 0);
    assert.match(output, /error: unknown environment "staging": valid names are dev, prod \(defined in cdk\.json under context\.environments\)/);
  });

  it('stops and asks for -c env=<name> when no environment is given', () => {
    const outdir = mkdtempSync(join(tmpdir(), 'cdk-synth-none-'));
    outdirs.push(outdir);
    const { status, output } = cdk(['synth', '-q', '-o', outdir]);
    assert.notEqual(status, 0);
    assert.match(output, /error: no environment chosen: pass -c env=<name> \(valid names: dev, prod\)/);
  });
});
