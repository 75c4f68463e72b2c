import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { App, Aspects, Stack } from 'aws-cdk-lib';
import { Annotations, Match } from 'aws-cdk-lib/assertions';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { AwsSolutionsChecks } from 'cdk-nag';
import type { IConstruct } from 'constructs';
import { addSandboxStacks } from '../../lib/app';
import { cdkJsonContext } from './fixture';

type Suppression = { id: string; reason: string; applies_to?: unknown[] };

function suppressionsIn(stack: Stack): { path: string; suppression: Suppression }[] {
  const found: { path: string; suppression: Suppression }[] = [];
  const visit = (c: IConstruct) => {
    const cfn = c as unknown as { getMetadata?: (key: string) => unknown };
    const nag = typeof cfn.getMetadata === 'function' ? (cfn.getMetadata('cdk_nag') as { rules_to_suppress?: Suppression[] } | undefined) : undefined;
    for (const s of nag?.rules_to_suppress ?? []) found.push({ path: c.node.path, suppression: s });
    c.node.children.forEach(visit);
  };
  visit(stack);
  return found;
}

/** Violations in the synth's policy validation report (CloudFormation Validate, and annotations). */
function validationViolations(outdir: string): string[] {
  const report = join(outdir, 'validation-report.json');
  if (!existsSync(report)) return [];
  const parsed = JSON.parse(readFileSync(report, 'utf8')) as {
    pluginReports: { pluginName: string; violations: { ruleName: string; description: string }[] }[];
  };
  return parsed.pluginReports.flatMap((p) => p.violations.map((v) => `${p.pluginName} ${v.ruleName}: ${v.description}`));
}

describe('cdk-nag AwsSolutions', () => {
  const outdirs: string[] = [];
  after(() => {
    for (const d of outdirs) rmSync(d, { recursive: true, force: true });
  });

  it('reports a finding this test harness can see (the checks are really running)', () => {
    const app = new App();
    const stack = new Stack(app, 'Unsafe');
    new s3.Bucket(stack, 'Plain', { enforceSSL: false });
    Aspects.of(app).add(new AwsSolutionsChecks());
    const errors = Annotations.fromStack(stack).findError('*', Match.stringLikeRegexp('AwsSolutions-S10'));
    assert.equal(errors.length, 1);
  });

  it("catches template problems with CloudFormation's validator during synth (the check is really running)", () => {
    const outdir = mkdtempSync(join(tmpdir(), 'cdk-validate-'));
    outdirs.push(outdir);
    const app = new App({ outdir, context: { '@aws-cdk/core:validateAgainstDefaultRules': true } });
    const stack = new Stack(app, 'Old');
    // CDK's L1 types this as a number; CloudFormation's schema says string: a finding the validator reports.
    new s3.CfnBucket(stack, 'Bucket', { lifecycleConfiguration: { rules: [{ status: 'Enabled', expirationInDays: 1, objectSizeGreaterThan: 5 }] } });
    app.synth();
    assert.match(validationViolations(outdir).join('\n'), /ObjectSizeGreaterThan/);
  });

  const variants = [
    { env: 'dev', pinned: false },
    { env: 'prod', pinned: false },
    // The CLI pins the region (and the account, given credentials): findings then name them literally.
    { env: 'dev', pinned: true },
    { env: 'prod', pinned: true },
  ] as const;
  for (const { env: envName, pinned } of variants) {
    const env = `${envName}${pinned ? ' (account and region pinned)' : ''}`;
    // Exactly what `cdk synth -c env=<env>` does: one App, nag aspect on, one synth.
    let synthesized: { app: App; stacks: ReturnType<typeof addSandboxStacks>; assembly: ReturnType<App['synth']>; outdir: string } | undefined;
    const run = () => {
      if (synthesized) return synthesized;
      const outdir = mkdtempSync(join(tmpdir(), `cdk-nag-${envName}-`));
      outdirs.push(outdir);
      const app = new App({ outdir, context: { ...cdkJsonContext(), env: envName, 'aws:cdk:bundling-stacks': [] } });
      const stacks = addSandboxStacks(app, { defaultEnv: pinned ? { account: '123456789012', region: 'eu-west-1' } : {} });
      synthesized = { app, stacks, assembly: app.synth(), outdir };
      return synthesized;
    };

    it(`leaves no unacknowledged error or warning in ${env}`, () => {
      const { assembly } = run();
      assert.equal(assembly.stacks.length, 2);
      for (const stack of assembly.stacks) {
        const findings = stack.messages.filter((m) => m.level === 'error' || m.level === 'warning');
        assert.deepEqual(
          findings.map((m) => `${m.level} ${m.id}: ${String(m.entry.data).split('\n')[0]}`),
          [],
          stack.stackName,
        );
      }
    });

    it(`gives every acknowledgement in ${env} a specific reason`, () => {
      const { stacks } = run();
      const all = [...suppressionsIn(stacks.stateful), ...suppressionsIn(stacks.service)];
      assert.ok(all.length > 0);
      for (const { path, suppression } of all) {
        assert.match(suppression.id, /^(AwsSolutions-[A-Z0-9]+|CdkNagValidationFailure)$/, path);
        assert.ok(suppression.reason.length >= 60, `${path} ${suppression.id}: reason too short to say why: "${suppression.reason}"`);
        // Wildcard acknowledgements must name the findings they cover.
        if (suppression.id === 'AwsSolutions-IAM5' || suppression.id === 'AwsSolutions-IAM4') {
          assert.ok(suppression.applies_to && suppression.applies_to.length > 0, `${path} ${suppression.id} must say which findings it covers (appliesTo)`);
        }
      }
    });

    it(`passes CloudFormation's own template validation in ${env} with no findings`, () => {
      const { outdir } = run();
      assert.deepEqual(validationViolations(outdir), []);
    });
  }
});
