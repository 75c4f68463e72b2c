/**
 * What the local stack's parts print, read as CloudWatch Logs would: each
 * line of a handler's worker, of the host daemon, and of the stack's own
 * in-process work (the reaper) is passed on to this process's output, and
 * the Embedded Metric Format lines among them become metric records that
 * tests read in order (EMF lines are printed only at debug level: they are
 * for CloudWatch, not for a person at `npm start`).
 */
import type { EmfOutput } from '@aws-lambda-powertools/metrics/types';

/** One metric datapoint, as CloudWatch would extract it from an EMF line. */
export interface MetricRecord {
  /** Who wrote it: a function name, `host-daemon`, or `stack`. */
  source: string;
  namespace: string;
  name: string;
  value: number;
  unit: string;
  dimensions: Record<string, string>;
  /** Order of arrival, from 1. */
  seq: number;
}

type Emf = { _aws?: { CloudWatchMetrics?: { Namespace?: string; Dimensions?: string[][]; Metrics?: { Name: string; Unit?: string }[] }[] } } & Record<
  string,
  unknown
>;

export class LocalTelemetry {
  readonly metrics: MetricRecord[] = [];
  private readonly listeners = new Set<(m: MetricRecord) => void>();

  constructor(private readonly o: { printEmf?: boolean } = {}) {}

  /** A line `source` wrote on `stream`: printed as before, and read for metrics when it is EMF. */
  line(source: string, stream: 'stdout' | 'stderr', text: string): void {
    const emf = parseEmf(text);
    if (emf) this.add(source, emf);
    if (emf && !this.o.printEmf) return;
    (stream === 'stderr' ? process.stderr : process.stdout).write(text + '\n');
  }

  /** A writable's worth of lines (a child's stdout), split as they come. */
  lines(source: string, stream: 'stdout' | 'stderr'): (chunk: Buffer | string) => void {
    let partial = '';
    return (chunk) => {
      const parts = (partial + chunk.toString()).split('\n');
      partial = parts.pop() ?? '';
      for (const p of parts) if (p !== '') this.line(source, stream, p);
    };
  }

  /** An EMF object written in this process (the metric sink of lambdas/shared/metrics.ts). */
  add(source: string, emf: EmfOutput | Emf): void {
    const e = emf as Emf;
    for (const directive of e._aws?.CloudWatchMetrics ?? []) {
      const dimensionNames = directive.Dimensions?.[0] ?? [];
      const dimensions = Object.fromEntries(dimensionNames.map((d) => [d, String(e[d])]));
      for (const m of directive.Metrics ?? []) {
        const raw = e[m.Name];
        for (const value of Array.isArray(raw) ? raw : [raw]) {
          if (typeof value !== 'number') continue;
          const record: MetricRecord = {
            source,
            namespace: directive.Namespace ?? '',
            name: m.Name,
            value,
            unit: m.Unit ?? 'None',
            dimensions,
            seq: this.metrics.length + 1,
          };
          this.metrics.push(record);
          for (const l of this.listeners) l(record);
        }
      }
    }
  }

  /** The first metric (recorded or still to come) matching `match`, or a rejection after `timeoutMs`. */
  waitFor(match: (m: MetricRecord) => boolean, timeoutMs = 30_000): Promise<MetricRecord> {
    const seen = this.metrics.find(match);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.listeners.delete(listener);
        reject(new Error(`no matching metric within ${timeoutMs} ms (recorded: ${[...new Set(this.metrics.map((m) => m.name))].join(', ') || 'none'})`));
      }, timeoutMs);
      const listener = (m: MetricRecord) => {
        if (!match(m)) return;
        clearTimeout(timer);
        this.listeners.delete(listener);
        resolve(m);
      };
      this.listeners.add(listener);
    });
  }
}

/** The EMF object in `line`, or undefined when it is any other line. */
function parseEmf(line: string): Emf | undefined {
  if (!line.startsWith('{') || !line.includes('"_aws"')) return undefined;
  try {
    const value = JSON.parse(line) as Emf;
    return Array.isArray(value._aws?.CloudWatchMetrics) ? value : undefined;
  } catch {
    return undefined;
  }
}
