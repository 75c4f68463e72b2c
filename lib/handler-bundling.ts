/**
 * How every Lambda handler is bundled: one definition that the stacks
 * (NodejsFunction) and scripts/bundle-report.ts (esbuild API) both read, so
 * the sizes the report prints are the sizes that deploy.
 */
import type { BuildOptions } from 'esbuild';
import { OutputFormat, type BundlingOptions } from 'aws-cdk-lib/aws-lambda-nodejs';

/** ESM has no `require`; bundled CommonJS dependencies still call it. */
export const esmRequireBanner =
  "import { createRequire as __esCreateRequire } from 'node:module'; const require = __esCreateRequire(import.meta.url);";

export const handlerTarget = 'node22';
export const handlerMainFields = ['module', 'main'];

/** NodejsFunction bundling: local esbuild (no Docker), minified ESM, SDK v3 bundled in. */
export const handlerBundling: BundlingOptions = {
  format: OutputFormat.ESM,
  target: handlerTarget,
  mainFields: handlerMainFields,
  banner: esmRequireBanner,
  minify: true,
  sourceMap: true,
  // The map only has to turn stack traces into file:line; the sources themselves would double the asset.
  sourcesContent: false,
  // Bundle the SDK: the runtime's copy is a different version, and bundling only the clients we use starts faster.
  bundleAwsSDK: true,
  forceDockerBundling: false,
};

/** The same bundle through esbuild's API (what NodejsFunction runs, as build options). */
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
    minify: true,
    sourcemap: true,
    sourcesContent: false,
    metafile: true,
    logLevel: 'warning',
  };
}
