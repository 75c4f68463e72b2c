/**
 * The esbuild options every bundle of the project is made with: the Lambda
 * handlers (the CDK stack, scripts/build.mjs, the bundle report and the IAM
 * analysis) and the host-agent CLI and daemon (scripts/build.mjs, the host
 * asset, test fixtures and benchmarks). One definition, so what is tested,
 * measured and analysed is what ships. No CDK import: `npm start` builds with it.
 */
import { join } from 'node:path';
import type { BuildOptions } from 'esbuild';
import { handlerEntry, repoRoot } from './paths';

/** ESM has no `require`; bundled CommonJS dependencies still call it. */
export const esmRequireBanner = "import { createRequire as __esCreateRequire } from 'node:module'; const require = __esCreateRequire(import.meta.url);";

const handlerTarget = 'node22';

/**
 * Modules every Lambda bundle starts with (esbuild `inject`, before the
 * handler's own imports): stack traces through the bundle's source map, read
 * only when a stack is first formatted (lambdas/shared/stack-traces.ts says why
 * not `--enable-source-maps`). The functions need no NODE_OPTIONS.
 */
const handlerInject = [join(repoRoot, 'lambdas', 'shared', 'stack-traces.ts')];
const handlerMainFields = ['module', 'main'];

/**
 * Modules the Lambda bundles replace (package -> stand-in), so cold starts do
 * not load what never runs in a function; each stand-in says why it is safe.
 * Every handler build (handlerBuildOptions, handlersBuildOptions) applies it.
 */
const handlerAlias: Record<string, string> = {
  '@aws-sdk/credential-provider-node': join(repoRoot, 'lambdas', 'shared', 'bundle-aliases', 'credential-provider-env-only.ts'),
  semver: join(repoRoot, 'lambdas', 'shared', 'bundle-aliases', 'semver-gte-only.ts'),
};

/** A Lambda handler as it deploys: minified ESM for Node 22, SDK v3 bundled in. */
export function handlerBuildOptions(entry: string, outfile: string): BuildOptions {
  return {
    entryPoints: [entry],
    outfile,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: handlerTarget,
    mainFields: handlerMainFields,
    banner: { js: esmRequireBanner },
    inject: handlerInject,
    alias: handlerAlias,
    minify: true,
    sourcemap: true,
    sourcesContent: false,
    metafile: true,
    logLevel: 'warning',
  };
}

/**
 * Several handlers in one build, each output named `name(handler)` under `outdir` (`.mjs`), with
 * handlerBuildOptions' options. One build parses the SDK once for all of them: 23 handlers in about 4 s against
 * 15 s for a build each (NodejsFunction's own bundling ran esbuild once per function), byte for byte the
 * same bundles. The deployed assets (handler-bundling.ts), scripts/build.mjs and the bundle report use it.
 */
export function handlersBuildOptions(handlers: readonly string[], outdir: string, name: (handler: string) => string): BuildOptions {
  const { entryPoints: _one, outfile: _file, ...options } = handlerBuildOptions('', '');
  return {
    ...options,
    entryPoints: Object.fromEntries(handlers.map((h) => [name(h), handlerEntry(h)])),
    outdir,
    outExtension: { '.js': '.mjs' },
  };
}

/**
 * docker-modem requires ssh2 at load time for ssh:// Docker hosts; the host
 * talks to the local socket only, and ssh2's optional native addons cannot be
 * bundled: a stand-in that refuses ssh:// takes its place.
 */
export const hostAgentAlias = { ssh2: join(repoRoot, 'host-agent', 'src', 'ssh2-stub.ts') };

/** The host-agent programs: output file name -> entry point. */
export const hostAgentPrograms = {
  /** The CLI SSM Run Command's wrapper runs when the daemon is not listening. */
  'host-agent.mjs': join(repoRoot, 'host-agent', 'src', 'cli.ts'),
  /** The systemd service. */
  'host-agent-daemon.mjs': join(repoRoot, 'host-agent', 'src', 'daemon.ts'),
} as const;

/**
 * A host-agent program (CLI or daemon) as one minified ESM file; callers add
 * `entryPoints` (or `stdin`). Node 20 is the oldest Node it runs on (the local
 * stack); hosts run Node 22.
 */
export function hostAgentBuildOptions(outfile: string): BuildOptions {
  return {
    outfile,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    mainFields: handlerMainFields,
    banner: { js: esmRequireBanner },
    minify: true,
    sourcemap: 'linked',
    alias: hostAgentAlias,
    logLevel: 'warning',
  };
}
