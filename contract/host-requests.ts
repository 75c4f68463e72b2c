/**
 * The host-agent's request schemas: what each verb of the host protocol
 * (host-protocol.ts) must carry, checked by the host before it acts. The
 * control plane builds its requests to these types (host-protocol.ts
 * re-exports the input types), and never builds the schemas: they are built
 * where they are parsed, on the host.
 */
import * as z from 'zod';
import { egressPolicySchema } from './egress-policy';
import { fileStagingPrefix, type HostVerb, maxFilePathBytes, maxUploadBytes, minHomeDiskMb } from './host-protocol';
import { commandIdPattern, envKeyPattern, patternBody, sandboxIdPattern, userIdPattern } from './ids';

const sandboxId = z.string().regex(sandboxIdPattern);
/** A tenant or user name (tenant ids are within it). */
const safeName = z.string().regex(userIdPattern);
const envMap = z.record(z.string().regex(envKeyPattern), z.string().max(32_768));

const storageSpec = z.object({
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
  /** What a bridge sandbox may reach (egress-policy.ts); ignored with network none. */
  egress: z._default(egressPolicySchema, 'allow_all'),
  env: envMap.default({}),
  labels: z.record(z.string().max(63), z.string().max(256)).default({}),
  storage: storageSpec.optional(),
});
export type CreateRequest = z.input<typeof createRequest>;

const commandId = z.string().regex(commandIdPattern);

/**
 * Starts a command whose record (text, cwd, env, stdin: the caller's data)
 * the control plane wrote to the Commands table; the host reads it there, so
 * none of it travels in SSM. Answers when the command ended within
 * `answerWithinMs`, or then with its status `running`.
 */
const runRequest = z.object({ sandboxId, commandId, answerWithinMs: z.number().int().min(0).max(10_000).default(0) });

const killRequest = z.object({ sandboxId, commandId, signal: z.enum(['TERM', 'KILL']).default('KILL') });

/** Delivers the stdin a caller wrote (held in the Commands table) to a running command. */
const stdinRequest = z.object({ sandboxId, commandId });

export const destroyRequest = z.object({
  sandboxId,
  /** Graceful: stop with SIGTERM and a grace period, then sync hot storage back. */
  graceful: z.boolean(),
  storage: storageSpec.optional(),
});

export const sandboxRef = z.object({ sandboxId, storage: storageSpec.optional() });

/** The prefix shape a host accepts in a resume (it reads and deletes there): never another tenant's or a path trick. */
const pausedStatePrefixPattern = new RegExp(`^tenants/${patternBody(userIdPattern)}/users/${patternBody(userIdPattern)}/sandboxes/sbx-[a-z0-9]{1,64}/paused/$`);

/**
 * start: `relocate` when the sandbox was moved off a drained host while
 * stopped: this host makes its container from the request staged under
 * `prefix` and restores /tmp from the archive there (relocate.ts); `egress`
 * is its policy now (it may have changed while it had no host).
 */
export const resumeRequest = sandboxRef.extend({
  relocate: z.object({ prefix: z.string().regex(pausedStatePrefixPattern), egress: z.optional(egressPolicySchema) }).optional(),
});
export type ResumeRequest = z.input<typeof resumeRequest>;

/**
 * The host is leaving the fleet (a termination lifecycle action, a Spot
 * interruption warning): stop taking sandboxes, sync and end every one, then
 * let the termination go ahead. Answers at once; the daemon drains.
 */
const drainRequest = z.object({
  reason: z.string().min(1).max(200),
  /** Drain within this many seconds (a Spot warning leaves two minutes). */
  deadlineSeconds: z.number().int().min(10).max(7200),
});

/** A sandbox's new egress policy, while it runs (or is paused). */
export const networkRequest = z.object({ sandboxId, egress: egressPolicySchema });

/** Operation ids: `op-` for inline calls, `upl-` uploads, `dl-` downloads. */
const fileOperationIdPattern = /^(?:op|upl|dl)-[a-z0-9]{20}$/;

const stagingFolder = z
  .string()
  .max(512)
  .regex(
    new RegExp(`^${fileStagingPrefix}${patternBody(userIdPattern)}/${patternBody(sandboxIdPattern)}/${patternBody(fileOperationIdPattern)}/$`),
    'must be a file staging folder',
  );

const filePath = z
  .string()
  .min(1)
  .refine(
    (p) => p.startsWith('/') && !p.includes('\0') && Buffer.byteLength(p) <= maxFilePathBytes,
    'must be an absolute path without NUL, at most 4096 bytes',
  );
const fileMode = z.number().int().min(0).max(0o7777);
const sha256Hex = z.string().regex(/^[0-9a-f]{64}$/);

/** How long the host holds its answer to a transfer's start (the rest is followed through result.json). */
const transferAnswerMs = z.number().int().min(0).max(20_000).default(0);

export const filesRequest = z.discriminatedUnion('op', [
  z.object({ op: z.literal('stat'), sandboxId, path: filePath }),
  z.object({
    op: z.literal('list'),
    sandboxId,
    path: filePath,
    recursive: z.boolean(),
    limit: z.number().int().min(1).max(1000),
    /** The last entry of the previous page, as path components below `path`. */
    after: z.array(z.string().max(maxFilePathBytes)).max(2048).optional(),
    staging: stagingFolder,
  }),
  z.object({ op: z.literal('read'), sandboxId, path: filePath, maxBytes: z.number().int().positive(), staging: stagingFolder }),
  z.object({
    op: z.literal('write'),
    sandboxId,
    path: filePath,
    staging: stagingFolder,
    size: z.number().int().min(0),
    sha256: sha256Hex,
    mode: fileMode.optional(),
    mkdirs: z.boolean(),
  }),
  z.object({ op: z.literal('mkdir'), sandboxId, path: filePath, parents: z.boolean() }),
  z.object({ op: z.literal('delete'), sandboxId, path: filePath, recursive: z.boolean() }),
  z.object({ op: z.literal('move'), sandboxId, from: filePath, to: filePath, overwrite: z.boolean() }),
  z.object({
    op: z.literal('upload'),
    sandboxId,
    transferId: z.string().regex(fileOperationIdPattern),
    staging: stagingFolder,
    path: filePath,
    size: z.number().int().min(0).max(maxUploadBytes),
    sha256: sha256Hex.optional(),
    extract: z.enum(['tar', 'tar.gz']).optional(),
    mode: fileMode.optional(),
    mkdirs: z.boolean(),
    answerWithinMs: transferAnswerMs,
  }),
  z.object({
    op: z.literal('download'),
    sandboxId,
    transferId: z.string().regex(fileOperationIdPattern),
    staging: stagingFolder,
    path: filePath,
    archive: z.literal('tar.gz').optional(),
    answerWithinMs: transferAnswerMs,
  }),
]);
export type FilesRequest = z.input<typeof filesRequest>;

export const requestSchemas = {
  create: createRequest,
  files: filesRequest,
  run: runRequest,
  kill: killRequest,
  stdin: stdinRequest,
  destroy: destroyRequest,
  pause: sandboxRef,
  resume: resumeRequest,
  sync: sandboxRef,
  status: z.object({}),
  network: networkRequest,
  drain: drainRequest,
} as const satisfies Record<HostVerb, z.ZodType>;
