/**
 * The ids and names both tiers check, each written once: the control plane
 * validates what a caller sends with them, a host checks its requests again
 * (it trusts nothing that reaches it through SSM), and storage keys, container
 * names and labels are made of them.
 */
import { randomBytes } from 'node:crypto';

/** A sandbox: `sbx-` and 20 lower-case letters and digits; also its container's name on a host. */
export const sandboxIdPattern = /^sbx-[a-z0-9]{20}$/;

/** What SSM takes as a command's target, and so a host's id: an EC2 instance (i-) or a managed instance (mi-). */
export const ssmInstanceIdPattern = /^(?:i|mi)-[0-9a-f]{8,17}$/;

/** An environment variable a caller may set in a sandbox. */
export const envKeyPattern = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;

/**
 * A user id, and any tenant or user name a host takes: one segment of an S3
 * key or a label value, never a path trick.
 */
export const userIdPattern = /^[A-Za-z0-9][A-Za-z0-9._@=-]{0,127}$/;

/** A tenant id as API keys are issued for it (within userIdPattern, so a host takes it as a name). */
export const tenantIdPattern = /^[a-z0-9][a-z0-9-]{0,62}$/;

/** A command id: the API's `cmd-<20>` or one the caller chose (the SDK's `sdk-<20>`). */
export const commandIdPattern = /^[A-Za-z0-9_-]{1,64}$/;

/**
 * A whole-string pattern's body without its anchors, to build a longer
 * pattern from it (a storage key made of ids) rather than write the id again.
 */
export function patternBody(pattern: RegExp): string {
  const { source } = pattern;
  if (!source.startsWith('^') || !source.endsWith('$')) throw new Error(`${pattern} is not anchored at both ends`);
  return source.slice(1, -1);
}

const idAlphabet = 'abcdefghijklmnopqrstuvwxyz0123456789';

/**
 * `length` random lower-case letters and digits: the body of every id the
 * control plane mints (`sbx-`, `cmd-`, file operations, API key ids).
 *
 * @example `sbx-${randomId(20)}`
 */
export function randomId(length: number): string {
  return Array.from(randomBytes(length), (b) => idAlphabet[b % idAlphabet.length]).join('');
}

/** A fresh sandbox id (sandboxIdPattern). */
export function newSandboxId(): string {
  return `sbx-${randomId(20)}`;
}
