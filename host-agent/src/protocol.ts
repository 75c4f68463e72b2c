/**
 * The host-agent protocol: what the control plane asks a host to do through
 * SSM Run Command, and what the host-agent prints back (one JSON line).
 *
 * No caller-supplied text is ever spliced into shell text on the host. The
 * request is JSON, base64url-encoded (alphabet [A-Za-z0-9_-], inert in any
 * shell), and passed as one argument:
 *
 *   <HOST_AGENT_COMMAND> <verb> b64:<base64url(JSON)>
 *
 * A request too large for an SSM command parameter is staged in the storage
 * bucket and passed by reference (`s3:<key>`, key made of the same safe
 * alphabet plus `/` and `.`); the host-agent fetches and deletes it.
 */
import { z } from 'zod';
import { egressPolicySchema, type EgressPolicy } from './egress/policy';

export const hostVerbs = ['create', 'exec', 'destroy', 'pause', 'resume', 'sync', 'status', 'network'] as const;
export type HostVerb = (typeof hostVerbs)[number];

/** Label keys on every container the host-agent owns. */
export const containerLabels = {
  owner: 'dev.ephemeral-sandbox.owner',
  sandboxId: 'dev.ephemeral-sandbox.sandbox-id',
  tenantId: 'dev.ephemeral-sandbox.tenant-id',
  userId: 'dev.ephemeral-sandbox.user-id',
  createdAt: 'dev.ephemeral-sandbox.created-at',
  /** The host (HOST_ID env of the host-agent) that made the container. */
  hostId: 'dev.ephemeral-sandbox.host-id',
} as const;
export const ownerLabelValue = 'ephemeral-sandbox';

/** Largest inline encoded request; above it the request is staged in S3. */
export const maxInlineRequestChars = 24_000;

/** SSM returns at most this many characters of a command's stdout. */
export const ssmStdoutCap = 24_000;
/** SSM returns at most this many characters of a command's stderr. */
export const ssmStderrCap = 8_000;

/**
 * Budget, in characters of the printed JSON, for an exec's stdout + stderr,
 * leaving room for the envelope and JSON escaping below the SSM stdout cap.
 */
export const execOutputBudgetChars = 20_000;

const sandboxId = z.string().regex(/^sbx-[a-z0-9]{20}$/);
const safeName = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._@=-]{0,127}$/);
const envMap = z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,127}$/), z.string().max(32_768));

/** Smallest home a sandbox may have, in MB (ext4 and the caches of a few tools need room). */
export const minHomeDiskMb = 64;

export const storageSpec = z.object({
  bucket: z.string().min(3).max(63),
  /** e.g. tenants/acme/users/u1/hot/ */
  hotPrefix: z.string().max(1024),
  /** e.g. tenants/acme/users/u1/cold/ */
  coldPrefix: z.string().max(1024),
  hotQuotaBytes: z.number().int().positive(),
  syncIntervalSeconds: z.number().int().min(0),
});
export type StorageSpec = z.infer<typeof storageSpec>;

export const createRequest = z.object({
  sandboxId,
  tenantId: safeName,
  userId: safeName,
  image: z.string().min(1).max(256),
  cpu: z.number().positive().max(64),
  memoryMb: z.number().int().min(64).max(262_144),
  pidsLimit: z.number().int().positive().default(512),
  network: z.enum(['bridge', 'none']).default('bridge'),
  /** Size of the home's own file system; absent: a plain directory (requests from before disk_mb). */
  diskMb: z.number().int().min(minHomeDiskMb).max(1_048_576).optional(),
  /** What a bridge sandbox may reach (egress/policy.ts); ignored with network none. */
  egress: egressPolicySchema.default('allow_all'),
  env: envMap.default({}),
  labels: z.record(z.string().max(63), z.string().max(256)).default({}),
  storage: storageSpec.optional(),
});
export type CreateRequest = z.input<typeof createRequest>;

export const execRequest = z.object({
  sandboxId,
  command: z.string().min(1),
  cwd: z.string().min(1).max(4096),
  /** Where to run instead when `cwd` no longer exists (a sticky cwd the last command removed). */
  cwdFallback: z.string().min(1).max(4096).optional(),
  env: envMap.default({}),
  user: z.string().regex(/^[a-z_][a-z0-9_-]{0,31}$/).default('agent'),
  timeoutSeconds: z.number().int().min(1).max(3600),
  outputBudgetChars: z.number().int().positive().default(execOutputBudgetChars),
});
export type ExecRequest = z.input<typeof execRequest>;

export const destroyRequest = z.object({
  sandboxId,
  /** Graceful: stop with SIGTERM and a grace period, then sync hot storage back. */
  graceful: z.boolean(),
  storage: storageSpec.optional(),
});
export type DestroyRequest = z.input<typeof destroyRequest>;

export const sandboxRef = z.object({ sandboxId, storage: storageSpec.optional() });
export type SandboxRef = z.input<typeof sandboxRef>;

/** A sandbox's new egress policy, while it runs (or is paused). */
export const networkRequest = z.object({ sandboxId, egress: egressPolicySchema });
export type NetworkRequest = z.input<typeof networkRequest>;

export const requestSchemas = {
  create: createRequest,
  exec: execRequest,
  destroy: destroyRequest,
  pause: sandboxRef,
  resume: sandboxRef,
  sync: sandboxRef,
  status: z.object({}),
  network: networkRequest,
} as const satisfies Record<HostVerb, z.ZodType>;

export interface CreateResult {
  containerId: string;
  /** ms the host spent: pull/create/start and hot sync. */
  hostMs: number;
  hotSync?: SyncReport;
}

export interface ExecResult {
  exitCode: number;
  stdout: string;
  stderr: string;
  /** Working directory when the command ended (sticky cwd). */
  cwd: string;
  durationMs: number;
  timedOut: boolean;
  /** True when output was cut to fit; head and tail are kept. */
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  /** Bytes the command actually wrote. */
  stdoutBytes: number;
  stderrBytes: number;
}

export interface DestroyResult {
  /** False when there was no container to remove (already gone). */
  removed: boolean;
  hotSync?: SyncReport;
}

export interface SyncReport {
  uploaded: number;
  downloaded: number;
  deleted: number;
  skipped: number;
  bytes: number;
  ms: number;
}

/** /tmp kept across a pause: the archive pause left on the host. */
export interface TmpArchiveReport {
  bytes: number;
  /** What tar skipped or warned about (files the sandbox user cannot read, sockets), first lines only. */
  warnings: string[];
  ms: number;
}

/** /tmp put back by a resume. */
export interface TmpRestoreReport {
  bytes: number;
  ms: number;
}

export interface HostStatus {
  containers: { sandboxId: string; containerId: string; state: string }[];
}

export type HostResults = {
  create: CreateResult;
  exec: ExecResult;
  destroy: DestroyResult;
  /** `tmp`: present when /tmp was archived (a running container was paused). */
  pause: { paused: boolean; tmp?: TmpArchiveReport };
  /** `tmp`: present when a kept /tmp was restored. */
  resume: { resumed: boolean; tmp?: TmpRestoreReport };
  sync: SyncReport;
  status: HostStatus;
  network: { egress: EgressPolicy };
};

/** Error codes a host can answer; the control plane maps them to API errors. */
export type HostErrorCode =
  | 'bad_request'
  | 'not_found'
  | 'quota_exceeded'
  | 'docker_error'
  | 'storage_error'
  | 'internal_error';

export type HostEnvelope<V extends HostVerb> =
  | { ok: true; result: HostResults[V] }
  | { ok: false; error: { code: HostErrorCode; message: string } };

export function encodeInline(request: unknown): string {
  return 'b64:' + Buffer.from(JSON.stringify(request), 'utf8').toString('base64url');
}

/** Decodes `b64:...` or returns the S3 key of `s3:...`. */
export function decodeArgument(arg: string): { inline: unknown } | { s3Key: string } {
  if (arg.startsWith('b64:')) {
    const body = arg.slice(4);
    if (!/^[A-Za-z0-9_-]*$/.test(body)) throw new Error('request is not base64url');
    return { inline: JSON.parse(Buffer.from(body, 'base64url').toString('utf8')) };
  }
  if (arg.startsWith('s3:')) {
    const key = arg.slice(3);
    if (!/^[A-Za-z0-9_\-/.]{1,512}$/.test(key) || key.includes('..')) throw new Error('bad staged request key');
    return { s3Key: key };
  }
  throw new Error('request argument must start with b64: or s3:');
}

/** The S3 key prefix under which oversized requests are staged. */
export const stagedRequestPrefix = 'host-requests/';
