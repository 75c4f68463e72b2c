/** A small structured logger: one JSON object per line, level from LOG_LEVEL. */
const levels = { debug: 10, info: 20, warn: 30, error: 40, silent: 99 } as const;
type Level = Exclude<keyof typeof levels, 'silent'>;

function threshold(): number {
  const name = (process.env.LOG_LEVEL ?? 'info').toLowerCase() as keyof typeof levels;
  return levels[name] ?? levels.info;
}

let allToStderr = false;
/** Sends every line to stderr (the host-agent CLI, whose stdout carries exactly one answer line). */
export function logToStderrOnly(): void {
  allToStderr = true;
}

function write(level: Level, message: string, fields?: Record<string, unknown>): void {
  if (levels[level] < threshold()) return;
  const line = JSON.stringify({ level, time: new Date().toISOString(), message, ...fields }, (_k, v) =>
    v instanceof Error ? { name: v.name, message: v.message, stack: v.stack } : v,
  );
  (allToStderr || level === 'error' || level === 'warn' ? process.stderr : process.stdout).write(line + '\n');
}

export const logger = {
  debug: (m: string, f?: Record<string, unknown>) => write('debug', m, f),
  info: (m: string, f?: Record<string, unknown>) => write('info', m, f),
  warn: (m: string, f?: Record<string, unknown>) => write('warn', m, f),
  error: (m: string, f?: Record<string, unknown>) => write('error', m, f),
};
