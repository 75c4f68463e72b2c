/**
 * The real CLI, offline: `cdk synth -c env=dev` with the pinned aws-cdk CLI and the real bundles. Proves cdk.json
 * runs, the CLI accepts the library's cloud assembly, and the bundles that would deploy are the ones
 * scripts/bundle-report.ts measures. The version, prod and the CLI's refusals are in cdk-cli-errors.test.ts.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { backgroundHandlerNames, handlerNames } from '../../lambdas/shared/routes';
import { bundleHandlers } from '../../lib/bundle-analysis';
import { pascal } from '../../lib/constructs/control-plane-functions';
import { cdk, synthesizedStacks } from './cdk-cli-support';

const allHandlers = [...handlerNames, ...backgroundHandlerNames];

describe('cdk CLI (pinned version, offline): synth with real bundles', () => {
  const outdirs: string[] = [];
  after(() => {
    for (const d of outdirs) rmSync(d, { recursive: true, force: true });
  });
  let synthesized: string | undefined;

  it('synthesizes -c env=dev with real bundles', () => {
    const outdir = mkdtempSync(join(tmpdir(), 'cdk-synth-dev-'));
    outdirs.push(outdir);
    const { status, output } = cdk(['synth', '-c', 'env=dev', '-q', '-o', outdir]);
    assert.equal(status, 0, output);
    assert.match(output, new RegExp(`Successfully synthesized to ${outdir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
    assert.deepEqual(synthesizedStacks(outdir), ['EphemeralSandbox-dev-Service', 'EphemeralSandbox-dev-Stateful']);
    synthesized = outdir;
  });

  it('deploys handler bundles of the sizes bundle-report measures, and the host-agent as single .mjs files', async () => {
    const outdir = synthesized;
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
    // Both come from the host-agent build (lib/handler-bundling.ts): minified ESM with its createRequire banner, and they are different programs.
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
});
