/**
 * The control plane's calls to the hosts' Auto Scaling group (thin shells
 * around fleet-scaling.ts): capacity for creates that found no room, scale-in
 * protection of hosts with sandboxes, lost hosts reported unhealthy, and the
 * termination lifecycle action a draining host holds. Every call names the
 * group from AUTO_SCALING_GROUP_NAME; without one (a local stack with fixed
 * hosts) each says so instead of acting.
 */
import {
  CompleteLifecycleActionCommand,
  DescribeAutoScalingGroupsCommand,
  RecordLifecycleActionHeartbeatCommand,
  SetDesiredCapacityCommand,
  SetInstanceHealthCommand,
  SetInstanceProtectionCommand,
} from '@aws-sdk/client-auto-scaling';
import { autoScaling } from './clients/autoscaling';
import { config } from './config';
import { waitingCreates, waitingDemand } from './capacity-wait';
import { desiredForWaiting, hostShapeOf, hostsNeeded } from './fleet-scaling';
import { activeHosts } from './host-store';
import { logger } from './logger';
import { resourcesOf, type Resources } from './placement';

const noGroup = 'no Auto Scaling group is configured (AUTO_SCALING_GROUP_NAME)';

/** An Auto Scaling validation error that says the thing asked about is not there (no pending action, instance gone). */
function isNotThere(err: unknown): boolean {
  const e = err as { name?: string; message?: string };
  return e?.name === 'ValidationError' && /No active Lifecycle Action|not part of Auto Scaling group|Instance Id not found|not found/i.test(e.message ?? '');
}

export interface CapacityAnswer {
  asked: boolean;
  /** The group's desired capacity after this call. */
  desired?: number;
  reason: string;
}

/**
 * Asks the group for the hosts the fleet needs (fleet-scaling.ts decides how
 * many): room for the waiting creates and the environment's headroom
 * (FLEET_HEADROOM_PERCENT), as a higher desired capacity, at most the group's
 * maximum. Hosts still launching count as room already. Safe to repeat: it
 * only ever raises the desired capacity (giving hosts back is the group's
 * scale-in policy's job).
 */
export async function requestCapacity(o: { also?: Resources[] } = {}): Promise<CapacityAnswer> {
  const c = config();
  if (!c.autoScalingGroupName) return { asked: false, reason: noGroup };
  const [described, hosts, waiting] = await Promise.all([
    autoScaling().send(new DescribeAutoScalingGroupsCommand({ AutoScalingGroupNames: [c.autoScalingGroupName] })),
    activeHosts(),
    waitingCreates(),
  ]);
  const group = described.AutoScalingGroups?.[0];
  if (!group) throw new Error(`Auto Scaling group ${c.autoScalingGroupName} does not exist`);
  const desired = group.DesiredCapacity ?? 0;
  const max = group.MaxSize ?? 0;
  const starting = (group.Instances ?? []).filter((i) => /^Pending|^InService/.test(i.LifecycleState ?? '')).length;
  // Instances up but not registered yet, and capacity asked for and not launched yet, both bring an empty host.
  const launching = Math.max(0, Math.max(desired, starting) - hosts.length);
  const demand = [...waitingDemand(waiting), ...(o.also ?? [])];
  const shape = hostShapeOf(hosts, {
    slots: c.hostSlots,
    defaultSandbox: resourcesOf({ cpu: c.limits.defaultCpu, memory_mb: c.limits.defaultMemoryMb, disk_mb: c.limits.defaultDiskMb }),
  });
  const toAdd = hostsNeeded(hosts, demand, launching, shape, c.fleetHeadroomPercent);
  const next = desiredForWaiting({ desired, max, running: starting }, toAdd);
  if (next === undefined) {
    const reason = toAdd === 0 ? 'the hosts in service and launching have room and headroom' : `the group is at its maximum of ${max} hosts`;
    return { asked: false, desired, reason };
  }
  // HonorCooldown false: a create is waiting now; a cooldown is for the policy's own steps.
  await autoScaling().send(new SetDesiredCapacityCommand({ AutoScalingGroupName: c.autoScalingGroupName, DesiredCapacity: next, HonorCooldown: false }));
  logger.info('fleet: asked for capacity', { group: c.autoScalingGroupName, from: desired, to: next, waiting: demand.length });
  return { asked: true, desired: next, reason: `${demand.length} create(s) waiting and ${c.fleetHeadroomPercent} % headroom need ${toAdd} more host(s)` };
}

/** Protects (or releases) a host from scale-in: hosts with sandboxes are protected, so only empty or drained hosts go. */
export async function setScaleInProtection(hostId: string, protect: boolean): Promise<'done' | 'no_group' | 'not_in_group'> {
  const group = config().autoScalingGroupName;
  if (!group) return 'no_group';
  try {
    await autoScaling().send(new SetInstanceProtectionCommand({ AutoScalingGroupName: group, InstanceIds: [hostId], ProtectedFromScaleIn: protect }));
    return 'done';
  } catch (err) {
    if (isNotThere(err)) return 'not_in_group';
    throw err;
  }
}

/** Tells the group a host is gone (the reaper found it lost): Auto Scaling terminates and replaces it. */
export async function reportUnhealthy(hostId: string): Promise<'done' | 'no_group' | 'not_in_group'> {
  const group = config().autoScalingGroupName;
  if (!group) return 'no_group';
  try {
    await autoScaling().send(new SetInstanceHealthCommand({ InstanceId: hostId, HealthStatus: 'Unhealthy', ShouldRespectGracePeriod: false }));
    return 'done';
  } catch (err) {
    if (isNotThere(err)) return 'not_in_group';
    throw err;
  }
}

/** Extends a lifecycle action this host holds (draining takes longer than the hook's heartbeat timeout). */
export async function heartbeatLifecycleAction(hostId: string, hookName: string): Promise<'done' | 'no_group' | 'no_action'> {
  const group = config().autoScalingGroupName;
  if (!group) return 'no_group';
  try {
    await autoScaling().send(new RecordLifecycleActionHeartbeatCommand({ AutoScalingGroupName: group, LifecycleHookName: hookName, InstanceId: hostId }));
    return 'done';
  } catch (err) {
    if (isNotThere(err)) return 'no_action';
    throw err;
  }
}

/** Completes a lifecycle action this host holds; 'no_action' when there is none (a Spot warning, an operator's drain). */
export async function completeLifecycleAction(hostId: string, hookName: string, result: 'CONTINUE' | 'ABANDON'): Promise<'done' | 'no_group' | 'no_action'> {
  const group = config().autoScalingGroupName;
  if (!group) return 'no_group';
  try {
    await autoScaling().send(
      new CompleteLifecycleActionCommand({ AutoScalingGroupName: group, LifecycleHookName: hookName, InstanceId: hostId, LifecycleActionResult: result }),
    );
    return 'done';
  } catch (err) {
    if (isNotThere(err)) return 'no_action';
    throw err;
  }
}
