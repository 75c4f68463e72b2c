#!/usr/bin/env node
// Bundles every Lambda handler and the host-agent into single ESM files with
// esbuild: dist/lambdas/<handler>.mjs, dist/host-agent.mjs, dist/host-agent-daemon.mjs.
// The CDK stack bundles the handlers itself (NodejsFunction, same options);
// this build is what the local stack's host runs and what bundle sizes report.
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const quiet = process.argv.includes('--quiet');

/** Options shared with the CDK stack's NodejsFunction bundling. */
export const esbuildOptions = {
  bundle: true,
  platform: 'node',
  format: 'esm',
  minify: true,
  sourcemap: 'linked',
  mainFields: ['module', 'main'],
  // ESM bundles of CommonJS dependencies need require().
  banner: { js: "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);" },
  logLevel: 'warning',
};

const handlers = [
  'health', 'create-sandbox', 'list-sandboxes', 'get-sandbox', 'exec-sandbox', 'destroy-sandbox',
  'sandbox-signal', 'sandbox-timeout', 'sandbox-power', 'reaper', 'authorizer',
];

const entries = [
  ...handlers.map((h) => ({ in: join(root, 'lambdas', `${h}.ts`), out: join(root, 'dist', 'lambdas', `${h}.mjs`), target: 'node22' })),
  { in: join(root, 'host-agent', 'src', 'cli.ts'), out: join(root, 'dist', 'host-agent.mjs'), target: 'node20', hostAgent: true },
  { in: join(root, 'host-agent', 'src', 'daemon.ts'), out: join(root, 'dist', 'host-agent-daemon.mjs'), target: 'node20', hostAgent: true },
];

/**
 * docker-modem requires ssh2 at load time for ssh:// Docker hosts; the host
 * talks to the local socket only, and ssh2's optional native addons cannot be
 * bundled: swap in a stand-in that refuses ssh://.
 */
export const hostAgentAlias = { ssh2: join(root, 'host-agent', 'src', 'ssh2-stub.ts') };

const missing = entries.filter((e) => !existsSync(e.in));
if (missing.length) {
  console.error(`build: missing entry points:\n${missing.map((e) => '  ' + e.in).join('\n')}`);
  process.exit(1);
}

const started = Date.now();
await Promise.all(
  entries.map((e) => {
    mkdirSync(dirname(e.out), { recursive: true });
    return build({
      ...esbuildOptions,
      entryPoints: [e.in],
      outfile: e.out,
      target: e.target,
      ...(e.hostAgent ? { alias: hostAgentAlias } : {}),
    });
  }),
);
if (!quiet) {
  const rows = entries.map((e) => `${(statSync(e.out).size / 1024).toFixed(0).padStart(6)} KB  ${e.out.slice(root.length + 1)}`);
  console.log(`build: ${entries.length} bundles in ${Date.now() - started} ms\n${rows.join('\n')}`);
}
