/**
 * A paused sandbox leaving a draining host, and arriving on another at its
 * next start (lambdas/shared/relocation.ts has the control plane's side).
 *
 * Out (the drain): the home is synced once more, the pause's /tmp archive and
 * the sandbox's create request (built from its record like a create's; its
 * token read from its container, the one place it is kept in the clear) go
 * to S3 under the sandbox's paused-state prefix, the record lets go of this
 * host (a conditional write), and only then is the container removed here.
 *
 * In (the resume verb with `relocate`): the container is made from the
 * staged request (its home synced down from S3 as at a create, its cold tier
 * mounted), /tmp is restored from the staged archive, and the staged objects
 * are deleted. A retry after a failure half-way picks up where it stopped:
 * an existing container is kept, an archive already fetched is restored.
 */
import { createReadStream, createWriteStream, existsSync } from 'node:fs';
import { rename, rm, stat } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { Transform, type Readable } from 'node:stream';
import { randomBytes } from 'node:crypto';
import { DeleteObjectCommand, GetObjectCommand, NoSuchKey, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import type { z } from 'zod';
import { logger } from '../../lambdas/shared/logger';
import { releasePausedSandbox } from '../../lambdas/shared/relocation';
import type { SandboxRecord } from '../../lambdas/shared/sandbox-record';
import { hostCreateRequest, storageFor } from '../../lambdas/shared/sandboxes';
import type { HostConfig } from './config';
import { createSandbox, isOwned } from './create';
import type { DockerClient } from './docker';
import { HostAgentError } from './errors';
import { destroySandbox, resumeSandbox } from './lifecycle';
import { pausedStateKeys, pausedStatePrefix, type TmpRestoreReport } from '../../contract/host-protocol';
import { createRequest, type resumeRequest } from '../../contract/host-requests';
import { attachHome, syncHomeUp } from './sandbox-storage';
import { createS3Client } from './storage/index';
import { archiveSizeFactor, restoreTmp, tmpArchivePath, tmpfsBytes } from './tmp-archive';

export type ResumeInput = z.output<typeof resumeRequest>;

/** One PutObject carries at most 5 GiB (ANCHORS: S3 single PUT); a larger /tmp archive cannot be moved this way. */
export const maxSinglePutBytes = 5 * 1024 ** 3;

async function withS3<T>(fn: (s3: S3Client) => Promise<T>): Promise<T> {
  const s3 = createS3Client();
  try {
    return await fn(s3);
  } finally {
    s3.destroy();
  }
}

/**
 * Moves a paused sandbox off this (draining) host. True when it moved;
 * false when the record changed first (a start or a destroy won: the caller
 * ends it with the host's other sandboxes). Throws when its state could not
 * be put in S3 (nothing on the record changed then).
 */
export async function movePausedOut(r: SandboxRecord, hostId: string, config: HostConfig, docker: DockerClient): Promise<boolean> {
  const sandboxId = r.sandbox_id;
  const info = await docker.inspectContainer(sandboxId);
  if (!info || !isOwned(info)) throw new HostAgentError('not_found', `paused sandbox ${sandboxId} has no container on this host to move`);
  if (info.State.Running) throw new HostAgentError('bad_request', `sandbox ${sandboxId} is recorded paused but its container runs; not moving it`);
  const token = (info.Config.Env ?? []).find((e) => e.startsWith('SANDBOX_TOKEN='))?.slice('SANDBOX_TOKEN='.length);
  if (!token) throw new HostAgentError('bad_request', `the container of ${sandboxId} carries no SANDBOX_TOKEN; it cannot be made again elsewhere`);

  const storage = storageFor(r.tenant_id, r.user_id, r.config.disk_mb);
  // The pause synced the home; again here, for anything a failed sync of it (or a host restart) left behind.
  await attachHome({ config, sandboxId });
  await syncHomeUp({ config, sandboxId, storage });

  const prefix = pausedStatePrefix(r);
  const keys = pausedStateKeys(prefix);
  const request = hostCreateRequest(r, { token, image: info.Config.Image });
  const archive = tmpArchivePath(config, sandboxId);
  await withS3(async (s3) => {
    if (existsSync(archive)) {
      const { size } = await stat(archive);
      // The limit every /tmp archive has (twice its tmpfs), and what one PUT carries.
      const cap = Math.min(archiveSizeFactor * tmpfsBytes(info, config), maxSinglePutBytes);
      if (size > cap) throw new HostAgentError('storage_error', `the /tmp archive of ${sandboxId} is ${size} bytes, over its ${cap}-byte limit; not moving it`);
      await s3.send(
        new PutObjectCommand({ Bucket: storage.bucket, Key: keys.tmp, Body: createReadStream(archive), ContentLength: size, ContentType: 'application/x-tar' }),
      );
    } else {
      // No archive: /tmp was empty (or already gone with a stopped container); no stale one of an earlier move may stand in.
      await s3.send(new DeleteObjectCommand({ Bucket: storage.bucket, Key: keys.tmp }));
    }
    // Last: a request without its archive is never staged as complete.
    await s3.send(new PutObjectCommand({ Bucket: storage.bucket, Key: keys.request, Body: JSON.stringify(request), ContentType: 'application/json' }));
  });

  if (!(await releasePausedSandbox(sandboxId, hostId, prefix))) {
    await dropPausedState(storage.bucket, prefix);
    return false;
  }
  // Released: the container and its host state go (the home was synced above; forced skips a second sync).
  await destroySandbox({ sandboxId, graceful: false }, config, docker);
  logger.info('drain: paused sandbox moved off the host', { hostId, sandboxId, prefix });
  return true;
}

/** Deletes a paused state's objects (used, or never recorded); a failure is logged (nothing reads them without the record). */
export async function dropPausedState(bucket: string, prefix: string): Promise<void> {
  const keys = pausedStateKeys(prefix);
  await withS3(async (s3) => {
    for (const key of [keys.request, keys.tmp]) {
      await s3
        .send(new DeleteObjectCommand({ Bucket: bucket, Key: key }))
        .catch((err: unknown) => logger.warn('paused state: an object was not deleted', { bucket, key, err }));
    }
  });
}

async function readText(s3: S3Client, bucket: string, key: string): Promise<string | undefined> {
  try {
    const out = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    return await out.Body!.transformToString('utf8');
  } catch (err) {
    if (err instanceof NoSuchKey || (err as { name?: string }).name === 'NoSuchKey') return undefined;
    throw err;
  }
}

/** Fetches the staged /tmp archive to where a resume restores it from; false when there is none. */
async function fetchArchive(s3: S3Client, bucket: string, key: string, to: string, capBytes: number): Promise<boolean> {
  let body: Readable;
  try {
    const out = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    if ((out.ContentLength ?? 0) > capBytes)
      throw new HostAgentError('storage_error', `the staged /tmp archive is ${out.ContentLength} bytes, over this sandbox's ${capBytes}-byte limit`);
    body = out.Body as Readable;
  } catch (err) {
    if (err instanceof NoSuchKey || (err as { name?: string }).name === 'NoSuchKey') return false;
    throw err;
  }
  const partial = `${to}.${process.pid}-${randomBytes(4).toString('hex')}.partial`;
  let bytes = 0;
  const bounded = new Transform({
    transform(chunk: Buffer, _enc, done) {
      bytes += chunk.length;
      done(bytes > capBytes ? new HostAgentError('storage_error', `the staged /tmp archive passed this sandbox's ${capBytes}-byte limit`) : null, chunk);
    },
  });
  try {
    await pipeline(body, bounded, createWriteStream(partial, { mode: 0o600, flags: 'wx' }));
    await rename(partial, to);
  } catch (err) {
    await rm(partial, { force: true });
    throw err;
  }
  return true;
}

/** The resume verb for a sandbox moved off a drained host (see the top of this file). */
export async function resumeRelocated(request: ResumeInput, config: HostConfig, docker: DockerClient): Promise<{ resumed: boolean; tmp?: TmpRestoreReport }> {
  const { sandboxId, storage, relocate } = request;
  if (!relocate) throw new HostAgentError('bad_request', 'resumeRelocated needs relocate');
  if (!storage) throw new HostAgentError('bad_request', `start of moved sandbox ${sandboxId} needs its storage spec`);
  if (!relocate.prefix.includes(`/sandboxes/${sandboxId}/`)) throw new HostAgentError('bad_request', `paused state ${relocate.prefix} is not ${sandboxId}'s`);
  const keys = pausedStateKeys(relocate.prefix);
  return withS3(async (s3) => {
    let info = await docker.inspectContainer(sandboxId);
    if (info && !isOwned(info)) throw new HostAgentError('bad_request', `a container named ${sandboxId} exists on this host and is not a sandbox`);
    if (!info) {
      const text = await readText(s3, storage.bucket, keys.request);
      if (text === undefined) throw new HostAgentError('not_found', `the staged state of moved sandbox ${sandboxId} is missing (${keys.request})`);
      const staged = createRequest.parse(JSON.parse(text));
      if (staged.sandboxId !== sandboxId) throw new HostAgentError('bad_request', `staged request at ${keys.request} is for ${staged.sandboxId}`);
      await createSandbox({ ...staged, storage, ...(relocate.egress ? { egress: relocate.egress } : {}) }, config, docker);
      info = await docker.inspectContainer(sandboxId);
      if (!info) throw new HostAgentError('docker_error', `the container of ${sandboxId} vanished right after it was made`);
    } else if (!info.State.Running) {
      // A container made by an earlier try that stopped since: the ordinary start path brings it up (and its mounts).
      await resumeSandbox({ sandboxId, storage }, config, docker);
      info = (await docker.inspectContainer(sandboxId)) ?? info;
    }
    const local = tmpArchivePath(config, sandboxId);
    if (!existsSync(local)) {
      await fetchArchive(s3, storage.bucket, keys.tmp, local, archiveSizeFactor * tmpfsBytes(info, config));
    }
    // restoreTmp deletes the local archive once restored; a failure keeps it for the next start.
    const tmp = existsSync(local) ? await restoreTmp(docker, config, sandboxId, info.Id) : undefined;
    await dropPausedState(storage.bucket, relocate.prefix);
    return { resumed: true, ...(tmp ? { tmp } : {}) };
  });
}
