/**
 * Image references and ECR credentials on a host (host-agent/src/image-rollout.ts).
 * ECR cannot run here: GetAuthorizationToken is answered by a stand-in client.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { ECRClient } from '@aws-sdk/client-ecr';
import { desiredImageSource, digestRefOf, ecrRegistryAuth, isEcrImage, registryOf, repositoryOf } from '../../host-agent/src/image-rollout';

const ecrRepo = '123456789012.dkr.ecr.eu-west-1.amazonaws.com/cdk-hnb659fds-container-assets-123456789012-eu-west-1';
const digest = 'sha256:' + 'a'.repeat(64);

/** A stand-in ECR client: counts GetAuthorizationToken calls and answers a token for AWS:secret. */
function standInEcr(expiresAt: Date) {
  const calls: string[] = [];
  const client = {
    send: async (command: { constructor: { name: string } }) => {
      calls.push(command.constructor.name);
      return {
        authorizationData: [{ authorizationToken: Buffer.from('AWS:secret').toString('base64'), proxyEndpoint: `https://${registryOf(ecrRepo)}`, expiresAt }],
      };
    },
  } as unknown as Pick<ECRClient, 'send'>;
  return { calls, client };
}

describe('image references', () => {
  it('names the registry, the repository and the digest of a reference', () => {
    assert.equal(registryOf(`${ecrRepo}:abc`), '123456789012.dkr.ecr.eu-west-1.amazonaws.com');
    assert.equal(registryOf('ephemeral-sandbox:latest'), undefined);
    assert.equal(registryOf('library/ubuntu:24.04'), undefined);
    assert.equal(repositoryOf('127.0.0.1:5000/sandbox:v1'), '127.0.0.1:5000/sandbox');
    assert.equal(repositoryOf(`127.0.0.1:5000/sandbox@${digest}`), '127.0.0.1:5000/sandbox');
    assert.equal(repositoryOf('127.0.0.1:5000/sandbox'), '127.0.0.1:5000/sandbox');
    assert.ok(isEcrImage(`${ecrRepo}:abc`));
    assert.ok(!isEcrImage('public.ecr.aws/docker/library/ubuntu:24.04'));
    assert.ok(!isEcrImage('ephemeral-sandbox:latest'));
  });

  it('resolves a tag to the digest of its own repository, and keeps a digest reference as it is', () => {
    const info = { RepoDigests: [`other.example/sandbox@sha256:${'b'.repeat(64)}`, `${ecrRepo}@${digest}`] };
    assert.equal(digestRefOf(`${ecrRepo}:abc`, info), `${ecrRepo}@${digest}`);
    assert.equal(digestRefOf(`${ecrRepo}@${digest}`, { RepoDigests: [] }), `${ecrRepo}@${digest}`);
    assert.equal(digestRefOf('ephemeral-sandbox:latest', { RepoDigests: [] }), undefined, 'a local build has no digest');
  });
});

describe('ECR credentials (GetAuthorizationToken stood in)', () => {
  it('decodes the token into the Engine API credentials and reuses it until shortly before it expires', async () => {
    let now = Date.parse('2026-01-01T00:00:00Z');
    const { calls, client } = standInEcr(new Date(now + 12 * 3600_000));
    const auth = ecrRegistryAuth(
      async () => client,
      () => now,
    );
    assert.deepEqual(await auth(`${ecrRepo}:abc`), {
      username: 'AWS',
      password: 'secret',
      serveraddress: 'https://123456789012.dkr.ecr.eu-west-1.amazonaws.com',
    });
    now += 11 * 3600_000;
    await auth(`${ecrRepo}@${digest}`);
    assert.deepEqual(calls, ['GetAuthorizationTokenCommand']);
    now += 40 * 60_000; // within the refresh margin of its expiry
    await auth(`${ecrRepo}:abc`);
    assert.equal(calls.length, 2);
  });

  it('asks for nothing for an image outside ECR', async () => {
    const { calls, client } = standInEcr(new Date());
    const auth = ecrRegistryAuth(async () => client);
    assert.equal(await auth('ephemeral-sandbox:latest'), undefined);
    assert.equal(await auth('127.0.0.1:5000/sandbox:v1'), undefined);
    assert.deepEqual(calls, []);
  });
});

describe('the image reference a running host reads at each pass (SSM GetParameter answered by a stand-in reader)', () => {
  it('follows the parameter as a deploy changes it', async () => {
    let value: string | undefined = 'repo:v1';
    const names: string[] = [];
    const desired = desiredImageSource({ parameterName: '/p', initial: 'repo:v0', read: async (n) => (names.push(n), value) });
    assert.equal(await desired(), 'repo:v1');
    value = 'repo:v2';
    assert.equal(await desired(), 'repo:v2');
    assert.deepEqual(names, ['/p', '/p']);
  });
  it('keeps the last reference read when the parameter cannot be read or is empty (the host keeps its image)', async () => {
    let fail = false;
    let value = 'repo:v1';
    const desired = desiredImageSource({
      parameterName: '/p',
      initial: 'repo:v0',
      read: async () => {
        if (fail) throw new Error('ThrottlingException');
        return value;
      },
    });
    assert.equal(await desired(), 'repo:v1');
    fail = true;
    assert.equal(await desired(), 'repo:v1');
    fail = false;
    value = ' ';
    assert.equal(await desired(), 'repo:v1');
  });
  it('starts from SANDBOX_IMAGE when the first read fails, and uses only it without a parameter name', async () => {
    const failing = desiredImageSource({ parameterName: '/p', initial: 'repo:v0', read: async () => Promise.reject(new Error('unreachable')) });
    assert.equal(await failing(), 'repo:v0');
    let reads = 0;
    const fixed = desiredImageSource({ parameterName: undefined, initial: 'repo:v0', read: async () => (reads++, 'repo:v9') });
    assert.equal(await fixed(), 'repo:v0');
    assert.equal(reads, 0);
  });
});
