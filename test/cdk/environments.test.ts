import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { App } from 'aws-cdk-lib';
import { InstanceArchitecture } from 'aws-cdk-lib/aws-ec2';
import { addSandboxStacks } from '../../lib/app';
import { EnvironmentConfigError, resolveEnvironment } from '../../lib/environment';
import { cdkJsonContext } from './fixture';

const environments = cdkJsonContext().environments as Record<string, Record<string, any>>;

function withChange(name: string, change: (env: Record<string, any>) => void): Record<string, unknown> {
  const copy = structuredClone(environments);
  change(copy[name]!);
  return copy;
}

describe('per-environment settings from cdk.json', () => {
  it('defines dev and prod, and both validate', () => {
    assert.deepEqual(Object.keys(environments).sort(), ['dev', 'prod']);
    for (const name of ['dev', 'prod']) {
      const env = resolveEnvironment(name, environments);
      assert.equal(env.name, name);
      assert.equal(env.hostArchitecture, InstanceArchitecture.ARM_64);
    }
  });

  it('keeps data and protects stacks in prod, and throws it away in dev', () => {
    assert.equal(resolveEnvironment('prod', environments).removalPolicy, 'retain');
    assert.equal(resolveEnvironment('dev', environments).removalPolicy, 'destroy');
  });

  it('rejects an unknown environment with a message naming the valid ones', () => {
    assert.throws(
      () => resolveEnvironment('staging', environments),
      (err: unknown) =>
        err instanceof EnvironmentConfigError &&
        err.message === 'unknown environment "staging": valid names are dev, prod (defined in cdk.json under context.environments)',
    );
  });

  it('asks for -c env=<name> when no environment is chosen', () => {
    assert.throws(() => resolveEnvironment(undefined, environments), /no environment chosen: pass -c env=<name> \(valid names: dev, prod\)/);
  });

  it('fails the app before any stack exists when the environment is unknown', () => {
    const app = new App({ context: { ...cdkJsonContext(), env: 'qa' } });
    assert.throws(() => addSandboxStacks(app), /unknown environment "qa": valid names are dev, prod/);
    assert.equal(app.node.children.length, 0);
  });

  it('names the field when a setting is invalid', () => {
    const bad = withChange('dev', (e) => {
      e.hosts.minHosts = 5;
      e.logRetentionDays = 10;
    });
    assert.throws(
      () => resolveEnvironment('dev', bad),
      (err: unknown) =>
        err instanceof EnvironmentConfigError &&
        err.message.includes('environment "dev" in cdk.json is invalid') &&
        err.message.includes('hosts.minHosts: minHosts (5) is above maxHosts (3)') &&
        err.message.includes("logRetentionDays: must be one of CloudWatch's retention periods"),
    );
  });

  it('rejects unknown and missing settings, so a typo is not silently ignored', () => {
    assert.throws(
      () =>
        resolveEnvironment(
          'dev',
          withChange('dev', (e) => (e.hosts.minHost = 1)),
        ),
      /hosts: Unrecognized key/,
    );
    assert.throws(
      () =>
        resolveEnvironment(
          'dev',
          withChange('dev', (e) => delete e.reaper),
        ),
      /reaper:/,
    );
  });

  it('rejects a warm pool together with Spot (Auto Scaling does not support it)', () => {
    const bad = withChange('dev', (e) => (e.hosts.warmPoolMinSize = 1));
    assert.throws(() => resolveEnvironment('dev', bad), /hosts\.warmPoolMinSize: a warm pool needs a single instance type and Spot off/);
  });

  it('rejects a state volume that cannot hold every slot at the disk and memory limits (homes are preallocated)', () => {
    const bad = withChange('prod', (e) => (e.hosts.stateVolumeGiB = 100));
    assert.throws(
      () => resolveEnvironment('prod', bad),
      /hosts\.stateVolumeGiB: 100 GiB cannot hold 12 slots at maxDiskMb \(8192\) plus a kept \/tmp of half maxMemoryMb \(4096\): needs at least 144 GiB/,
    );
    assert.throws(
      () =>
        resolveEnvironment(
          'dev',
          withChange('dev', (e) => (e.limits.defaultDiskMb = 8192)),
        ),
      /limits\.defaultDiskMb: defaultDiskMb is above maxDiskMb/,
    );
  });

  it('rejects a headroom that would keep the fleet mostly empty, and a scale-in wait CloudWatch cannot evaluate', () => {
    assert.throws(
      () =>
        resolveEnvironment(
          'prod',
          withChange('prod', (e) => (e.hosts.headroomPercent = 95)),
        ),
      /hosts\.headroomPercent:.*90/,
    );
    assert.throws(
      () =>
        resolveEnvironment(
          'prod',
          withChange('prod', (e) => (e.hosts.headroomPercent = -1)),
        ),
      /hosts\.headroomPercent:/,
    );
    assert.throws(
      () =>
        resolveEnvironment(
          'dev',
          withChange('dev', (e) => (e.hosts.scaleInAfterMinutes = 0)),
        ),
      /hosts\.scaleInAfterMinutes:/,
    );
    assert.throws(
      () =>
        resolveEnvironment(
          'dev',
          withChange('dev', (e) => (e.hosts.scaleInAfterMinutes = 1441)),
        ),
      /hosts\.scaleInAfterMinutes:/,
    );
  });

  it('rejects instance types of different architectures', () => {
    const bad = withChange('dev', (e) => (e.hosts.instanceTypes = ['t4g.medium', 't3.medium']));
    assert.throws(() => resolveEnvironment('dev', bad), /instance types mix architectures/);
  });

  it('derives x86_64 hosts from x86 instance types', () => {
    const x86 = withChange('prod', (e) => (e.hosts.instanceTypes = ['m7i.xlarge']));
    assert.equal(resolveEnvironment('prod', x86).hostArchitecture, InstanceArchitecture.X86_64);
  });
});
