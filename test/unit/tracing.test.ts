/**
 * X-Ray in the functions only (lambdas/shared/clients/capture.ts): every AWS
 * SDK client a Lambda function makes is captured by the Tracer, and the
 * processes that are not functions (the host daemon and its CLI, the local
 * stack's own process) never load the X-Ray SDK, whose async hook (cls-hooked,
 * with a destroy callback) would otherwise cost every promise they make.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { build } from 'esbuild';
import { hostAgentPrograms } from '../../lib/bundling';
import { repoRoot } from '../../lib/paths';

/** Runs `body` (ESM, top-level await) in a fresh Node with tsx, as if in a Lambda environment, and parses what it prints. */
function inFreshProcess(body: string): any {
  const out = execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', body], {
    cwd: repoRoot,
    env: { ...process.env, AWS_EXECUTION_ENV: 'AWS_Lambda_nodejs22.x', AWS_REGION: 'us-east-1', POWERTOOLS_TRACE_ENABLED: 'true' },
    encoding: 'utf8',
  });
  return JSON.parse(out.trim().split('\n').pop()!);
}

const clientsReport = `
  import { createRequire } from 'node:module';
  const { ssm } = await import('./lambdas/shared/clients/ssm.ts');
  const { s3 } = await import('./lambdas/shared/clients/s3.ts');
  const { eventBridge } = await import('./lambdas/shared/clients/eventbridge.ts');
  const { dynamo } = await import('./lambdas/shared/clients/dynamodb.ts');
  const captured = (c) => c.middlewareStack.identify().some((m) => m.startsWith('XRaySDKInstrumentation'));
  const xrayLoaded = Object.keys(createRequire(import.meta.url).cache).some((k) => k.includes('aws-xray-sdk-core'));
  console.log(JSON.stringify({ ssm: captured(ssm()), s3: captured(s3()), eventBridge: captured(eventBridge()), dynamo: captured(dynamo()), xrayLoaded }));
`;

describe('X-Ray tracing reaches the functions only', () => {
  it("captures every AWS SDK client a Lambda function makes (its middlewares' module registers the Tracer)", () => {
    const report = inFreshProcess(`await import('./lambdas/shared/observability.ts');\n${clientsReport}`);
    assert.deepEqual(report, { ssm: true, s3: true, eventBridge: true, dynamo: true, xrayLoaded: true });
  });

  it('leaves the clients of a process that is not a function untouched, and never loads the X-Ray SDK there', () => {
    const report = inFreshProcess(`await import('./lib/local/stack.ts');\n${clientsReport}`);
    assert.deepEqual(report, { ssm: false, s3: false, eventBridge: false, dynamo: false, xrayLoaded: false });
  });

  it('keeps the X-Ray SDK out of the host-agent programs and in every function bundle', async () => {
    const reaches = async (entry: string) => {
      const r = await build({
        entryPoints: [entry],
        bundle: true,
        platform: 'node',
        format: 'esm',
        write: false,
        metafile: true,
        outdir: join(repoRoot, '.tracing-test-out'),
        logLevel: 'silent',
        external: ['cpu-features', 'ssh2'],
      });
      return Object.keys(r.metafile.inputs).some((f) => f.includes('node_modules/aws-xray-sdk-core/'));
    };
    for (const [name, entry] of Object.entries(hostAgentPrograms)) assert.equal(await reaches(entry), false, `${name} bundles the X-Ray SDK`);
    for (const handler of ['exec-sandbox', 'reaper', 'authorizer']) {
      assert.equal(await reaches(join(repoRoot, 'lambdas', `${handler}.ts`)), true, `${handler} has no X-Ray SDK to trace with`);
    }
  });
});
