/**
 * What a sandbox id and a command id look like: the one definition the API's
 * schemas, the request wrapper and the host read. Plain patterns, no zod:
 * handlers that only check a path id (GET /health, the lists) load no schema
 * library for it.
 */

/** `sbx-` and 20 lowercase letters or digits. */
export const sandboxIdPattern = /^sbx-[a-z0-9]{20}$/;

/** 1-64 letters, digits, `_` and `-` (a caller may choose its command's id). */
export const commandIdPattern = /^[A-Za-z0-9_-]{1,64}$/;
