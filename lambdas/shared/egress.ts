/**
 * Egress policy of a running sandbox, and its egress log: PUT
 * /sandboxes/{id}/network hands the new policy to the sandbox's host (in
 * effect there before the call answers) and records it; GET
 * /sandboxes/{id}/network/log reads the decisions the host logged.
 */
import type { EgressPolicy } from '../../contract/egress-policy';
import { readEgressLog, type EgressLogEntry } from './egress-log';
import { invalidState } from './errors';
import { hostFailure, hosts } from './host-calls';
import { toView, type SandboxView } from './sandbox-record';
import { getTenantSandbox, TransitionRejectedError, updateSandbox } from './sandbox-store';
import { isSettled, settledStatuses } from './sandbox-state';

/**
 * Sets a sandbox's egress policy while it runs (or is paused: it applies at resume).
 *
 * @example await setEgress(tenantId, sandboxId, { allow: ['api.github.com'] });
 */
export async function setEgress(tenantId: string, sandboxId: string, egress: EgressPolicy): Promise<SandboxView> {
  const r = await getTenantSandbox(tenantId, sandboxId);
  if (r.config.network === 'none') {
    throw invalidState(`sandbox ${sandboxId} was created with network "none": it has no network to set an egress policy on`);
  }
  // A settled container (running or paused) is on a host that can take a new policy.
  if (!isSettled(r.status)) {
    throw invalidState(`sandbox ${sandboxId} is ${r.status}; the egress policy can change while it is ready, running or paused`);
  }
  // Paused and moved off a drained host: no host holds it; its next resume applies the recorded policy (relocation.ts).
  const hostless = !r.host_id;
  try {
    if (!hostless) await hosts().dispatch(r.host_id, 'network', { sandboxId, egress }, { timeoutSeconds: 30 });
  } catch (err) {
    throw hostFailure(err, 'set the egress policy');
  }
  try {
    const updated = await updateSandbox(
      sandboxId,
      'network',
      {
        set: { updated_at: new Date().toISOString() },
        names: { '#cfg': 'config', '#net': 'network' },
        values: { ':net': { egress }, ...(hostless ? { ':none': '' } : {}) },
        extraSet: '#cfg.#net = :net',
        // Still without a host: a resume that placed it meanwhile would not see the change.
        ...(hostless ? { condition: 'host_id = :none' } : {}),
      },
      hostless ? ['paused'] : settledStatuses,
    );
    return toView(updated);
  } catch (err) {
    if (err instanceof TransitionRejectedError) {
      throw invalidState(`sandbox ${sandboxId} is ${err.current?.status ?? 'gone'}; its egress policy was not recorded`);
    }
    throw err;
  }
}

/** The newest egress decisions of a sandbox (of any status: the log outlives the sandbox for its retention). */
export async function egressLogOf(tenantId: string, sandboxId: string, limit: number): Promise<{ sandbox_id: string; decisions: EgressLogEntry[] }> {
  await getTenantSandbox(tenantId, sandboxId);
  return { sandbox_id: sandboxId, decisions: await readEgressLog(sandboxId, limit) };
}
