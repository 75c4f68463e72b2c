/**
 * EventBridge rules deliver the hosts' termination lifecycle actions and Spot
 * interruption warnings here: the host leaves placement and drains.
 */
import { onFleetEvent, type FleetEventInput } from './shared/drain';
import { logger } from './shared/logger';

export async function handler(event: FleetEventInput): Promise<Awaited<ReturnType<typeof onFleetEvent>>> {
  const result = await onFleetEvent(event);
  logger.info('fleet event', { detailType: event['detail-type'], ...result });
  return result;
}
