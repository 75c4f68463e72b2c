/**
 * The stand-ins the Lambda bundles load instead of packages (lib/bundling.ts
 * handlerAlias) answer as the packages they replace.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createRequire } from 'node:module';
import { gte } from '../../lambdas/shared/bundle-aliases/semver-gte-only';
import { defaultProvider } from '../../lambdas/shared/bundle-aliases/credential-provider-env-only';

/** The real package (it ships no types; @types/semver is not a dependency). */
const semver = createRequire(import.meta.url)('semver') as { gte(a: string, b: string): boolean };

describe('bundle stand-ins', () => {
  it('semver-gte-only compares versions as semver.gte does', () => {
    const versions = [
      '0.0.0',
      '1.0.0',
      '1.0.1',
      '1.1.0',
      '2.0.0',
      '8.0.0',
      '20.20.2',
      '22.1.0',
      'v22.11.0',
      '10.0.0',
      '1.0.0-alpha',
      '1.0.0-alpha.1',
      '1.0.0-alpha.beta',
      '1.0.0-beta',
      '1.0.0-beta.2',
      '1.0.0-beta.11',
      '1.0.0-rc.1',
      '1.0.0+build.5',
      '2.1069.0',
      '2.3.0',
    ];
    for (const a of versions) for (const b of versions) assert.equal(gte(a, b), semver.gte(a, b), `gte(${a}, ${b})`);
  });

  it('semver-gte-only refuses what is not a version, as semver does', () => {
    assert.throws(() => gte('not-a-version', '1.0.0'), /Invalid Version/);
    assert.throws(() => semver.gte('not-a-version', '1.0.0'), /Invalid Version/);
  });

  it('credential-provider-env-only answers with the environment credentials', async () => {
    const saved = { ...process.env };
    try {
      process.env.AWS_ACCESS_KEY_ID = 'AKIDEXAMPLE';
      process.env.AWS_SECRET_ACCESS_KEY = 'secret';
      process.env.AWS_SESSION_TOKEN = 'token';
      const credentials = await defaultProvider()();
      assert.equal(credentials.accessKeyId, 'AKIDEXAMPLE');
      assert.equal(credentials.secretAccessKey, 'secret');
      assert.equal(credentials.sessionToken, 'token');
      delete process.env.AWS_ACCESS_KEY_ID;
      await assert.rejects(defaultProvider()(), /Unable to find environment variable credentials/);
    } finally {
      process.env = saved;
    }
  });
});
