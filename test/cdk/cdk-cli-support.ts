/**
 * The pinned aws-cdk CLI, run offline (no notices download, no telemetry upload: both would only time out), for
 * the CDK CLI test files. Two files, so that each has its own time limit: they run at a lower CPU priority
 * alongside the stack lane (scripts/run-tests.mjs), and on a loaded machine the synth with real bundles alone
 * took minutes.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { repoRoot } from '../../lib/paths';

const cdkBin = join(repoRoot, 'node_modules', '.bin', 'cdk');

export function cdk(args: string[]): { status: number | null; output: string } {
  const result = spawnSync(cdkBin, [...args, '--no-notices'], {
    cwd: repoRoot,
    encoding: 'utf8',
    // Generous: it runs at a lower priority alongside the stack lane.
    timeout: 540_000,
    env: { ...process.env, CDK_DISABLE_CLI_TELEMETRY: 'true' },
  });
  return { status: result.status, output: `${result.stdout}\n${result.stderr}` };
}

/** The stacks a synth wrote to `outdir`, by the cloud assembly's manifest, sorted. */
export function synthesizedStacks(outdir: string): string[] {
  const manifest = JSON.parse(readFileSync(join(outdir, 'manifest.json'), 'utf8')) as { artifacts: Record<string, { type: string }> };
  return Object.entries(manifest.artifacts)
    .filter(([, a]) => a.type === 'aws:cloudformation:stack')
    .map(([id]) => id)
    .sort();
}
