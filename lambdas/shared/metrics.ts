/**
 * Metrics as CloudWatch Embedded Metric Format lines (Powertools Metrics): one
 * JSON line on stdout per emission, which CloudWatch Logs turns into metrics
 * in the environment's namespace (POWERTOOLS_METRICS_NAMESPACE). Names, units
 * and dimensions come from metric-names.ts, the list the dashboard and the
 * alarms read too.
 *
 * `emitMetrics` writes at once (not at the end of the invocation), so what the
 * host daemon and the host-agent record lands as it happens, and an invocation
 * cut off at its timeout still reported what it did before.
 *
 * @example emitMetrics({ Code: 'no_capacity' }, { ApiErrors: 1 });
 */
import { Metrics, type MetricUnit } from '@aws-lambda-powertools/metrics';
import type { EmfOutput } from '@aws-lambda-powertools/metrics/types';
import { logger, serviceName } from './logger';
import { metricDefinitions, type MetricDimensions, type MetricName } from './metric-names';

const namespace = () => process.env.POWERTOOLS_METRICS_NAMESPACE ?? 'EphemeralSandbox/local';

/**
 * Powertools' own notices go to the logger. An invocation with no metric of its
 * own (a GET, say) is normal here, so that notice is debug, not a warning.
 */
const notices = {
  debug: (...args: unknown[]) => logger.debug(String(args[0])),
  info: (...args: unknown[]) => logger.info(String(args[0])),
  warn: (...args: unknown[]) => (String(args[0]).startsWith('No application metrics') ? logger.debug(String(args[0])) : logger.warn(String(args[0]))),
  error: (...args: unknown[]) => logger.error(String(args[0])),
};

/** The function's Metrics instance: `logMetrics` flushes it (the cold-start metric) after each invocation. */
export const metrics = new Metrics({ namespace: namespace(), serviceName, logger: notices });

export type MetricSink = (emf: EmfOutput) => void;
const stdoutSink: MetricSink = (emf) => void process.stdout.write(JSON.stringify(emf) + '\n');
let sink: MetricSink = stdoutSink;

/**
 * Where EMF lines go: stdout (the default; Lambda and the host daemon), or a
 * function (the host-agent CLI, whose stdout carries its answer; the local
 * stack's in-process reaper). `undefined` restores stdout.
 */
export function setMetricSink(next: MetricSink | undefined): void {
  sink = next ?? stdoutSink;
}

/**
 * Emits the given metrics now, as one EMF line with `dimensions`; every metric
 * named must declare exactly those dimensions in metric-names.ts.
 */
export function emitMetrics<N extends MetricName>(dimensions: MetricDimensions<N>, values: Partial<Record<N, number>>): void {
  try {
    const m = new Metrics({ namespace: namespace(), serviceName, logger: notices });
    const dims = dimensions as Record<string, string>;
    if (Object.keys(dims).length > 0) m.addDimensions(dims);
    for (const [name, value] of Object.entries(values) as [N, number | undefined][]) {
      if (value === undefined || !Number.isFinite(value)) continue;
      const declared = metricDefinitions[name].dimensions as readonly string[];
      if (declared.length !== Object.keys(dims).length || !declared.every((d) => d in dims)) {
        logger.warn('metrics: dimensions do not match metric-names.ts; metric skipped', { metric: name, dimensions: Object.keys(dims) });
        continue;
      }
      m.addMetric(name, metricDefinitions[name].unit as (typeof MetricUnit)[keyof typeof MetricUnit], value);
    }
    if (!m.hasStoredMetrics()) return;
    sink(m.serializeMetrics());
  } catch (err) {
    // A metric must never fail the work it measures; the failure is logged, not swallowed.
    logger.error('metrics: could not emit', { err });
  }
}
