/**
 * The gateway's side of authorization, as API Gateway runs it before the
 * integration: the authorizer result cache (one decision per key for the TTL,
 * so a revoked key keeps working that long here as it does when deployed) and
 * what a decision lets through, the usage plan's throttle included. The
 * decision itself is the project's authorizer logic (lambdas/shared/authorize.ts).
 */
import { allows, type decide, type Decision } from '../../../lambdas/shared/authorize';
import type { GatewayResponseType } from '../../../lambdas/shared/gateway';
import type { Throttle } from './throttle';

/** Entries kept at most before the cache starts afresh (a flood of bad keys must not grow it without end). */
const maxEntries = 10_000;

/** API Gateway's authorizer result cache. */
export class DecisionCache {
  private readonly entries = new Map<string, { decision: Decision; expires: number }>();
  constructor(
    private readonly ttlMs: number,
    private readonly authorize: typeof decide,
    private readonly now: () => number = Date.now,
  ) {}

  async get(key: string | undefined, methodArn: string): Promise<Decision> {
    // Like API Gateway, the cache is keyed by the identity source (the key) only.
    if (this.ttlMs <= 0 || key === undefined) return this.authorize(key, methodArn);
    const hit = this.entries.get(key);
    if (hit && hit.expires > this.now()) return hit.decision;
    const decision = await this.authorize(key, methodArn);
    if (this.entries.size > maxEntries) this.entries.clear();
    this.entries.set(key, { decision, expires: this.now() + this.ttlMs });
    return decision;
  }
}

/** What a decision lets through: the authorizer context for the handler, or the gateway's refusal. */
export type Admission = { admitted: true; authorizer: Record<string, unknown> } | { admitted: false; refusal: GatewayResponseType };

/** Applies a decision to a request for `methodArn`, then the tenant's throttle (only admitted requests count). */
export function admit(decision: Decision, methodArn: string, throttle: Throttle): Admission {
  if (decision.effect === 'unauthorized') return { admitted: false, refusal: 'UNAUTHORIZED' };
  if (decision.effect === 'deny' || !allows(decision.resources, methodArn)) return { admitted: false, refusal: 'ACCESS_DENIED' };
  if (throttle.take(decision.context.tenant_id) > 0) return { admitted: false, refusal: 'THROTTLED' };
  return { admitted: true, authorizer: { ...decision.context, principalId: decision.principalId } };
}
