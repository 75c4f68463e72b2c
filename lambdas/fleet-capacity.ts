/**
 * Scheduled every minute by EventBridge Scheduler: publishes the fleet's
 * capacity metric (the group's scale-in policy acts on it) and asks for
 * capacity for creates still waiting for a host.
 */
import { measureFleet } from './shared/fleet-metric';
import { logger } from './shared/logger';

export async function handler(): Promise<Awaited<ReturnType<typeof measureFleet>>> {
  const measurement = await measureFleet();
  logger.info('fleet measured', { ...measurement });
  return measurement;
}
