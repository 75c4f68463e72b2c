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
  // Optional native speedups of ssh2 (dockerode's SSH transport, unused here).
  external: ['cpu-features', './crypto/build/Release/sshcrypto.node'],
  logLevel: 'warning',
};

const handlers = [
  'health', 'create-sandbox', 'list-sandboxes', 'get-sandbox', 'exec-sandbox', 'destroy-sandbox',
  'sandbox-signal', 'sandbox-timeout', 'sandbox-power', 'reaper', 'authorizer',
];

const entries = [
  ...handlers.map((h) => ({ in: join(root, 'lambdas', `${h}.ts`), out: join(root, 'dist', 'lambdas', `${h}.mjs`), target: 'node22' })),
  { in: join(root, 'host-agent', 'src', 'cli.ts'), out: join(root, 'dist', 'host-agent.mjs'), target: 'node20' },
  { in: join(root, 'host-agent', 'src', 'daemon.ts'), out: join(root, 'dist', 'host-agent-daemon.mjs'), target: 'node20' },
];

const missing = entries.filter((e) => !existsSync(e.in));
if (missing.length) {
  console.error(`build: missing entry points:\n${missing.map((e) => '  ' + e.in).join('\n')}`);
  process.exit(1);
}

const started = Date.now();
await Promise.all(
  entries.map((e) => {
    mkdirSync(dirname(e.out), { recursive: true });
    return build({ ...esbuildOptions, entryPoints: [e.in], outfile: e.out, target: e.target });
  }),
);
if (!quiet) {
  const rows = entries.map((e) => `${(statSync(e.out).size / 1024).toFixed(0).padStart(6)} KB  ${e.out.slice(root.length + 1)}`);
  console.log(`build: ${entries.length} bundles in ${Date.now() - started} ms\n${rows.join('\n')}`);
}
