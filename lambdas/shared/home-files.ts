/**
 * A user's home when no sandbox runs: its synced copy in S3
 * (tenants/<tenant>/users/<user>/hot/, laid out by the host's hot sync:
 * host-agent/src/storage/hot-sync.ts). Every key is the caller's tenant's and
 * the named user's: paths are normalized here and may not leave the home.
 * Symlinks are followed only while they stay in the home (the stored copy has
 * nothing else). When a sandbox of the user is live, the copy may be behind
 * it (by up to the sync interval while it runs; a paused one was synced as it
 * paused), and every answer says so.
 */
import { createHash } from 'node:crypto';
import { posix } from 'node:path';
import { GetObjectCommand, HeadObjectCommand, ListObjectsV2Command, type HeadObjectCommandOutput } from '@aws-sdk/client-s3';
import { s3 } from './clients/s3';
import { config } from './config';
import { ApiError, notFound } from './errors';
import { homeAbsolute, homeRelative } from './file-paths';
import type { FileEntryView } from './files';
import { filesInlineMaxBytes } from './gateway';
import type { Principal } from './http';
import { presignedDownload } from './presign';
import { liveSandboxesOfUser } from './sandbox-store';
import type { ListFilesQuery } from './schemas';
import { storageFor } from './sandboxes';

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;
/** Links followed in a row before giving up (the kernel's own limit is 40). */
const maxLinkHops = 16;
/** HeadObject calls in flight while a listing page is described. */
const headConcurrency = 16;

/** Whether the stored copy may be behind a live sandbox of the user. */
interface HomeCopyView {
  may_lag: boolean;
  /** Set with may_lag: the user's live sandboxes (each syncs its home every sync_interval_seconds while it runs, and whole when it ends). */
  sandboxes?: { sandbox_id: string; status: string }[];
  sync_interval_seconds?: number;
}

async function homeCopyOf(tenantId: string, userId: string): Promise<HomeCopyView> {
  const c = config();
  const live = await liveSandboxesOfUser(tenantId, userId, Date.now() - (c.limits.maxTtlSeconds + 3600) * 1000);
  if (live.length === 0) return { may_lag: false };
  return {
    may_lag: true,
    sandboxes: live.map((r) => ({ sandbox_id: r.sandbox_id, status: r.status })),
    sync_interval_seconds: c.limits.hotSyncIntervalSeconds,
  };
}

const bucket = () => config().bucket;
const prefixOf = (tenantId: string, userId: string) => storageFor(tenantId, userId).hotPrefix;
const isMissing = (err: unknown) => ['NoSuchKey', 'NotFound'].includes((err as { name?: string }).name ?? '');

async function head(key: string): Promise<HeadObjectCommandOutput | undefined> {
  try {
    return await s3().send(new HeadObjectCommand({ Bucket: bucket(), Key: key }));
  } catch (err) {
    if (isMissing(err)) return undefined;
    throw err;
  }
}

async function readSmall(key: string): Promise<Buffer> {
  const out = await s3().send(new GetObjectCommand({ Bucket: bucket(), Key: key }));
  return Buffer.from(await out.Body!.transformToByteArray());
}

function modeOf(meta: Record<string, string> | undefined, fallback: number): number {
  const stored = Number.parseInt(meta?.mode ?? '', 10);
  return Number.isInteger(stored) ? stored : fallback;
}

function mtimeOf(meta: Record<string, string> | undefined, lastModified: Date | undefined): string {
  const ms = Number(meta?.['mtime-ms']);
  if (meta?.['mtime-ms'] !== undefined && Number.isFinite(ms)) return new Date(ms).toISOString();
  const seconds = Number(meta?.mtime);
  if (meta?.mtime !== undefined && Number.isFinite(seconds)) return new Date(seconds * 1000).toISOString();
  return (lastModified ?? new Date(0)).toISOString();
}

const octal = (mode: number) => (mode & 0o7777).toString(8).padStart(4, '0');

/** Whether the home has a directory at `rel` (a marker, or anything below it). */
async function isDirectory(prefix: string, rel: string): Promise<boolean> {
  if (rel === '') return true;
  const out = await s3().send(new ListObjectsV2Command({ Bucket: bucket(), Prefix: `${prefix}${rel}/`, MaxKeys: 1 }));
  return (out.KeyCount ?? 0) > 0;
}

interface StoredFile {
  rel: string;
  key: string;
  size: number;
  mode: number;
  mtime: string;
}

/** The regular file `rel` names, following links that stay in the home; 404/409 otherwise, naming the path. */
async function resolveFile(prefix: string, rel: string, asked: string): Promise<StoredFile> {
  let current = rel;
  for (let hop = 0; hop <= maxLinkHops; hop++) {
    if (current === '') throw new ApiError(409, 'is_a_directory', `${asked}: is a directory`, {}, { path: asked });
    const key = prefix + current;
    const found = await head(key);
    if (!found) {
      if (await isDirectory(prefix, current)) throw new ApiError(409, 'is_a_directory', `${asked}: is a directory`, {}, { path: asked });
      throw new ApiError(
        404,
        'not_found',
        `${asked}: no such file in the stored home${current === rel ? '' : ` (a link leads to ${homeAbsolute(current)}, which is not there)`}`,
        {},
        { path: asked },
      );
    }
    const mode = modeOf(found.Metadata, 0o100644);
    if ((mode & S_IFMT) !== S_IFLNK) {
      return { rel: current, key, size: Number(found.ContentLength ?? 0), mode, mtime: mtimeOf(found.Metadata, found.LastModified) };
    }
    const target = (await readSmall(key)).toString('utf8');
    const next = posix.normalize(
      target.startsWith('/') ? target : posix.join(homeAbsolute(posix.dirname(current) === '.' ? '' : posix.dirname(current)), target),
    );
    if (next !== '/home/agent' && !next.startsWith('/home/agent/')) {
      throw new ApiError(404, 'not_found', `${asked}: is a link to ${target}, outside the home; the stored copy holds only /home/agent`, {}, { path: asked });
    }
    current = homeRelative(next);
  }
  throw new ApiError(400, 'validation_error', `${asked}: too many levels of symbolic links`, {}, { path: asked });
}

export interface HomeFileContent {
  path: string;
  bytes: Buffer;
  size: number;
  mode: string;
  sha256: string;
  mtime: string;
  homeCopy: HomeCopyView;
}

/** GET /users/{user_id}/home/files: a file of the stored home, up to FILES_INLINE_MAX_BYTES. */
export async function readHomeFile(p: Principal, userId: string, rawPath: string): Promise<HomeFileContent> {
  const rel = homeRelative(rawPath);
  const path = homeAbsolute(rel);
  const prefix = prefixOf(p.tenantId, userId);
  const [file, homeCopy] = await Promise.all([resolveFile(prefix, rel, path), homeCopyOf(p.tenantId, userId)]);
  if (file.size > filesInlineMaxBytes) {
    throw new ApiError(
      413,
      'too_large',
      `${path}: is ${file.size} bytes; at most ${filesInlineMaxBytes} are read inline: use POST /users/${userId}/home/files/download (a presigned URL)`,
      {},
      { path },
    );
  }
  const bytes = await readSmall(file.key);
  return { path, bytes, size: bytes.length, mode: octal(file.mode), sha256: createHash('sha256').update(bytes).digest('hex'), mtime: file.mtime, homeCopy };
}

/** Page tokens of a stored-home listing: S3's continuation token, bound to the listing it belongs to. */
interface HomeListToken {
  p: string;
  r: boolean;
  c: string;
}

function decodeToken(token: string | undefined, rel: string, recursive: boolean): string | undefined {
  if (token === undefined) return undefined;
  try {
    const t = JSON.parse(Buffer.from(token, 'base64url').toString('utf8')) as HomeListToken;
    if (t.p !== rel || t.r !== recursive || typeof t.c !== 'string') throw new Error('foreign');
    return t.c;
  } catch {
    throw new ApiError(400, 'validation_error', 'next_token: is not a page token of this listing (same path and recursive)');
  }
}

/** Runs `fn` over `items` with at most `limit` at once, keeping their order. */
async function mapLimited<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i]!);
      }
    }),
  );
  return out;
}

export interface HomeListingView {
  path: string;
  entries: FileEntryView[];
  next_token?: string;
  home_copy: HomeCopyView;
}

/** GET /users/{user_id}/home/files/list: one page of a directory of the stored home. */
export async function listHomeFiles(p: Principal, userId: string, q: ListFilesQuery): Promise<HomeListingView> {
  const rel = homeRelative(q.path ?? '/home/agent');
  const path = homeAbsolute(rel);
  const prefix = prefixOf(p.tenantId, userId);
  const continuation = decodeToken(q.next_token, rel, q.recursive);
  const listPrefix = rel === '' ? prefix : `${prefix}${rel}/`;
  const [page, homeCopy] = await Promise.all([
    s3().send(
      new ListObjectsV2Command({
        Bucket: bucket(),
        Prefix: listPrefix,
        ...(q.recursive ? {} : { Delimiter: '/' }),
        MaxKeys: q.limit,
        ...(continuation ? { ContinuationToken: continuation } : {}),
      }),
    ),
    homeCopyOf(p.tenantId, userId),
  ]);
  if (rel !== '' && (page.KeyCount ?? 0) === 0 && !continuation) {
    if (await head(prefix + rel)) throw new ApiError(409, 'not_a_directory', `${path}: is not a directory`, {}, { path });
    throw notFound(`${path}: no such directory in the stored home`);
  }
  // Keys and common prefixes, in one order (S3 gives each sorted by key).
  const names = [
    ...(page.Contents ?? [])
      .filter((o) => o.Key !== listPrefix)
      .map((o) => ({ key: o.Key!, size: Number(o.Size ?? 0), lastModified: o.LastModified, prefix: false })),
    ...(page.CommonPrefixes ?? []).map((c) => ({ key: c.Prefix!, size: 0, lastModified: undefined, prefix: true })),
  ].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  const entries = await mapLimited(names, headConcurrency, async (n): Promise<FileEntryView> => {
    const isDir = n.key.endsWith('/');
    const relKey = n.key.slice(prefix.length).replace(/\/$/, '');
    const meta = (await head(n.key))?.Metadata;
    const mode = modeOf(meta, isDir ? S_IFDIR | 0o755 : 0o100644);
    const type = isDir || (mode & S_IFMT) === S_IFDIR ? 'dir' : (mode & S_IFMT) === S_IFLNK ? 'symlink' : 'file';
    return {
      path: homeAbsolute(relKey),
      name: posix.basename(relKey),
      type,
      size: isDir ? 0 : n.size,
      mode: octal(mode),
      mtime: mtimeOf(meta, n.lastModified),
      ...(type === 'symlink' ? { link_target: (await readSmall(n.key)).toString('utf8') } : {}),
    };
  });
  const next =
    page.IsTruncated && page.NextContinuationToken
      ? Buffer.from(JSON.stringify({ p: rel, r: q.recursive, c: page.NextContinuationToken } satisfies HomeListToken), 'utf8').toString('base64url')
      : undefined;
  return { path, entries, ...(next ? { next_token: next } : {}), home_copy: homeCopy };
}

export interface HomeDownloadView {
  path: string;
  url: string;
  expires_at: string;
  size: number;
  mode: string;
  mtime: string;
  /** Present for files up to FILES_INLINE_MAX_BYTES (the stored copy carries no checksum; hash larger ones as you read them). */
  sha256: string | null;
  home_copy: HomeCopyView;
}

/** POST /users/{user_id}/home/files/download: a presigned GET for one stored file. */
export async function downloadHomeFile(p: Principal, userId: string, rawPath: string): Promise<HomeDownloadView> {
  const rel = homeRelative(rawPath);
  const path = homeAbsolute(rel);
  const prefix = prefixOf(p.tenantId, userId);
  const [file, homeCopy] = await Promise.all([resolveFile(prefix, rel, path), homeCopyOf(p.tenantId, userId)]);
  const sha256 =
    file.size <= filesInlineMaxBytes
      ? createHash('sha256')
          .update(await readSmall(file.key))
          .digest('hex')
      : null;
  const signed = await presignedDownload(file.key);
  return { path, url: signed.url, expires_at: signed.expires_at, size: file.size, mode: octal(file.mode), mtime: file.mtime, sha256, home_copy: homeCopy };
}
