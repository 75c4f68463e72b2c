/**
 * The code the stacks deploy, bundled in the process that synthesizes them: every Lambda handler in one esbuild
 * build (bundling.ts handlersBuildOptions, which scripts/build.mjs and the bundle report use too), and the
 * host-agent programs with hostAgentBuildOptions (what scripts/build.mjs and the local stack run). Each is made the
 * first time `cdk synth` asks for an asset and held in memory; an asset is its file(s) from that build. Nothing is
 * written outside the assets' own folders, and a synth skipped for bundling (`aws:cdk:bundling-stacks`) builds
 * nothing.
 */
import { writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { AssetHashType, BundlingOutput, DockerImage } from 'aws-cdk-lib';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as s3assets from 'aws-cdk-lib/aws-s3-assets';
import type { Construct } from 'constructs';
import { type BuildOptions, buildSync } from 'esbuild';
import { backgroundHandlerNames, handlerNames } from '../lambdas/shared/routes';
import { handlersBuildOptions, hostAgentBuildOptions, hostAgentPrograms } from './bundling';
import { hostAgentDir, repoRoot } from './paths';

/** Never used: local bundling always succeeds or throws, but CDK requires an image for its Docker fallback. */
const unusedImage = DockerImage.fromRegistry('public.ecr.aws/docker/library/node:22');

/** A build's output files by their path under `outdir`, built once per process (esbuild's synchronous API: CDK bundles synchronously). */
function builtOnce(options: () => BuildOptions, outdir: string): () => Map<string, Uint8Array> {
  let files: Map<string, Uint8Array> | undefined;
  return () => {
    if (!files) {
      const result = buildSync({ ...options(), write: false, metafile: false });
      files = new Map(result.outputFiles.map((f) => [f.path.slice(outdir.length + 1), f.contents]));
    }
    return files;
  };
}

/**
 * Where the handler bundles would sit: two levels below the repository, as they did under cdk.out with
 * NodejsFunction's own bundling, so the maps name sources `../../lambdas/...` wherever `cdk synth -o` writes.
 */
const handlerOutdir = join(repoRoot, 'cdk.out');
const handlerBundles = builtOnce(() => handlersBuildOptions([...handlerNames, ...backgroundHandlerNames], handlerOutdir, (h) => `${h}/index`), handlerOutdir);

/** Handler `name`'s code: `index.mjs` (the function's handler is `index.handler`) and its source map. */
export function handlerCode(name: string): lambda.Code {
  return lambda.Code.fromAsset(join(repoRoot, 'lambdas'), {
    assetHashType: AssetHashType.OUTPUT,
    bundling: {
      image: unusedImage,
      // CDK caches staged bundles by source path and options: the handler's name keeps the assets apart.
      environment: { HANDLER: name },
      local: {
        tryBundle(outputDir: string): boolean {
          for (const file of ['index.mjs', 'index.mjs.map']) {
            const contents = handlerBundles().get(`${name}/${file}`);
            if (!contents) throw new Error(`the handler build produced no ${name}/${file}`);
            writeFileSync(join(outputDir, file), contents);
          }
          return true;
        },
      },
    },
  });
}

const hostAgentOutdir = join(repoRoot, 'dist');
const hostAgentBundles = builtOnce(() => {
  const { outfile: _one, ...options } = hostAgentBuildOptions('');
  return {
    ...options,
    entryPoints: Object.fromEntries(Object.entries(hostAgentPrograms).map(([file, entry]) => [basename(file, '.mjs'), entry])),
    outdir: hostAgentOutdir,
    outExtension: { '.js': '.mjs' },
  };
}, hostAgentOutdir);

/** A host-agent program (`host-agent.mjs` or `host-agent-daemon.mjs`) as an S3 asset: the one .mjs file, uploaded as is. */
export function hostAgentProgramAsset(scope: Construct, id: string, file: keyof typeof hostAgentPrograms): s3assets.Asset {
  return new s3assets.Asset(scope, id, {
    path: hostAgentDir,
    assetHashType: AssetHashType.OUTPUT,
    bundling: {
      image: unusedImage,
      environment: { HOST_AGENT_BUNDLE: file },
      outputType: BundlingOutput.SINGLE_FILE,
      local: {
        tryBundle(outputDir: string): boolean {
          const contents = hostAgentBundles().get(file);
          if (!contents) throw new Error(`the host-agent build produced no ${file}`);
          writeFileSync(join(outputDir, file), contents);
          return true;
        },
      },
    },
  });
}
