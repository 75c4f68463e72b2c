/**
 * Files in a running sandbox. Small files travel inline in the API call (up
 * to 4 MiB: Lambda's 6 MB payload holds their base64); larger ones go through
 * presigned S3 URLs (up to 5 GiB), streamed from and to disk, with progress,
 * and checked by sha256 at the end. Paths are absolute or relative to /home/agent.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, rm, stat } from 'node:fs/promises';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Transform, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ChecksumError, SandboxApiError, SandboxError, TimeoutError } from './errors.js';
import type { ApiClient } from './http.js';
import type { FileEntry, WrittenFile } from './types.js';

/** The largest file a single API call carries (the API's FILES_INLINE_MAX_BYTES). */
export const inlineMaxBytes = 4 * 1024 * 1024;

export interface Progress {
  /** Bytes moved so far. */
  bytes: number;
  /** Bytes in all. */
  total: number;
}

export interface TransferOptions {
  onProgress?: (p: Progress) => void;
  /** Create missing parent directories (uploads). */
  mkdirs?: boolean;
  /** Permission bits as octal digits, e.g. "0755" (uploads and writes). */
  mode?: string;
  signal?: AbortSignal;
  /** Longest the SDK follows the host's part of a transfer. Default 30 minutes. */
  timeoutMs?: number;
}

interface UploadTicket {
  upload_id: string;
  url: string;
  max_bytes: number;
}
interface TransferDone {
  path: string;
  size: number;
  sha256: string;
  mode?: string;
  status?: 'in_progress';
  download_id?: string;
  url?: string;
}

export interface TransferResult {
  path: string;
  size: number;
  sha256: string;
  /** `inline` (one API call) or `presigned` (through S3). */
  via: 'inline' | 'presigned';
}

/** Counts bytes and hashes them as they pass. */
function meter(total: number, onProgress?: (p: Progress) => void) {
  const hash = createHash('sha256');
  let bytes = 0;
  let last = 0;
  const stream = new Transform({
    transform(chunk: Buffer, _enc, done) {
      hash.update(chunk);
      bytes += chunk.length;
      // At most every 256 KiB, and at the end.
      if (onProgress && (bytes - last >= 256 * 1024 || bytes === total)) {
        last = bytes;
        onProgress({ bytes, total });
      }
      done(null, chunk);
    },
  });
  return { stream, digest: () => hash.digest('hex'), bytes: () => bytes };
}

/** One HTTP request to a presigned URL with a streamed body (or none), answering the response stream. */
function presigned(method: 'PUT' | 'GET', url: string, o: { body?: Readable; length?: number; signal?: AbortSignal }): Promise<IncomingMessage> {
  const u = new URL(url);
  const send = u.protocol === 'https:' ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const req = send(u, { method, headers: o.length !== undefined ? { 'Content-Length': String(o.length) } : {}, signal: o.signal }, (res) => {
      if ((res.statusCode ?? 0) >= 300) {
        const parts: Buffer[] = [];
        res.on('data', (c: Buffer) => parts.push(c));
        res.on('end', () =>
          reject(new SandboxError(`${method} of the presigned URL answered ${res.statusCode}: ${Buffer.concat(parts).toString('utf8').slice(0, 300)}`)),
        );
        res.on('error', reject);
        return;
      }
      resolve(res);
    });
    req.on('error', reject);
    if (o.body) {
      o.body.on('error', (err) => req.destroy(err));
      o.body.pipe(req);
    } else req.end();
  });
}

function exitOf(child: ReturnType<typeof spawn>, what: string): Promise<void> {
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => (stderr += c.toString()));
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new SandboxError(`${what} failed (${code}): ${stderr.trim().slice(0, 300)}`))));
  });
}

/** Runs a local program to its end. */
function run(cmd: string, args: string[]): Promise<void> {
  return exitOf(spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] }), cmd);
}

function toBytes(data: string | Uint8Array | ArrayBuffer): Uint8Array {
  if (typeof data === 'string') return Buffer.from(data, 'utf8');
  return data instanceof Uint8Array ? data : new Uint8Array(data);
}

export class Files {
  constructor(
    private readonly client: ApiClient,
    private readonly sandboxId: () => Promise<string>,
  ) {}

  private async base(): Promise<string> {
    return `/sandboxes/${await this.sandboxId()}/files`;
  }

  /**
   * A file's contents: bytes, or with `{ format: 'text' }` a string (UTF-8).
   * Files past 4 MiB come through a presigned URL.
   */
  read(path: string, o: { format: 'text'; signal?: AbortSignal }): Promise<string>;
  read(path: string, o?: { format?: 'bytes'; signal?: AbortSignal }): Promise<Uint8Array>;
  async read(path: string, o: { format?: 'text' | 'bytes'; signal?: AbortSignal } = {}): Promise<string | Uint8Array> {
    let bytes: Uint8Array;
    try {
      bytes = await this.client.json<Uint8Array>('GET', await this.base(), { query: { path }, binary: true, signal: o.signal });
    } catch (err) {
      if (!(err instanceof SandboxApiError && err.code === 'too_large')) throw err;
      const parts: Buffer[] = [];
      const sink = new Writable({
        write: (c: Buffer, _e, done) => {
          parts.push(c);
          done();
        },
      });
      await this.download(path, sink, { signal: o.signal });
      bytes = Buffer.concat(parts);
    }
    return o.format === 'text' ? Buffer.from(bytes).toString('utf8') : bytes;
  }

  /** Writes a whole file (atomically: readers see the old or the new file). Past 4 MiB it goes through a presigned URL. */
  async write(path: string, data: string | Uint8Array | ArrayBuffer, o: TransferOptions = {}): Promise<WrittenFile> {
    const bytes = toBytes(data);
    if (bytes.length <= inlineMaxBytes) {
      return this.client.json<WrittenFile>('PUT', await this.base(), { query: { path, mkdirs: o.mkdirs, mode: o.mode }, bytes, signal: o.signal });
    }
    const done = await this.uploadStream(() => Readable.from([Buffer.from(bytes)]), bytes.length, path, o);
    return { path: done.path, size: done.size, sha256: done.sha256, mode: done.mode ?? '' };
  }

  /** The entries of a directory (every page; `recursive` for everything below it). */
  async list(path = '/home/agent', o: { recursive?: boolean; signal?: AbortSignal } = {}): Promise<FileEntry[]> {
    const out: FileEntry[] = [];
    let token: string | undefined;
    do {
      const page = await this.client.json<{ entries: FileEntry[]; next_token?: string }>('GET', `${await this.base()}/list`, {
        query: { path, recursive: o.recursive, limit: 1000, next_token: token },
        signal: o.signal,
      });
      out.push(...page.entries);
      token = page.next_token;
    } while (token);
    return out;
  }

  async stat(path: string, o: { signal?: AbortSignal } = {}): Promise<FileEntry> {
    return this.client.json<FileEntry>('GET', `${await this.base()}/stat`, { query: { path }, signal: o.signal });
  }

  /** Whether a path exists. */
  async exists(path: string, o: { signal?: AbortSignal } = {}): Promise<boolean> {
    try {
      await this.stat(path, o);
      return true;
    } catch (err) {
      if (err instanceof SandboxApiError && err.code === 'not_found') return false;
      throw err;
    }
  }

  async remove(path: string, o: { recursive?: boolean; signal?: AbortSignal } = {}): Promise<void> {
    await this.client.json('DELETE', await this.base(), { query: { path, recursive: o.recursive }, signal: o.signal });
  }

  async mkdir(path: string, o: { parents?: boolean; signal?: AbortSignal } = {}): Promise<FileEntry> {
    return this.client.json<FileEntry>('POST', `${await this.base()}/mkdir`, { body: { path, parents: o.parents ?? false }, signal: o.signal });
  }

  async move(from: string, to: string, o: { overwrite?: boolean; signal?: AbortSignal } = {}): Promise<FileEntry> {
    const moved = await this.client.json<{ entry: FileEntry }>('POST', `${await this.base()}/move`, {
      body: { from, to, overwrite: o.overwrite ?? false },
      signal: o.signal,
    });
    return moved.entry;
  }

  /**
   * Uploads a local file (or a stream) to `remotePath`: inline up to 4 MiB,
   * through a presigned S3 PUT past it, streaming either way.
   */
  async upload(local: string | Readable, remotePath: string, o: TransferOptions = {}): Promise<TransferResult> {
    if (typeof local !== 'string') {
      // A presigned PUT needs its length up front: spool a stream of unknown length to a temporary file.
      const dir = await mkdtemp(join(tmpdir(), 'sbx-upload-'));
      try {
        await pipeline(local, createWriteStream(join(dir, 'data')));
        return await this.upload(join(dir, 'data'), remotePath, o);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    }
    const size = (await stat(local)).size;
    if (size <= inlineMaxBytes) {
      const m = meter(size, o.onProgress);
      const parts: Buffer[] = [];
      const sink = new Writable({
        write: (c: Buffer, _e, done) => {
          parts.push(c);
          done();
        },
      });
      await pipeline(createReadStream(local), m.stream, sink);
      const written = await this.client.json<WrittenFile>('PUT', await this.base(), {
        query: { path: remotePath, mkdirs: o.mkdirs, mode: o.mode },
        bytes: Buffer.concat(parts),
        signal: o.signal,
      });
      if (written.sha256 !== m.digest())
        throw new ChecksumError(`${written.path}: the sandbox holds sha256 ${written.sha256}, the local file is ${m.digest()}`);
      return { path: written.path, size: written.size, sha256: written.sha256, via: 'inline' };
    }
    const done = await this.uploadStream(() => createReadStream(local), size, remotePath, o);
    return { path: done.path, size: done.size, sha256: done.sha256, via: 'presigned' };
  }

  private async uploadStream(open: () => Readable, size: number, remotePath: string, o: TransferOptions & { extract?: 'tar.gz' }): Promise<TransferDone> {
    const base = await this.base();
    const ticket = await this.client.json<UploadTicket>('POST', `${base}/upload`, {
      body: {
        path: remotePath,
        ...(o.mkdirs ? { mkdirs: true } : {}),
        ...(o.mode && !o.extract ? { mode: o.mode } : {}),
        ...(o.extract ? { extract: o.extract } : {}),
      },
      // Nothing happens until the bytes arrive: a second ticket is harmless.
      idempotent: true,
      signal: o.signal,
    });
    if (size > ticket.max_bytes) throw new SandboxError(`${remotePath}: ${size} bytes is more than an upload takes (${ticket.max_bytes})`);
    const m = meter(size, o.onProgress);
    const source = open();
    source.pipe(m.stream);
    const res = await presigned('PUT', ticket.url, { body: m.stream, length: size, signal: o.signal });
    res.resume();
    const done = await this.followTransfer('POST', `${base}/upload/${ticket.upload_id}/complete`, o);
    if (!o.extract && done.sha256 !== m.digest())
      throw new ChecksumError(`${done.path}: the sandbox holds sha256 ${done.sha256}, what was sent is ${m.digest()}`);
    return done;
  }

  /** Uploads a local directory: packed with tar (gzip), sent through a presigned URL, unpacked at `remotePath` in the sandbox. */
  async uploadDirectory(localDir: string, remotePath: string, o: TransferOptions = {}): Promise<TransferResult> {
    const dir = await mkdtemp(join(tmpdir(), 'sbx-upload-'));
    try {
      const archive = join(dir, 'dir.tar.gz');
      await run('tar', ['-czf', archive, '-C', localDir, '.']);
      const size = (await stat(archive)).size;
      const done = await this.uploadStream(() => createReadStream(archive), size, remotePath, { ...o, extract: 'tar.gz' });
      return { path: done.path, size: done.size, sha256: done.sha256, via: 'presigned' };
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  /** Downloads a directory of the sandbox (as tar.gz through a presigned URL) and unpacks it into `localDir`. */
  async downloadDirectory(remotePath: string, localDir: string, o: TransferOptions = {}): Promise<TransferResult> {
    const base = await this.base();
    let done = await this.client.request<TransferDone>('POST', `${base}/download`, {
      body: { path: remotePath, archive: 'tar.gz' },
      idempotent: true,
      signal: o.signal,
    });
    if (done.status === 202) done = { ...done, body: await this.followTransfer('GET', `${base}/download/${done.body.download_id}`, o, { wait: 20 }) };
    const ready = done.body;
    if (!ready.url) throw new SandboxError(`${remotePath}: the download answered no URL`);
    await mkdir(localDir, { recursive: true });
    const res = await presigned('GET', ready.url, { signal: o.signal });
    const m = meter(ready.size, o.onProgress);
    const tar = spawn('tar', ['-xzf', '-', '-C', localDir], { stdio: ['pipe', 'ignore', 'pipe'] });
    const exited = exitOf(tar, 'tar -x');
    await pipeline(res, m.stream, tar.stdin);
    await exited;
    if (m.digest() !== ready.sha256) throw new ChecksumError(`${ready.path}: received sha256 ${m.digest()}, the sandbox's archive is ${ready.sha256}`);
    return { path: ready.path, size: m.bytes(), sha256: ready.sha256, via: 'presigned' };
  }

  /** Repeats a transfer call (each within the API's 29 s) until the host finished it. */
  private async followTransfer(method: 'POST' | 'GET', path: string, o: TransferOptions, query?: Record<string, string | number>): Promise<TransferDone> {
    const until = Date.now() + (o.timeoutMs ?? 30 * 60_000);
    for (;;) {
      const answer = await this.client.request<TransferDone>(method, path, { idempotent: true, signal: o.signal, query });
      if (answer.status !== 202) return answer.body;
      if (Date.now() > until) throw new TimeoutError(`${answer.body.path}: the transfer is still in progress after ${o.timeoutMs ?? 30 * 60_000} ms`);
    }
  }

  /**
   * Downloads `remotePath` to a local file (or a writable stream): inline up to
   * 4 MiB, through a presigned S3 GET past it, streaming either way.
   */
  async download(remotePath: string, local: string | Writable, o: TransferOptions = {}): Promise<TransferResult> {
    const base = await this.base();
    const entry = await this.stat(remotePath, { signal: o.signal });
    const sink = () => (typeof local === 'string' ? createWriteStream(local) : local);
    if (entry.type === 'file' && entry.size <= inlineMaxBytes) {
      const bytes = await this.client.json<Uint8Array>('GET', base, { query: { path: remotePath }, binary: true, signal: o.signal });
      const m = meter(bytes.length, o.onProgress);
      await pipeline(Readable.from([Buffer.from(bytes)]), m.stream, sink());
      return { path: entry.path, size: bytes.length, sha256: m.digest(), via: 'inline' };
    }
    let done = await this.client.request<TransferDone>('POST', `${base}/download`, { body: { path: remotePath }, idempotent: true, signal: o.signal });
    if (done.status === 202) {
      done = { ...done, body: await this.followTransfer('GET', `${base}/download/${done.body.download_id}`, o, { wait: 20 }) };
    }
    const ready = done.body;
    if (!ready.url) throw new SandboxError(`${remotePath}: the download answered no URL`);
    const res = await presigned('GET', ready.url, { signal: o.signal });
    const m = meter(ready.size, o.onProgress);
    await pipeline(res, m.stream, sink());
    if (m.digest() !== ready.sha256) throw new ChecksumError(`${ready.path}: received sha256 ${m.digest()}, the sandbox's file is ${ready.sha256}`);
    return { path: ready.path, size: m.bytes(), sha256: ready.sha256, via: 'presigned' };
  }
}
