/**
 * Request schemas (zod): they validate every body, query string and path id,
 * type the handlers, and name the offending field in every 400.
 *
 * zod/mini: the same checks and messages as zod's classic API, without the
 * methods on every schema that make zod's own load cost about 35 ms of each
 * cold start (57 ms against 23 for a small bundle of schemas, measured alone).
 *
 * Each top-level schema is made in `schema(() => ...)`, a function esbuild
 * knows has no side effects: a handler's bundle keeps only the schemas it uses,
 * instead of building every route's schemas at each cold start.
 */
import * as z from 'zod/mini';
import en from 'zod/v4/locales/en.js';
import { egressPolicySchema, readEgressPolicy } from '../../contract/egress-policy';
import { minHomeDiskMb } from '../../contract/host-protocol';
import { commandIdPattern, envKeyPattern, userIdPattern } from '../../contract/ids';
import { sandboxStatuses } from './sandbox-state';
import type { ControlPlaneConfig } from './config';
import type { SandboxNetworkConfig } from './sandbox-record';

// zod/mini leaves the messages out unless a locale is configured: the 400s keep zod's English ("Too big: ...").
z.config(en());

/**
 * A schema built when the module loads, in a call esbuild may drop: a bundle that never uses the schema does not
 * build it (nor any schema it is made of).
 */
/* @__NO_SIDE_EFFECTS__ */
function schema<T>(make: () => T): T {
  return make();
}

/** A number within [min, max]; `int` for whole numbers. */
const numberIn = (min: number, max: number) => z.number().check(z.gte(min), z.lte(max));
const intIn = (min: number, max: number) => z.int().check(z.gte(min), z.lte(max));
/** A number from a query string ("50") within [min, max], whole. */
const queryIntIn = (min: number, max: number) => z.coerce.number().check(z.int(), z.gte(min), z.lte(max));
/** A string matching `pattern`, with `message` when it does not. */
const matching = (pattern: RegExp, message: string) => z.string().check(z.regex(pattern, message));

const envKey = schema(() => matching(envKeyPattern, 'must be a valid environment variable name'));
const envMap = schema(() =>
  z.record(envKey, z.string().check(z.maxLength(32_768))).check(
    z.refine((m) => Object.keys(m).length <= 64, 'at most 64 entries'),
    z.refine((m) => Object.values(m).every((v) => !v.includes('\0')), 'values must not contain NUL'),
  ),
);
/** Names the platform sets in every sandbox; callers cannot override them. */
const reservedEnvKeys = ['SANDBOX_ID', 'SANDBOX_API_URL', 'SANDBOX_TOKEN', 'HOME', 'USER'] as const;

export const userIdSchema = schema(() => matching(userIdPattern, 'must be 1-128 characters of letters, digits and ._@=- starting with a letter or digit'));

/**
 * `config.network`: "none" (no network at all), "bridge" (the internet under
 * allow_all, as before egress policies), or {"egress": <policy>}.
 */
export const networkConfigSchema = schema(() =>
  z.pipe(
    z.unknown(),
    z.transform((value, ctx): SandboxNetworkConfig => {
      if (value === 'bridge' || value === 'none') return value;
      if (value === null || typeof value !== 'object' || Array.isArray(value)) {
        ctx.issues.push({ code: 'custom', input: value, message: 'must be "none", "bridge" or {"egress": "allow_all" | "deny_all" | {"allow": [...]}}' });
        return z.NEVER;
      }
      const extra = Object.keys(value).filter((k) => k !== 'egress');
      if (extra.length > 0) {
        ctx.issues.push({
          code: 'custom',
          input: value,
          message: `unknown field${extra.length > 1 ? 's' : ''} ${extra.join(', ')}; the network object has only "egress"`,
        });
        return z.NEVER;
      }
      const read = readEgressPolicy((value as { egress?: unknown }).egress);
      if (!read.ok) {
        ctx.issues.push({ code: 'custom', input: value, path: ['egress', ...read.path], message: read.message });
        return z.NEVER;
      }
      return { egress: read.policy };
    }),
  ),
);

export function createSandboxBody(limits: ControlPlaneConfig['limits']) {
  return z.strictObject({
    user_id: userIdSchema,
    config: z.optional(
      z.strictObject({
        cpu: z.optional(numberIn(0.25, limits.maxCpu)),
        memory_mb: z.optional(intIn(128, limits.maxMemoryMb)),
        disk_mb: z.optional(intIn(minHomeDiskMb, limits.maxDiskMb)),
        ttl_seconds: z.optional(intIn(60, limits.maxTtlSeconds)),
        idle_timeout_seconds: z.optional(intIn(30, limits.maxTtlSeconds)),
        network: z.optional(networkConfigSchema),
        env: z.optional(envMap.check(z.refine((m) => !reservedEnvKeys.some((k) => k in m), `must not set ${reservedEnvKeys.join(', ')}`))),
        labels: z.optional(
          z
            .record(
              matching(/^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$/, 'label keys are 1-63 characters of letters, digits and ._/-'),
              z.string().check(z.maxLength(256)),
            )
            .check(z.refine((m) => Object.keys(m).length <= 32, 'at most 32 labels')),
        ),
      }),
    ),
  });
}
export type CreateSandboxBody = z.infer<ReturnType<typeof createSandboxBody>>;

const commandText = schema(() =>
  z.string().check(
    z.minLength(1),
    z.maxLength(200_000),
    z.refine((c) => !c.includes('\0'), 'must not contain NUL'),
  ),
);
const cwdSchema = schema(() => z.string().check(z.minLength(1), z.maxLength(4096), z.regex(/^\/[^\0]*$/, 'must be an absolute path')));
const commandUser = schema(() =>
  z._default(
    z.string().check(
      z.regex(/^[a-z_][a-z0-9_-]{0,31}$/, 'must be a valid user name'),
      // Sandboxes never run anything as root, not even root without capabilities.
      z.refine((u) => u !== 'root', 'must not be root: commands run as a non-root user (default agent)'),
    ),
    'agent',
  ),
);
/** Initial stdin: text, at most 192 KiB (the body is at most 256 KiB). */
const stdinText = schema(() =>
  z.string().check(
    z.maxLength(192 * 1024),
    z.refine((d) => Buffer.byteLength(d, 'utf8') <= 192 * 1024, 'must be at most 196608 bytes of UTF-8'),
  ),
);
/** Seconds a call may wait for a change (API Gateway ends every call at 29 s). */
const waitSeconds = schema(() => z._default(z.coerce.number().check(z.gte(0), z.lte(20)), 0));

const commandIdSchema = schema(() => matching(commandIdPattern, 'must be 1-64 characters of letters, digits, _ and -'));
const pageToken = (maxLength: number) => z.string().check(z.maxLength(maxLength), z.regex(/^[A-Za-z0-9_-]+$/, 'is not a valid page token'));

/** POST /sandboxes/{id}/exec: start a command and wait for it (up to about 25 s). */
export const execBody = schema(() =>
  z.strictObject({
    command: commandText,
    timeout: z._default(intIn(1, 600), 30),
    cwd: z.optional(cwdSchema),
    env: z.optional(envMap),
    user: commandUser,
    stdin: z.optional(stdinText),
  }),
);
export type ExecBody = z.infer<typeof execBody>;

/** POST /sandboxes/{id}/commands: start a command that outlives the request. */
export const startCommandBody = schema(() =>
  z.strictObject({
    command: commandText,
    cwd: z.optional(cwdSchema),
    env: z.optional(envMap),
    user: commandUser,
    timeout: z._default(intIn(1, 86_400), 3600),
    stdin: z.optional(stdinText),
    /** Keep stdin open after `stdin` for POST .../stdin (closed with eof: true). */
    stdin_open: z._default(z.boolean(), false),
    command_id: z.optional(commandIdSchema),
    wait: z._default(numberIn(0, 20), 0),
  }),
);
export type StartCommandBody = z.infer<typeof startCommandBody>;

/** GET /sandboxes/{id}/commands/{command_id} */
export const commandQuery = schema(() =>
  z.strictObject({
    stdout_offset: z._default(queryIntIn(0, Number.MAX_SAFE_INTEGER), 0),
    stderr_offset: z._default(queryIntIn(0, Number.MAX_SAFE_INTEGER), 0),
    wait: waitSeconds,
  }),
);

/** GET /sandboxes/{id}/commands */
export const listCommandsQuery = schema(() =>
  z.strictObject({
    limit: z._default(queryIntIn(1, 100), 50),
    next_token: z.optional(pageToken(2048)),
  }),
);

export const killCommandBody = schema(() => z.strictObject({ signal: z._default(z.enum(['TERM', 'KILL']), 'KILL') }));

export const commandStdinBody = schema(() =>
  z.strictObject({
    data: stdinText,
    offset: intIn(0, Number.MAX_SAFE_INTEGER),
    eof: z._default(z.boolean(), false),
  }),
);

/** GET /sandboxes/{id}?wait=S: wait up to S seconds for a change of status. */
export const getSandboxQuery = schema(() => z.strictObject({ wait: waitSeconds }));

export const listQuery = schema(() =>
  z.strictObject({
    user_id: z.optional(userIdSchema),
    status: z.optional(z.enum(sandboxStatuses)),
    limit: z._default(queryIntIn(1, 100), 50),
    next_token: z.optional(pageToken(2048)),
  }),
);

/** PUT /sandboxes/{id}/network */
export const networkBody = schema(() => z.strictObject({ egress: egressPolicySchema }));

/** GET /sandboxes/{id}/network/log */
export const egressLogQuery = schema(() => z.strictObject({ limit: z._default(queryIntIn(1, 500), 100) }));

export const destroyQuery = schema(() => z.strictObject({ graceful: z._default(z.enum(['true', 'false']), 'true') }));

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
const storedObject = schema(() =>
  z.record(z.string(), z.unknown()).check(
    z.superRefine((value, ctx) => {
      const problem = unstorable(value, 1);
      if (problem) ctx.addIssue({ code: 'custom', message: problem });
    }),
  ),
);

export const completeBody = schema(() => z.strictObject({ result: z.optional(storedObject) }));
export const errorBody = schema(() => z.strictObject({ error: z.string().check(z.minLength(1), z.maxLength(4096)), details: z.optional(storedObject) }));
/** Refreshes the idle timer; may change the idle timeout and the TTL (never past the configured cap). */
export function timeoutBody(limits: ControlPlaneConfig['limits']) {
  return z.strictObject({
    idle_timeout_seconds: z.optional(intIn(30, limits.maxTtlSeconds)),
    ttl_seconds: z.optional(intIn(60, limits.maxTtlSeconds)),
  });
}

/**
 * Files. A path is absolute or relative to /home/agent; file-paths.ts checks
 * the rest (NUL, length, well-formed Unicode) and names the field in the 400.
 */
const pathText = schema(() => z.string());
const flag = schema(() =>
  z.pipe(
    z.enum(['true', 'false']),
    z.transform((v) => v === 'true'),
  ),
);
/** Permission bits as octal digits (e.g. 0644, 755): a number would be read as decimal. */
const octalMode = schema(() =>
  z.pipe(
    matching(/^[0-7]{3,4}$/, 'must be 3 or 4 octal digits, e.g. 0644'),
    z.transform((m) => Number.parseInt(m, 8)),
  ),
);
const sha256Text = schema(() =>
  z.pipe(
    matching(/^[0-9a-fA-F]{64}$/, 'must be 64 hex digits'),
    z.transform((h) => h.toLowerCase()),
  ),
);

/** GET /sandboxes/{id}/files, GET .../files/stat, GET /users/{user_id}/home/files */
export const filePathQuery = schema(() => z.strictObject({ path: pathText }));
/** PUT /sandboxes/{id}/files */
export const writeFileQuery = schema(() => z.strictObject({ path: pathText, mode: z.optional(octalMode), mkdirs: z._default(flag, false) }));
/** DELETE /sandboxes/{id}/files */
export const deleteFileQuery = schema(() => z.strictObject({ path: pathText, recursive: z._default(flag, false) }));
/** GET /sandboxes/{id}/files/list, GET /users/{user_id}/home/files/list */
export const listFilesQuery = schema(() =>
  z.strictObject({
    path: z.optional(pathText),
    recursive: z._default(flag, false),
    limit: z._default(queryIntIn(1, 1000), 100),
    next_token: z.optional(pageToken(16_384)),
  }),
);
export type ListFilesQuery = z.infer<typeof listFilesQuery>;
/** POST /sandboxes/{id}/files/mkdir */
export const mkdirBody = schema(() => z.strictObject({ path: pathText, parents: z._default(z.boolean(), false) }));
/** POST /sandboxes/{id}/files/move */
export const moveBody = schema(() => z.strictObject({ from: pathText, to: pathText, overwrite: z._default(z.boolean(), false) }));
/** POST /sandboxes/{id}/files/upload */
export const uploadBody = schema(() =>
  z
    .strictObject({
      path: pathText,
      sha256: z.optional(sha256Text),
      extract: z.optional(z.enum(['tar', 'tar.gz'])),
      mode: z.optional(octalMode),
      mkdirs: z._default(z.boolean(), false),
    })
    .check(
      z.refine((b) => b.extract === undefined || b.mode === undefined, {
        message: 'mode applies to a file; an archive keeps the modes it holds',
        path: ['mode'],
      }),
    ),
);
export type UploadBody = z.infer<typeof uploadBody>;
/** POST /sandboxes/{id}/files/download */
export const downloadBody = schema(() => z.strictObject({ path: pathText, archive: z.optional(z.literal('tar.gz')) }));
export type DownloadBody = z.infer<typeof downloadBody>;
/** GET /sandboxes/{id}/files/download/{download_id}, POST .../upload/{upload_id}/complete */
export const transferQuery = schema(() => z.strictObject({ wait: waitSeconds }));
/** POST /users/{user_id}/home/files/download */
export const homeDownloadBody = schema(() => z.strictObject({ path: pathText }));
