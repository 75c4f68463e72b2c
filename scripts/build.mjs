#!/usr/bin/env node
// Bundles every Lambda handler and the host-agent into single ESM files with
// esbuild: dist/lambdas/<handler>.mjs, dist/host-agent.mjs, dist/host-agent-daemon.mjs;
// writes the OpenAPI document to docs/openapi.json and builds the SDK (sdk/dist).
// The options come from lib/bundling.ts, which the CDK stack, the bundle report
// and the IAM analysis read too. Run with the tsx loader (it imports TypeScript):
//   node --import tsx scripts/build.mjs [--quiet]
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { esmRequireBanner, handlersBuildOptions, hostAgentBuildOptions, hostAgentPrograms } from '../lib/bundling.ts';
import { backgroundHandlerNames, handlerNames } from '../lambdas/shared/routes.ts';
import { openApiDocument } from '../lambdas/shared/openapi.ts';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const quiet = process.argv.includes('--quiet');

const handlers = [...handlerNames, ...backgroundHandlerNames];
const handlerDir = join(root, 'dist', 'lambdas');
const entries = [
  // Every handler in one build (lib/bundling.ts says why), as the deployed assets are made.
  {
    in: handlers.map((h) => join(root, 'lambdas', `${h}.ts`)),
    out: handlers.map((h) => join(handlerDir, `${h}.mjs`)),
    options: () => ({ ...handlersBuildOptions(handlers, handlerDir, (h) => h), metafile: false }),
  },
  ...Object.entries(hostAgentPrograms).map(([out, entry]) => ({
    in: entry,
    out: join(root, 'dist', out),
    options: (outfile) => ({ ...hostAgentBuildOptions(outfile), entryPoints: [entry] }),
  })),
];

// The SDK (sdk/, an npm workspace): ESM for Node 20+, no dependencies; the sbx bin with its shebang.
const sdkEntries = [
  ['index.ts', 'index.js', {}],
  ['bin.ts', 'cli.js', { banner: { js: '#!/usr/bin/env node' } }],
].map(([src, out, extra]) => ({
  in: join(root, 'sdk', 'src', src),
  out: join(root, 'sdk', 'dist', out),
  options: (outfile) => ({
    entryPoints: [join(root, 'sdk', 'src', src)],
    outfile,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    logLevel: 'warning',
    ...extra,
  }),
}));
entries.push(...sdkEntries);
// `sbx keys`: the key administration of bin/keys.ts (DynamoDB, API Gateway, CloudFormation clients
// bundled in), a file of its own that the CLI loads only for that command, so neither the SDK nor
// the other commands carry the AWS SDK.
entries.push({
  in: join(root, 'bin', 'keys.ts'),
  out: join(root, 'sdk', 'dist', 'keys.js'),
  options: (outfile) => ({
    entryPoints: [join(root, 'bin', 'keys.ts')],
    outfile,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    minify: true,
    mainFields: ['module', 'main'],
    banner: { js: esmRequireBanner },
    logLevel: 'warning',
  }),
});

const missing = entries.flatMap((e) => [e.in].flat()).filter((f) => !existsSync(f));
if (missing.length) {
  console.error(`build: missing entry points:\n${missing.map((f) => '  ' + f).join('\n')}`);
  process.exit(1);
}

const started = Date.now();
// The document for the default limits (a deployment serves its own at GET /openapi.json); written only when it changed.
const openApiPath = join(root, 'docs', 'openapi.json');
const openApi = JSON.stringify(openApiDocument(), null, 2) + '\n';
if (!existsSync(openApiPath) || readFileSync(openApiPath, 'utf8') !== openApi) writeFileSync(openApiPath, openApi);

await Promise.all(
  entries.map((e) => {
    mkdirSync(dirname([e.out].flat()[0]), { recursive: true });
    return build(e.options(e.out));
  }),
);
chmodSync(join(root, 'sdk', 'dist', 'cli.js'), 0o755);
// The SDK's type declarations (tsc), when a source is newer than them.
const sdkSrc = join(root, 'sdk', 'src');
const declarations = join(root, 'sdk', 'dist', 'index.d.ts');
const newest = Math.max(...readdirSync(sdkSrc).map((f) => statSync(join(sdkSrc, f)).mtimeMs), statSync(join(root, 'sdk', 'tsconfig.json')).mtimeMs);
if (!existsSync(declarations) || statSync(declarations).mtimeMs < newest) {
  execFileSync(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(root, 'sdk', 'tsconfig.json')], { stdio: 'inherit' });
}
if (!quiet) {
  const outputs = entries.flatMap((e) => [e.out].flat());
  const rows = outputs.map((f) => `${(statSync(f).size / 1024).toFixed(0).padStart(6)} KB  ${f.slice(root.length + 1)}`);
  console.log(`build: ${outputs.length} bundles in ${Date.now() - started} ms\n${rows.join('\n')}`);
}
