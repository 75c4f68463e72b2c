/**
 * The bundled host-agent CLI and host daemon, and the wrapper SSM runs, as S3 assets. The bundles come
 * from the project's own build (scripts/build.mjs, the same esbuild options
 * the local stack runs), so `cdk synth` works on a fresh clone without a
 * separate `npm run build`; each asset is one .mjs file, uploaded as is.
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { AssetHashType, BundlingOutput, DockerImage } from 'aws-cdk-lib';
import * as s3assets from 'aws-cdk-lib/aws-s3-assets';
import { Construct } from 'constructs';
import { hostAgentDir, repoRoot } from '../paths';

let built = false;
/** Runs scripts/build.mjs once per process (both assets come from one build). */
function buildOnce(): void {
  if (built) return;
  execFileSync(process.execPath, ['--import', 'tsx', join(repoRoot, 'scripts', 'build.mjs'), '--quiet'], { cwd: repoRoot, stdio: 'inherit' });
  built = true;
}

function bundledFile(scope: Construct, id: string, file: string): s3assets.Asset {
  return new s3assets.Asset(scope, id, {
    path: hostAgentDir,
    assetHashType: AssetHashType.OUTPUT,
    bundling: {
      // Never used: local bundling always succeeds or throws; CDK requires an image for the Docker fallback.
      image: DockerImage.fromRegistry('public.ecr.aws/docker/library/node:22'),
      // CDK caches staged bundles by source path and options: the file name keeps the two assets apart.
      environment: { HOST_AGENT_BUNDLE: file },
      outputType: BundlingOutput.SINGLE_FILE,
      local: {
        tryBundle(outputDir: string): boolean {
          buildOnce();
          const source = join(repoRoot, 'dist', file);
          if (!existsSync(source)) throw new Error(`scripts/build.mjs did not produce dist/${file}`);
          copyFileSync(source, join(outputDir, file));
          return true;
        },
      },
    },
  });
}

export class HostAgentAssets extends Construct {
  /** dist/host-agent.mjs: the host-agent CLI (what the wrapper runs when the daemon is not listening). */
  public readonly cli: s3assets.Asset;
  /** dist/host-agent-daemon.mjs: the systemd service. */
  public readonly daemon: s3assets.Asset;
  /** host-agent/bin/host-agent: the shell wrapper SSM Run Command invokes (hands requests to the daemon's socket). */
  public readonly wrapper: s3assets.Asset;

  constructor(scope: Construct, id: string) {
    super(scope, id);
    this.cli = bundledFile(this, 'Cli', 'host-agent.mjs');
    this.daemon = bundledFile(this, 'Daemon', 'host-agent-daemon.mjs');
    this.wrapper = new s3assets.Asset(this, 'Wrapper', { path: join(hostAgentDir, 'bin', 'host-agent') });
  }

  get all(): s3assets.Asset[] {
    return [this.cli, this.daemon, this.wrapper];
  }
}
