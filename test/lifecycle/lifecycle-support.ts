/** Helpers the lifecycle tests share: bounded waits, a sandbox's own token, records and S3 objects. */
import { GetObjectCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { s3 } from '../../lambdas/shared/clients/s3';
import { getSandbox } from '../../lambdas/shared/sandbox-store';
import type { SandboxRecord } from '../../lambdas/shared/sandbox-record';
import type { LocalStack } from '../../lib/local/stack';
import { inspect } from '../support/docker';

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `probe` until it answers something truthy; throws with `what` after `timeoutMs`. */
export async function waitFor<T>(what: string, probe: () => Promise<T | undefined | false>, timeoutMs: number, intervalMs = 200): Promise<T> {
  const started = Date.now();
  let last: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value) return value;
    } catch (err) {
      last = err;
    }
    if (Date.now() - started > timeoutMs) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
    }
    await sleep(intervalMs);
  }
}

/** The record straight from DynamoDB (consistent read). */
export async function record(sandboxId: string): Promise<SandboxRecord> {
  const r = await getSandbox(sandboxId);
  if (!r) throw new Error(`no record for ${sandboxId}`);
  return r;
}

/** Waits until the sandbox's record reaches `status`, answering the record. */
export function waitForStatus(sandboxId: string, status: SandboxRecord['status'], timeoutMs: number): Promise<SandboxRecord> {
  return waitFor(
    `${sandboxId} to be ${status}`,
    async () => {
      const r = await record(sandboxId);
      return r.status === status ? r : undefined;
    },
    timeoutMs,
  );
}

/** The container's environment as a map (what the host-agent gave it). */
export async function containerEnv(sandboxId: string): Promise<Record<string, string>> {
  const info = await inspect(sandboxId);
  return Object.fromEntries((info.Config.Env ?? []).map((e: string) => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)]));
}

/** The sandbox's own token, as the container sees it. */
export async function sandboxToken(sandboxId: string): Promise<string> {
  const token = (await containerEnv(sandboxId)).SANDBOX_TOKEN;
  if (!token) throw new Error(`container ${sandboxId} has no SANDBOX_TOKEN`);
  return token;
}

/** The hot tier's S3 prefix of a user (lambdas/shared/sandboxes.ts storageFor). */
export function hotPrefix(stack: LocalStack, userId: string): string {
  return `tenants/${stack.tenantId}/users/${userId}/hot/`;
}

export async function s3Text(stack: LocalStack, key: string): Promise<string | undefined> {
  try {
    const out = await s3().send(new GetObjectCommand({ Bucket: stack.env.STORAGE_BUCKET, Key: key }));
    return await out.Body!.transformToString('utf8');
  } catch (err) {
    if ((err as { name?: string }).name === 'NoSuchKey') return undefined;
    throw err;
  }
}

export async function s3Keys(stack: LocalStack, prefix: string): Promise<string[]> {
  const out = await s3().send(new ListObjectsV2Command({ Bucket: stack.env.STORAGE_BUCKET, Prefix: prefix }));
  return (out.Contents ?? []).map((o) => o.Key!);
}

/** A fresh user id, so each test's hot tier starts empty. */
export function uniqueUser(name: string): string {
  return `${name}-${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`;
}
