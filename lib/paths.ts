/** Where the things the stacks package live, relative to the repository root. */
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = fileURLToPath(new URL('..', import.meta.url));

/** `lambdas/<name>.ts`: one file per handler, exporting `handler`. */
export function handlerEntry(name: string): string {
  return join(repoRoot, 'lambdas', `${name}.ts`);
}

export const sandboxImageDir = join(repoRoot, 'sandbox-image');
export const hostAgentDir = join(repoRoot, 'host-agent');
