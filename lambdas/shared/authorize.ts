/**
 * What the authorizer decides, as plain functions the Lambda authorizer and
 * the local API server share: who the caller is and which routes they may call.
 */
import { parseSandboxToken, sameHash, sha256Hex, verifyApiKey } from './api-keys';
import { getSandbox } from './sandbox-store';
import { isTerminal } from './sandbox-state';

export type Decision =
  | { effect: 'unauthorized' } // no key at all -> 401
  | { effect: 'deny' } // a key that is not valid now -> 403
  | {
      effect: 'allow';
      principalId: string;
      /** Method ARNs (with wildcards) this caller may invoke. */
      resources: string[];
      context: { tenant_id: string; principal_kind: 'api-key' | 'sandbox-token'; sandbox_id: string; key_id: string };
      usageIdentifierKey?: string;
    };

/** The signal routes a sandbox token may call, for its own sandbox only. */
const sandboxTokenActions = ['heartbeat', 'complete', 'error'] as const;

/**
 * @param methodArn arn:aws:execute-api:<region>:<account>:<api>/<stage>/<METHOD>/<path>
 */
export async function decide(presented: string | undefined, methodArn: string): Promise<Decision> {
  if (presented === undefined || presented.trim() === '') return { effect: 'unauthorized' };
  const key = presented.trim();
  const [arnPrefix] = methodArn.split('/', 1);
  const stage = methodArn.split('/')[1] ?? '*';
  const base = `${arnPrefix}/${stage}`;

  const token = parseSandboxToken(key);
  if (token) {
    const sandbox = await getSandbox(token.sandboxId);
    if (!sandbox || !sameHash(sandbox.token_hash, sha256Hex(key)) || isTerminal(sandbox.status)) return { effect: 'deny' };
    return {
      effect: 'allow',
      principalId: `sandbox:${sandbox.sandbox_id}`,
      resources: sandboxTokenActions.map((a) => `${base}/POST/sandboxes/${sandbox.sandbox_id}/${a}`),
      context: { tenant_id: sandbox.tenant_id, principal_kind: 'sandbox-token', sandbox_id: sandbox.sandbox_id, key_id: '' },
    };
  }

  const record = await verifyApiKey(key);
  if (!record) return { effect: 'deny' };
  return {
    effect: 'allow',
    principalId: `tenant:${record.tenant_id}`,
    resources: [`${base}/*`],
    context: { tenant_id: record.tenant_id, principal_kind: 'api-key', sandbox_id: '', key_id: record.key_id },
    ...(record.usage_key ? { usageIdentifierKey: record.usage_key } : {}),
  };
}

/** Whether `methodArn` matches one of the policy resources (`*` matches any run of characters). */
export function allows(resources: readonly string[], methodArn: string): boolean {
  return resources.some((pattern) => {
    const re = new RegExp(
      '^' +
        pattern
          .split('*')
          .map((p) => p.replace(/[.+?^${}()|[\]\\]/g, '\\$&'))
          .join('.*') +
        '$',
    );
    return re.test(methodArn);
  });
}
