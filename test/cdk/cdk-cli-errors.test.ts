/**
 * The real CLI, offline, on what needs no bundles: the pinned version, `cdk synth -c env=prod` with bundling
 * limited to its stateful stack (the bundling code is the one cdk-cli.test.ts runs for dev), and the CLI's
 * refusals of an unknown or missing environment.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { repoRoot } from '../../lib/paths';
import { cdk, synthesizedStacks } from './cdk-cli-support';

describe('cdk CLI (pinned version, offline): version, prod, refusals', () => {
  const outdirs: string[] = [];
  after(() => {
    for (const d of outdirs) rmSync(d, { recursive: true, force: true });
  });

  it('is the version package.json pins', () => {
    const pinned = (JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as { devDependencies: Record<string, string> }).devDependencies['aws-cdk'];
    const { status, output } = cdk(['--version']);
    assert.equal(status, 0, output);
    assert.match(output, new RegExp(`^${pinned!.replace(/\./g, '\\.')} `, 'm'));
  });

  it('synthesizes -c env=prod (bundles left to dev)', () => {
    const outdir = mkdtempSync(join(tmpdir(), 'cdk-synth-prod-'));
    outdirs.push(outdir);
    // Bundling limited (-e) to the stateful stack, which has none: bundling it again would cost the suite minutes.
    const { status, output } = cdk(['synth', '-e', 'EphemeralSandbox-prod-Stateful', '-c', 'env=prod', '-q', '-o', outdir]);
    assert.equal(status, 0, output);
    // With a stack selected the CLI names no output folder; the manifest is the proof.
    assert.deepEqual(synthesizedStacks(outdir), ['EphemeralSandbox-prod-Service', 'EphemeralSandbox-prod-Stateful']);
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
