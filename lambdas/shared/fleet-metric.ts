/**
 * The fleet's capacity metric, published every minute (fleet-capacity
 * function, EventBridge Scheduler): allocated and free CPU and memory of the
 * hosts taking placements, creates waiting for a host, the utilization, and
 * the utilization with one empty host given back that the group's scale-in
 * policy reads (lib/constructs/fleet-wiring.ts). Published in CloudWatch's
 * Embedded Metric Format (one JSON log line: no PutMetricData call, no extra
 * permission). Capacity is asked for here too: for creates still waiting (a
 * failed ask at create time is retried within a minute) and for the
 * environment's headroom.
 */
import { waitingCreates, waitingDemand } from './capacity-wait';
import { config } from './config';
import { requestCapacity, type CapacityAnswer } from './fleet';
import { capacityMetric, type CapacityMetric } from './fleet-scaling';
import { hostsInPool } from './host-store';

/** One source for the CDK's policy and alarms and this publisher. */
export const fleetMetricNamespace = 'EphemeralSandbox/Fleet';
export const fleetMetricDimension = 'AutoScalingGroupName';
export const fleetMetrics = {
  utilization: { name: 'FleetUtilization', unit: 'Percent' },
  utilizationWithoutOneHost: { name: 'FleetUtilizationWithoutOneHost', unit: 'Percent' },
  allocatedCpu: { name: 'AllocatedCpu', unit: 'Count' },
  freeCpu: { name: 'FreeCpu', unit: 'Count' },
  allocatedMemory: { name: 'AllocatedMemoryMb', unit: 'Megabytes' },
  freeMemory: { name: 'FreeMemoryMb', unit: 'Megabytes' },
  pendingCreates: { name: 'PendingCreates', unit: 'Count' },
  activeHosts: { name: 'ActiveHosts', unit: 'Count' },
} as const;

/** The EMF record of one measurement. */
function emfRecord(metric: CapacityMetric, groupName: string, now: number): Record<string, unknown> {
  const values: Record<string, number> = {
    [fleetMetrics.utilization.name]: metric.utilizationPercent,
    [fleetMetrics.utilizationWithoutOneHost.name]: metric.utilizationWithoutOneHostPercent,
    [fleetMetrics.allocatedCpu.name]: metric.allocatedCpu,
    [fleetMetrics.freeCpu.name]: metric.freeCpu,
    [fleetMetrics.allocatedMemory.name]: metric.allocatedMemoryMb,
    [fleetMetrics.freeMemory.name]: metric.freeMemoryMb,
    [fleetMetrics.pendingCreates.name]: metric.pendingCreates,
    [fleetMetrics.activeHosts.name]: metric.activeHosts,
  };
  return {
    _aws: {
      Timestamp: now,
      CloudWatchMetrics: [
        {
          Namespace: fleetMetricNamespace,
          Dimensions: [[fleetMetricDimension]],
          Metrics: Object.values(fleetMetrics).map((m) => ({ Name: m.name, Unit: m.unit })),
        },
      ],
    },
    [fleetMetricDimension]: groupName,
    ...values,
  };
}

export interface FleetMeasurement extends CapacityMetric {
  capacity?: CapacityAnswer;
}

/** Measures the fleet, publishes the metric, and asks for capacity for creates still waiting and for the headroom. */
export async function measureFleet(now = Date.now(), write: (line: string) => void = (l) => process.stdout.write(l + '\n')): Promise<FleetMeasurement> {
  const [active, draining, waiting] = await Promise.all([hostsInPool('active'), hostsInPool('draining'), waitingCreates()]);
  const metric = capacityMetric([...active, ...draining], waitingDemand(waiting));
  write(JSON.stringify(emfRecord(metric, config().autoScalingGroupName, now)));
  // With no headroom and nothing waiting, the hosts there hold what exists: nothing to ask (and no call to make).
  if (waiting.length === 0 && config().fleetHeadroomPercent === 0) return metric;
  return { ...metric, capacity: await requestCapacity() };
}
