/**
 * The control plane's side of a drain: EventBridge brings a termination
 * lifecycle action of the hosts' group (scale-in, instance refresh, an
 * unhealthy host replaced) or a Spot interruption warning; the host is taken
 * out of placement at once and told to drain (host-agent/src/drain.ts does the
 * work on the host and completes the lifecycle action). A host that cannot be
 * reached still drains: its daemon sees itself marked draining at its next
 * heartbeat.
 */
import { config } from './config';
import { completeLifecycleAction } from './fleet';
import { hosts } from './host-calls';
import { HostDispatchError } from './host-dispatch';
import { getHost, markHostDraining } from './host-store';
import { logger } from './logger';

/** What a Spot interruption warning leaves (two minutes), less room for the last records and the hook. */
export const spotDrainSeconds = 100;

/** An EventBridge event as the consumer receives it (the fields it reads). */
export interface FleetEventInput {
  source?: string;
  'detail-type'?: string;
  detail?: Record<string, unknown>;
}

export interface DrainTarget {
  hostId: string;
  reason: string;
  deadlineSeconds: number;
  /** The lifecycle hook holding the termination, when a hook does. */
  hookName?: string;
}

/**
 * Which host an event asks to drain, and within how long; undefined for an
 * event that is not for this fleet (another group's lifecycle action).
 */
function drainTargetOf(event: FleetEventInput, o: { groupName: string; drainTimeoutSeconds: number }): DrainTarget | undefined {
  const d = event.detail ?? {};
  if (event.source === 'aws.autoscaling' && event['detail-type'] === 'EC2 Instance-terminate Lifecycle Action') {
    if (d.AutoScalingGroupName !== o.groupName || typeof d.EC2InstanceId !== 'string') return undefined;
    return {
      hostId: d.EC2InstanceId,
      reason: 'termination lifecycle action',
      deadlineSeconds: o.drainTimeoutSeconds,
      ...(typeof d.LifecycleHookName === 'string' ? { hookName: d.LifecycleHookName } : {}),
    };
  }
  if (event.source === 'aws.ec2' && event['detail-type'] === 'EC2 Spot Instance Interruption Warning') {
    const id = d['instance-id'];
    if (typeof id !== 'string') return undefined;
    // EC2 takes the instance back two minutes after the warning, whatever any hook says.
    return { hostId: id, reason: 'Spot interruption warning', deadlineSeconds: Math.min(spotDrainSeconds, o.drainTimeoutSeconds) };
  }
  return undefined;
}

export type DrainOutcome = 'not_a_host' | 'lost' | 'draining' | 'marked_only';

/**
 * Takes the host out of placement and asks it to drain. 'marked_only' when
 * the host could not be reached (its daemon starts the drain when it sees
 * itself draining; a host that is gone is found lost, and its hook times out
 * to CONTINUE).
 */
async function drainHost(target: DrainTarget, now = Date.now()): Promise<DrainOutcome> {
  const host = await getHost(target.hostId);
  // A Spot warning for an instance of another fleet in the account.
  if (!host) return 'not_a_host';
  if (host.status === 'lost') {
    // Nothing left to drain: let the termination go ahead now rather than after the hook's timeout.
    if (target.hookName) await completeLifecycleAction(target.hostId, target.hookName, 'CONTINUE');
    return 'lost';
  }
  const deadlineAt = now + target.deadlineSeconds * 1000;
  await markHostDraining(target.hostId, target.reason, deadlineAt, now);
  try {
    const answer = await hosts().dispatch(
      target.hostId,
      'drain',
      { reason: target.reason, deadlineSeconds: target.deadlineSeconds },
      { timeoutSeconds: 30, waitSeconds: 20 },
    );
    logger.info('drain: host draining', { ...target, started: answer.started, sandboxes: answer.sandboxes });
    return 'draining';
  } catch (err) {
    const code = err instanceof HostDispatchError ? err.code : 'error';
    logger.error('drain: the host did not take the drain request; it drains when its daemon next heartbeats, or is found lost', { ...target, code, err });
    return 'marked_only';
  }
}

/** The consumer's whole job for one event. */
export async function onFleetEvent(event: FleetEventInput): Promise<{ target?: DrainTarget; outcome: DrainOutcome | 'ignored' }> {
  const c = config();
  const target = drainTargetOf(event, { groupName: c.autoScalingGroupName, drainTimeoutSeconds: c.drainTimeoutSeconds });
  if (!target) return { outcome: 'ignored' };
  return { target, outcome: await drainHost(target) };
}
