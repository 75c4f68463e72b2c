/**
 * The one logger of the control plane: Powertools Logger, one JSON object per
 * line. In a Lambda function `injectLambdaContext` (lambdas/shared/observability.ts)
 * adds the request id and the function; `apiHandler` adds the sandbox id; the
 * host daemon adds its host id (`logger.appendPersistentKeys({ host_id })`),
 * so every line of every part of the platform has the same shape.
 *
 * Level from LOG_LEVEL (debug, info, warn, error, silent); `applyLogLevel()`
 * reads it again when a process changes its environment (the local stack).
 *
 * @example logger.warn('reaper: host lost', { hostId });
 */
import { Logger } from '@aws-lambda-powertools/logger';

/** `service` on every line (and the metrics' service dimension). */
export const serviceName = 'ephemeral-sandbox';

type Level = 'DEBUG' | 'INFO' | 'WARN' | 'ERROR' | 'SILENT';
const levels: readonly Level[] = ['DEBUG', 'INFO', 'WARN', 'ERROR', 'SILENT'];

function levelFromEnv(): Level {
  const raw = (process.env.LOG_LEVEL ?? 'info').toUpperCase();
  return (levels as readonly string[]).includes(raw) ? (raw as Level) : 'INFO';
}

export const logger = new Logger({ serviceName: process.env.POWERTOOLS_SERVICE_NAME ?? serviceName, logLevel: levelFromEnv() });

/** Re-reads LOG_LEVEL (a process that sets its environment after start, like `npm start`). */
export function applyLogLevel(): void {
  logger.setLogLevel(levelFromEnv());
}
