/**
 * How every Lambda handler is bundled: one definition that the stacks
 * (NodejsFunction) and scripts/bundle-report.ts (esbuild API) both read, so
 * the sizes the report prints are the sizes that deploy.
 */
import { OutputFormat, type BundlingOptions } from 'aws-cdk-lib/aws-lambda-nodejs';
import { esmRequireBanner, handlerAlias, handlerInject, handlerMainFields, handlerTarget } from './bundling';

/** NodejsFunction bundling: local esbuild (no Docker), minified ESM, SDK v3 bundled in. */
export const handlerBundling: BundlingOptions = {
  format: OutputFormat.ESM,
  target: handlerTarget,
  mainFields: handlerMainFields,
  banner: esmRequireBanner,
  inject: handlerInject,
  minify: true,
  sourceMap: true,
  // The map only has to turn stack traces into file:line; the sources themselves would double the asset.
  sourcesContent: false,
  // Bundle the SDK: the runtime's copy is a different version, and bundling only the clients we use starts faster.
  bundleAwsSDK: true,
  forceDockerBundling: false,
  // The stand-ins of bundling.ts's handlerAlias (NodejsFunction has no alias option of its own).
  esbuildArgs: { '--alias': Object.entries(handlerAlias).map(([pkg, file]) => `${pkg}=${file}`) },
};
