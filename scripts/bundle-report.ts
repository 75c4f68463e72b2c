/**
 * Bundles every Lambda handler exactly as the CDK stack does (minified ESM,
 * node22, SDK v3 bundled; options from lib/handler-bundling.ts) and prints
 * each bundle's size.
 *
 *   npx tsx scripts/bundle-report.ts              # table
 *   npx tsx scripts/bundle-report.ts --markdown   # table for the README
 *   npx tsx scripts/bundle-report.ts --json       # machine-readable
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { backgroundHandlerNames, handlerNames } from '../lambdas/shared/routes';
import { bundleHandlers, type HandlerBundle } from '../lib/bundle-analysis';

const kb = (bytes: number) => (bytes / 1024).toFixed(0);

function clientsOf(b: HandlerBundle): string {
  return [...new Set(b.sdkOperations.map((op) => op.split(':')[0]))].join(', ') || '-';
}

function table(bundles: HandlerBundle[], markdown: boolean): string {
  const header = ['handler', 'bundle KB', 'gzip KB', 'source map KB', 'SDK clients'];
  const rows = bundles.map((b) => [b.handler, kb(b.bytes), kb(b.gzipBytes), kb(b.sourceMapBytes), clientsOf(b)]);
  const total = bundles.reduce((sum, b) => sum + b.bytes, 0);
  if (markdown) {
    return [
      `| ${header.join(' | ')} |`,
      `|${header.map((_, i) => (i === 0 || i === 4 ? '---' : '---:')).join('|')}|`,
      ...rows.map((r) => `| ${r.join(' | ')} |`),
    ].join('\n');
  }
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 || i === 4 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [line(header), ...rows.map(line), '', `${bundles.length} handlers, ${kb(total)} KB in total`].join('\n');
}

async function main(): Promise<void> {
  const args = new Set(process.argv.slice(2));
  const unknown = [...args].filter((a) => !['--json', '--markdown'].includes(a));
  if (unknown.length > 0) {
    console.error(`bundle-report: unknown argument ${unknown.join(' ')} (use --json or --markdown)`);
    process.exit(2);
  }
  const outDir = mkdtempSync(join(tmpdir(), 'bundle-report-'));
  try {
    const bundles = await bundleHandlers([...handlerNames, ...backgroundHandlerNames], outDir);
    if (args.has('--json')) console.log(JSON.stringify(bundles, null, 2));
    else console.log(table(bundles, args.has('--markdown')));
  } finally {
    rmSync(outDir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(`bundle-report: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
