/**
 * Issue 13: image rollout on a host, against the real Docker engine and a
 * real registry on loopback (Debian's docker-registry, the CNCF distribution
 * server; scripts/setup-host.sh installs it). ECR cannot run here: its token
 * call is stood in (the registry needs no credentials; the stand-in proves
 * the pull asks for them only for an ECR registry and passes them on).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { DockerClient, type RegistryCredentials } from '../../host-agent/src/docker';
import { ensureImagePresent, prepareHostImage, pruneImages, type RegistryAuth } from '../../host-agent/src/image-rollout';
import { docker as dockerCli, startLocalRegistry, type LocalRegistry } from '../support/registry';

const docker = new DockerClient('/var/run/docker.sock');
const runId = Math.random().toString(36).slice(2, 8);
let registry: LocalRegistry | undefined;
let repo = '';
const digests: Record<'v1' | 'v2', string> = { v1: '', v2: '' };

/** The ECR token call, stood in: records which images asked and answers fixed credentials. */
function standInAuth(): { auth: RegistryAuth; asked: string[] } {
  const asked: string[] = [];
  const credentials: RegistryCredentials = { username: 'AWS', password: 'stand-in-token', serveraddress: 'https://stand-in' };
  return { asked, auth: async (image) => (asked.push(image), credentials) };
}

async function removeLocal(...names: string[]): Promise<void> {
  for (const name of names) await dockerCli('rmi', name).catch(() => undefined);
}

before(async () => {
  registry = await startLocalRegistry();
  repo = `${registry.host}/sandbox-rollout-${runId}`;
  for (const v of ['v1', 'v2'] as const) {
    const local = `sandbox-rollout-${runId}:${v}`;
    await new Promise<void>((resolve, reject) => {
      const child = spawn('docker', ['build', '-q', '-t', local, '-'], { stdio: ['pipe', 'ignore', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (d) => (stderr += d));
      child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`docker build: ${stderr}`))));
      child.stdin.end(`FROM local/debian:bookworm\nLABEL rollout=${v}\n`);
    });
    digests[v] = (await registry.push(local, `sandbox-rollout-${runId}`, v)).digestRef;
    await dockerCli('rmi', local);
  }
  // Nothing of it on the host: every test pulls what it needs, as a fresh host does.
  await removeLocal(`${repo}:v1`, `${repo}:v2`, digests.v1, digests.v2);
});

after(async () => {
  for (const c of await docker.listContainers({ label: [`rollout-test=${runId}`] })) await docker.removeContainer(c.Id, true).catch(() => undefined);
  await removeLocal(`${repo}:v1`, `${repo}:v2`, digests.v1, digests.v2);
  await registry?.close();
});

describe('image rollout on a host (a real registry on loopback; the ECR token call stood in)', () => {
  it('pulls a tag it does not have and resolves it to the digest the registry serves', async () => {
    const { auth, asked } = standInAuth();
    const image = await prepareHostImage(docker, `${repo}:v1`, auth);
    assert.equal(image.digestRef, digests.v1);
    assert.match(image.digestRef, /@sha256:[0-9a-f]{64}$/);
    assert.equal(image.ref, `${repo}:v1`);
    assert.deepEqual(asked, [`${repo}:v1`], 'credentials were asked for once, for the pull');
    // Present now: the next pass only inspects.
    const again = await ensureImagePresent(docker, `${repo}:v1`, auth);
    assert.deepEqual([again.pulled, again.id, asked.length], [false, image.id, 1]);
  });

  it('pulls by digest (what creates name) and answers the same reference', async () => {
    const { auth } = standInAuth();
    const present = await ensureImagePresent(docker, digests.v2, auth);
    assert.deepEqual([present.pulled, present.digestRef], [true, digests.v2]);
    assert.equal((await docker.inspectImage(digests.v2)).Id, present.id);
  });

  it('fails with the image named when the registry does not have it', async () => {
    const { auth } = standInAuth();
    await assert.rejects(ensureImagePresent(docker, `${repo}:v9`, auth), (e: Error) => {
      assert.match(e.message, new RegExp(`^image ${repo.replace(/[.]/g, '\\.')}:v9 is not on this host and could not be pulled: `));
      return true;
    });
  });

  it('prunes older images of the repository, never the kept one nor one a container uses', async () => {
    const v1 = await prepareHostImage(docker, `${repo}:v1`, standInAuth().auth);
    const v2 = await prepareHostImage(docker, digests.v2, standInAuth().auth);
    // A stopped container of v1 (a paused sandbox) holds it.
    const { Id: holder } = await docker.createContainer(`rollout-${runId}`, { Image: `${repo}:v1`, Cmd: ['true'], Labels: { 'rollout-test': runId } });
    assert.deepEqual(await pruneImages(docker, repo, [v2.id]), []);
    assert.ok(await docker.inspectImage(v1.id));

    await docker.removeContainer(holder, true);
    const pruned = await pruneImages(docker, repo, [v2.id]);
    // Untagging its last name deletes the image, digest and all (its digest name is then already gone).
    assert.deepEqual(pruned, [`${repo}:v1`]);
    await assert.rejects(docker.inspectImage(v1.id), /No such image/);
    assert.equal((await docker.inspectImage(digests.v2)).Id, v2.id, 'the kept image stays');
    // Other repositories are never looked at.
    assert.ok(await docker.inspectImage('local/debian:bookworm'));
  });
});
