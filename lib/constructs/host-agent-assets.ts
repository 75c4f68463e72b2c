/**
 * The bundled host-agent CLI and host daemon, and the wrapper SSM runs, as S3 assets. The two programs are built
 * in the synthesizing process with the options scripts/build.mjs and the local stack use (handler-bundling.ts),
 * so `cdk synth` works on a fresh clone without a separate `npm run build`; each is one .mjs file, uploaded as is.
 */
import { join } from 'node:path';
import * as s3assets from 'aws-cdk-lib/aws-s3-assets';
import { Construct } from 'constructs';
import { hostAgentProgramAsset } from '../handler-bundling';
import { hostAgentDir } from '../paths';

export class HostAgentAssets extends Construct {
  /** dist/host-agent.mjs: the host-agent CLI (what the wrapper runs when the daemon is not listening). */
  public readonly cli: s3assets.Asset;
  /** dist/host-agent-daemon.mjs: the systemd service. */
  public readonly daemon: s3assets.Asset;
  /** host-agent/bin/host-agent: the shell wrapper SSM Run Command invokes (hands requests to the daemon's socket). */
  public readonly wrapper: s3assets.Asset;

  constructor(scope: Construct, id: string) {
    super(scope, id);
    this.cli = hostAgentProgramAsset(this, 'Cli', 'host-agent.mjs');
    this.daemon = hostAgentProgramAsset(this, 'Daemon', 'host-agent-daemon.mjs');
    this.wrapper = new s3assets.Asset(this, 'Wrapper', { path: join(hostAgentDir, 'bin', 'host-agent') });
  }

  get all(): s3assets.Asset[] {
    return [this.cli, this.daemon, this.wrapper];
  }
}
