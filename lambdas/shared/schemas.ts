/**
 * Request schemas (zod): they validate every body, query string and path id,
 * type the handlers, and name the offending field in every 400.
 *
 * Each top-level schema is marked `/* @__PURE__ *\/`: a handler's bundle keeps
 * only the schemas it uses (esbuild drops unused pure calls), instead of
 * building every route's schemas at each cold start. A schema's outermost
 * call must take no argument with a call in it (`.strict()`, `.regex(re)`),
 * or esbuild keeps it anyway.
 */
import * as z from 'zod';
import { egressPolicySchema, readEgressPolicy } from '../../contract/egress-policy';
import { minHomeDiskMb } from '../../contract/host-protocol';
import { commandIdPattern, envKeyPattern, userIdPattern } from '../../contract/ids';
import { sandboxStatuses } from './sandbox-state';
import type { ControlPlaneConfig } from './config';
import type { SandboxNetworkConfig } from './sandbox-record';

const envKey = /* @__PURE__ */ z.string().regex(envKeyPattern, 'must be a valid environment variable name');
const envMap = /* @__PURE__ */ z
  .record(envKey, z.string().max(32_768))
  .refine((m) => Object.keys(m).length <= 64, 'at most 64 entries')
  .refine((m) => Object.values(m).every((v) => !v.includes('\0')), 'values must not contain NUL');
/** Names the platform sets in every sandbox; callers cannot override them. */
const reservedEnvKeys = ['SANDBOX_ID', 'SANDBOX_API_URL', 'SANDBOX_TOKEN', 'HOME', 'USER'] as const;

export const userIdSchema = /* @__PURE__ */ z
  .string()
  .regex(userIdPattern, 'must be 1-128 characters of letters, digits and ._@=- starting with a letter or digit');

/**
 * `config.network`: "none" (no network at all), "bridge" (the internet under
 * allow_all, as before egress policies), or {"egress": <policy>}.
 */
export const networkConfigSchema = /* @__PURE__ */ z.unknown().transform((value, ctx): SandboxNetworkConfig => {
  if (value === 'bridge' || value === 'none') return value;
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    ctx.addIssue({ code: 'custom', message: 'must be "none", "bridge" or {"egress": "allow_all" | "deny_all" | {"allow": [...]}}' });
    return z.NEVER;
  }
  const extra = Object.keys(value).filter((k) => k !== 'egress');
  if (extra.length > 0) {
    ctx.addIssue({ code: 'custom', message: `unknown field${extra.length > 1 ? 's' : ''} ${extra.join(', ')}; the network object has only "egress"` });
    return z.NEVER;
  }
  const read = readEgressPolicy((value as { egress?: unknown }).egress);
  if (!read.ok) {
    ctx.addIssue({ code: 'custom', path: ['egress', ...read.path], message: read.message });
    return z.NEVER;
  }
  return { egress: read.policy };
});

export function createSandboxBody(limits: ControlPlaneConfig['limits']) {
  return z
    .object({
      user_id: userIdSchema,
      config: z
        .object({
          cpu: z.number().min(0.25).max(limits.maxCpu).optional(),
          memory_mb: z.number().int().min(128).max(limits.maxMemoryMb).optional(),
          disk_mb: z.number().int().min(minHomeDiskMb).max(limits.maxDiskMb).optional(),
          ttl_seconds: z.number().int().min(60).max(limits.maxTtlSeconds).optional(),
          idle_timeout_seconds: z.number().int().min(30).max(limits.maxTtlSeconds).optional(),
          network: networkConfigSchema.optional(),
          env: envMap.refine((m) => !reservedEnvKeys.some((k) => k in m), `must not set ${reservedEnvKeys.join(', ')}`).optional(),
          labels: z
            .record(z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$/, 'label keys are 1-63 characters of letters, digits and ._/-'), z.string().max(256))
            .refine((m) => Object.keys(m).length <= 32, 'at most 32 labels')
            .optional(),
        })
        .strict()
        .optional(),
    })
    .strict();
}
export type CreateSandboxBody = z.infer<ReturnType<typeof createSandboxBody>>;

const commandText = /* @__PURE__ */ z
  .string()
  .min(1)
  .max(200_000)
  .refine((c) => !c.includes('\0'), 'must not contain NUL');
const cwdSchema = /* @__PURE__ */ z
  .string()
  .min(1)
  .max(4096)
  .regex(/^\/[^\0]*$/, 'must be an absolute path');
const commandUser = /* @__PURE__ */ z
  .string()
  .regex(/^[a-z_][a-z0-9_-]{0,31}$/, 'must be a valid user name')
  // Sandboxes never run anything as root, not even root without capabilities.
  .refine((u) => u !== 'root', 'must not be root: commands run as a non-root user (default agent)')
  .default('agent');
/** Initial stdin: text, at most 192 KiB (the body is at most 256 KiB). */
const stdinText = /* @__PURE__ */ z
  .string()
  .max(192 * 1024)
  .refine((d) => Buffer.byteLength(d, 'utf8') <= 192 * 1024, 'must be at most 196608 bytes of UTF-8');
/** Seconds a call may wait for a change (API Gateway ends every call at 29 s). */
const waitSeconds = /* @__PURE__ */ z.coerce.number().min(0).max(20).default(0);

const commandIdSchema = /* @__PURE__ */ z.string().regex(commandIdPattern, 'must be 1-64 characters of letters, digits, _ and -');

/** POST /sandboxes/{id}/exec: start a command and wait for it (up to about 25 s). */
export const execBody = /* @__PURE__ */ z
  .object({
    command: commandText,
    timeout: z.number().int().min(1).max(600).default(30),
    cwd: cwdSchema.optional(),
    env: envMap.optional(),
    user: commandUser,
    stdin: stdinText.optional(),
  })
  .strict();
export type ExecBody = z.infer<typeof execBody>;

/** POST /sandboxes/{id}/commands: start a command that outlives the request. */
export const startCommandBody = /* @__PURE__ */ z
  .object({
    command: commandText,
    cwd: cwdSchema.optional(),
    env: envMap.optional(),
    user: commandUser,
    timeout: z.number().int().min(1).max(86_400).default(3600),
    stdin: stdinText.optional(),
    /** Keep stdin open after `stdin` for POST .../stdin (closed with eof: true). */
    stdin_open: z.boolean().default(false),
    command_id: commandIdSchema.optional(),
    wait: z.number().min(0).max(20).default(0),
  })
  .strict();
export type StartCommandBody = z.infer<typeof startCommandBody>;

/** GET /sandboxes/{id}/commands/{command_id} */
export const commandQuery = /* @__PURE__ */ z
  .object({
    stdout_offset: z.coerce.number().int().min(0).max(Number.MAX_SAFE_INTEGER).default(0),
    stderr_offset: z.coerce.number().int().min(0).max(Number.MAX_SAFE_INTEGER).default(0),
    wait: waitSeconds,
  })
  .strict();

/** GET /sandboxes/{id}/commands */
export const listCommandsQuery = /* @__PURE__ */ z
  .object({
    limit: z.coerce.number().int().min(1).max(100).default(50),
    next_token: z
      .string()
      .max(2048)
      .regex(/^[A-Za-z0-9_-]+$/, 'is not a valid page token')
      .optional(),
  })
  .strict();

export const killCommandBody = /* @__PURE__ */ z.object({ signal: z.enum(['TERM', 'KILL']).default('KILL') }).strict();

export const commandStdinBody = /* @__PURE__ */ z
  .object({
    data: stdinText,
    offset: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
    eof: z.boolean().default(false),
  })
  .strict();

/** GET /sandboxes/{id}?wait=S: wait up to S seconds for a change of status. */
export const getSandboxQuery = /* @__PURE__ */ z.object({ wait: waitSeconds }).strict();

export const listQuery = /* @__PURE__ */ z
  .object({
    user_id: userIdSchema.optional(),
    status: z.enum(sandboxStatuses).optional(),
    limit: z.coerce.number().int().min(1).max(100).default(50),
    next_token: z
      .string()
      .max(2048)
      .regex(/^[A-Za-z0-9_-]+$/, 'is not a valid page token')
      .optional(),
  })
  .strict();

/** PUT /sandboxes/{id}/network */
export const networkBody = /* @__PURE__ */ z.object({ egress: egressPolicySchema }).strict();

/** GET /sandboxes/{id}/network/log */
export const egressLogQuery = /* @__PURE__ */ z.object({ limit: z.coerce.number().int().min(1).max(500).default(100) }).strict();

export const destroyQuery = /* @__PURE__ */ z.object({ graceful: z.enum(['true', 'false']).default('true') }).strict();

/** Why DynamoDB could not store `value` as a map attribute, or undefined when it can. */
function unstorable(value: unknown, depth: number): string | undefined {
  // The record and the attribute take two of DynamoDB's 32 nesting levels; stay well inside the rest.
  if (depth > 16) return 'is nested deeper than 16 levels';
  if (typeof value === 'number') {
    const ok = Number.isFinite(value) && Math.abs(value) <= Number.MAX_SAFE_INTEGER && (value === 0 || Math.abs(value) >= 1e-130);
    return ok ? undefined : `holds the number ${value}; numbers must be safe integers or decimals within ±1e-130..2^53`;
  }
  if (Array.isArray(value)) {
    for (const item of value) {
      const problem = unstorable(item, depth + 1);
      if (problem) return problem;
    }
  } else if (value !== null && typeof value === 'object') {
    for (const [key, item] of Object.entries(value)) {
      if (key === '') return 'has an empty key';
      const problem = unstorable(item, depth + 1);
      if (problem) return problem;
    }
  }
  return undefined;
}

/** A JSON object kept on the sandbox record (complete's result, error's details). */
const storedObject = /* @__PURE__ */ z.record(z.string(), z.unknown()).superRefine((value, ctx) => {
  const problem = unstorable(value, 1);
  if (problem) ctx.addIssue({ code: 'custom', message: problem });
});

export const completeBody = /* @__PURE__ */ z.object({ result: storedObject.optional() }).strict();
export const errorBody = /* @__PURE__ */ z.object({ error: z.string().min(1).max(4096), details: storedObject.optional() }).strict();
/** Refreshes the idle timer; may change the idle timeout and the TTL (never past the configured cap). */
export function timeoutBody(limits: ControlPlaneConfig['limits']) {
  return z
    .object({
      idle_timeout_seconds: z.number().int().min(30).max(limits.maxTtlSeconds).optional(),
      ttl_seconds: z.number().int().min(60).max(limits.maxTtlSeconds).optional(),
    })
    .strict();
}

/**
 * Files. A path is absolute or relative to /home/agent; file-paths.ts checks
 * the rest (NUL, length, well-formed Unicode) and names the field in the 400.
 */
const pathText = /* @__PURE__ */ z.string();
const flag = /* @__PURE__ */ z.enum(['true', 'false']).transform((v) => v === 'true');
/** Permission bits as octal digits (e.g. 0644, 755): a number would be read as decimal. */
const octalMode = /* @__PURE__ */ z
  .string()
  .regex(/^[0-7]{3,4}$/, 'must be 3 or 4 octal digits, e.g. 0644')
  .transform((m) => Number.parseInt(m, 8));
const sha256Text = /* @__PURE__ */ z
  .string()
  .regex(/^[0-9a-fA-F]{64}$/, 'must be 64 hex digits')
  .transform((h) => h.toLowerCase());
const pageToken = /* @__PURE__ */ z
  .string()
  .max(16_384)
  .regex(/^[A-Za-z0-9_-]+$/, 'is not a valid page token');

/** GET /sandboxes/{id}/files, GET .../files/stat, GET /users/{user_id}/home/files */
export const filePathQuery = /* @__PURE__ */ z.object({ path: pathText }).strict();
/** PUT /sandboxes/{id}/files */
export const writeFileQuery = /* @__PURE__ */ z.object({ path: pathText, mode: octalMode.optional(), mkdirs: flag.default(false) }).strict();
/** DELETE /sandboxes/{id}/files */
export const deleteFileQuery = /* @__PURE__ */ z.object({ path: pathText, recursive: flag.default(false) }).strict();
/** GET /sandboxes/{id}/files/list, GET /users/{user_id}/home/files/list */
export const listFilesQuery = /* @__PURE__ */ z
  .object({
    path: pathText.optional(),
    recursive: flag.default(false),
    limit: z.coerce.number().int().min(1).max(1000).default(100),
    next_token: pageToken.optional(),
  })
  .strict();
export type ListFilesQuery = z.infer<typeof listFilesQuery>;
/** POST /sandboxes/{id}/files/mkdir */
export const mkdirBody = /* @__PURE__ */ z.object({ path: pathText, parents: z.boolean().default(false) }).strict();
/** POST /sandboxes/{id}/files/move */
export const moveBody = /* @__PURE__ */ z.object({ from: pathText, to: pathText, overwrite: z.boolean().default(false) }).strict();
/** POST /sandboxes/{id}/files/upload */
export const uploadBody = /* @__PURE__ */ z
  .object({
    path: pathText,
    sha256: sha256Text.optional(),
    extract: z.enum(['tar', 'tar.gz']).optional(),
    mode: octalMode.optional(),
    mkdirs: z.boolean().default(false),
  })
  .strict()
  .refine((b) => b.extract === undefined || b.mode === undefined, { message: 'mode applies to a file; an archive keeps the modes it holds', path: ['mode'] });
export type UploadBody = z.infer<typeof uploadBody>;
/** POST /sandboxes/{id}/files/download */
export const downloadBody = /* @__PURE__ */ z.object({ path: pathText, archive: z.literal('tar.gz').optional() }).strict();
export type DownloadBody = z.infer<typeof downloadBody>;
/** GET /sandboxes/{id}/files/download/{download_id}, POST .../upload/{upload_id}/complete */
export const transferQuery = /* @__PURE__ */ z.object({ wait: waitSeconds }).strict();
/** POST /users/{user_id}/home/files/download */
export const homeDownloadBody = /* @__PURE__ */ z.object({ path: pathText }).strict();
