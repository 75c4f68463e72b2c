/**
 * First-boot setup of a sandbox host (Amazon Linux 2023), as user data:
 * Docker, Node 22 and mountpoint-s3 from their official sources, the bundled
 * host-agent from S3, the sandbox image from ECR, the host daemon as a systemd
 * unit, then the launch lifecycle hook is completed so Auto Scaling only puts
 * a host in service once it can run sandboxes (a failed setup is abandoned
 * and replaced).
 */
import * as ec2 from 'aws-cdk-lib/aws-ec2';

export interface HostUserDataProps {
  /** The region the hosts run in (AWS CLI calls and the ECR registry). */
  readonly region: string;
  /** The hosts' CPU architecture (which packages the user data installs). */
  readonly architecture: ec2.InstanceArchitecture;
  /** Values written to /etc/ephemeral-sandbox/host.env (tables, bucket, slots, image...). */
  readonly hostEnv: Record<string, string>;
  /** s3://bucket/key of the bundled host-agent CLI and daemon. */
  readonly hostAgentS3Url: string;
  /** s3://bucket/key of the bundled host daemon (run by its systemd service). */
  readonly hostDaemonS3Url: string;
  /** s3://bucket/key of host-agent/bin/host-agent (the wrapper that talks to the daemon's socket). */
  readonly hostAgentWrapperS3Url: string;
  /** The sandbox image the host pulls before its launch-ready check. */
  readonly sandboxImageUri: string;
  /** Registry host of the sandbox image (account.dkr.ecr.region.amazonaws.com). */
  readonly sandboxImageRegistry: string;
  /** The group whose launch lifecycle action the user data completes. */
  readonly autoScalingGroupName: string;
  /** The launch lifecycle hook completed with CONTINUE only when the launch-ready check passes. */
  readonly launchHookName: string;
  /** The SSM agent's Mds.CommandWorkersLimit (commands it runs at once; 5 by default). */
  readonly ssmCommandWorkers: number;
  /** Block device name of the sandbox state volume (formatted ext4, mounted at stateDir). */
  readonly stateDevice: string;
}

const installDir = '/opt/ephemeral-sandbox';
/** Sandbox state on the host (STATE_DIR's default): homes' file systems, kept /tmp archives, policies. */
const stateDir = '/var/lib/ephemeral-sandbox';
/** File system label of the state volume (fstab mounts it by label: NVMe device names are not stable). */
const stateVolumeLabel = 'sbx-state';
const hostEnvFile = '/etc/ephemeral-sandbox/host.env';
const ssmAgentConfigFile = '/etc/amazon/ssm/amazon-ssm-agent.json';
const hostDaemonUnit = 'ephemeral-sandbox-host.service';
const hostReadyUnit = 'ephemeral-sandbox-ready.service';
/** AL2023 installs Node majors side by side; the versioned binary never changes under us. */
const hostNode = '/usr/bin/node-22';

/** Official mountpoint-s3 RPM for the host architecture. */
function mountpointRpmUrl(architecture: ec2.InstanceArchitecture): string {
  const arch = architecture === ec2.InstanceArchitecture.ARM_64 ? 'arm64' : 'x86_64';
  return `https://s3.amazonaws.com/mountpoint-s3-release/latest/${arch}/mount-s3.rpm`;
}

function heredoc(path: string, mode: string, body: string): string[] {
  return [`install -D -m ${mode} /dev/null ${path}`, `cat > ${path} <<'EPHEMERAL_SANDBOX_EOF'`, body, 'EPHEMERAL_SANDBOX_EOF'];
}

/** The user data script (bash), with CloudFormation tokens for names and URIs. */
export function hostUserData(props: HostUserDataProps): ec2.UserData {
  const userData = ec2.UserData.forLinux({ shebang: '#!/bin/bash' });
  const envLines = Object.entries({ ...props.hostEnv })
    .map(([k, v]) => `${k}=${v}`)
    .join('\n');

  const readyScript = [
    '#!/bin/bash',
    '# Completes the launch lifecycle hook once this host can run sandboxes. Runs on every boot:',
    '# the first boot (after setup) and when a warm-pool instance is started to go in service.',
    'set -uo pipefail',
    `set -a; . ${hostEnvFile}; set +a`,
    '# CONTINUE only when the host proves it can run a sandbox (host-agent/src/launch-ready.ts): the daemon answers,',
    '# the image is pulled, a hardened container starts, runs a command and is removed. Anything else: ABANDON.',
    'imds_token=$(curl -sf -X PUT http://169.254.169.254/latest/api/token -H "X-aws-ec2-metadata-token-ttl-seconds: 60")',
    'target=$(curl -sf -H "X-aws-ec2-metadata-token: $imds_token" http://169.254.169.254/latest/meta-data/autoscaling/target-lifecycle-state || echo InService)',
    'case "$target" in Warmed:*) mode=--warm-pool ;; *) mode= ;; esac',
    `if check=$(${installDir}/bin/host-agent launch-ready $mode); then`,
    '  result=CONTINUE; echo "launch-ready: $check"',
    'else',
    '  result=ABANDON; echo "launch-ready check failed, abandoning this host: $check"',
    'fi',
    `out=$(aws autoscaling complete-lifecycle-action --region "$AWS_REGION" --auto-scaling-group-name "$AUTO_SCALING_GROUP_NAME" --lifecycle-hook-name "$LAUNCH_LIFECYCLE_HOOK" --instance-id "$HOST_ID" --lifecycle-action-result "$result" 2>&1)`,
    'status=$?',
    '# A reboot outside a scaling event has no pending action: nothing to complete.',
    'if [ $status -ne 0 ] && ! grep -q "No active Lifecycle Action" <<<"$out"; then echo "complete-lifecycle-action failed: $out"; exit 1; fi',
    'echo "launch lifecycle action: $result"',
  ].join('\n');

  const agentCommand = [
    '#!/bin/sh',
    "# What SSM Run Command invokes (HOST_AGENT_COMMAND): the project's wrapper, told where Node 22 and the CLI bundle are.",
    `NODE_BINARY=${hostNode} HOST_AGENT_BUNDLE=${installDir}/host-agent.mjs exec ${installDir}/libexec/host-agent "$@"`,
  ].join('\n');

  const daemonUnit = [
    '[Unit]',
    'Description=Ephemeral Sandbox host daemon (registration, heartbeats, reconciliation)',
    'After=docker.service network-online.target',
    'Requires=docker.service',
    'Wants=network-online.target',
    '',
    '[Service]',
    `EnvironmentFile=${hostEnvFile}`,
    `ExecStart=${hostNode} --enable-source-maps ${installDir}/host-agent-daemon.mjs`,
    'Restart=always',
    'RestartSec=5',
    '',
    '[Install]',
    'WantedBy=multi-user.target',
  ].join('\n');

  const readyUnit = [
    '[Unit]',
    'Description=Ephemeral Sandbox: tell Auto Scaling this host is ready',
    `After=docker.service ${hostDaemonUnit} network-online.target`,
    'Wants=network-online.target',
    '',
    '[Service]',
    'Type=oneshot',
    `ExecStart=${installDir}/bin/lifecycle-ready`,
    '',
    '[Install]',
    'WantedBy=multi-user.target',
  ].join('\n');

  // The SSM agent runs 5 documents at once by default and queues the rest: a host needs more.
  // Its Run Command logs hold command text only (ids, never a caller's data); keep them a day, not two weeks.
  const ssmAgentConfig = JSON.stringify({
    Mds: { CommandWorkersLimit: props.ssmCommandWorkers },
    Ssm: { RunCommandLogsRetentionDurationHours: 24 },
  });

  const dockerDaemon = JSON.stringify({
    // No traffic between containers on the default bridge; the host-agent's own network sets the same.
    icc: false,
    'live-restore': true,
    'log-driver': 'json-file',
    'log-opts': { 'max-size': '10m', 'max-file': '3' },
  });

  userData.addCommands(
    'set -euo pipefail',
    '# Output goes to /var/log/cloud-init-output.log (and the console) through cloud-init.',
    '# cloud-init may run this without HOME; the AWS CLI and Docker (ECR credential helper config) read it.',
    'export HOME=/root',
    `REGION=${props.region}`,
    `ASG_NAME=${props.autoScalingGroupName}`,
    `LAUNCH_HOOK=${props.launchHookName}`,
    'imds_token() { curl -sf -X PUT http://169.254.169.254/latest/api/token -H "X-aws-ec2-metadata-token-ttl-seconds: 300"; }',
    'imds() { curl -sf -H "X-aws-ec2-metadata-token: $(imds_token)" "http://169.254.169.254/latest/meta-data/$1"; }',
    'INSTANCE_ID=$(imds instance-id)',
    '# Any failure: tell Auto Scaling to replace this host instead of waiting for the hook timeout.',
    `trap 'echo "host setup failed at line $LINENO"; aws autoscaling complete-lifecycle-action --region "$REGION" --auto-scaling-group-name "$ASG_NAME" --lifecycle-hook-name "$LAUNCH_HOOK" --instance-id "$INSTANCE_ID" --lifecycle-action-result ABANDON || true' ERR`,
    'retry() { local n=0; until "$@"; do n=$((n+1)); [ $n -ge 5 ] && return 1; echo "retrying ($n): $*"; sleep $((n*5)); done; }',

    '# Packages: Docker, Node 22 and the ECR credential helper from the AL2023 repositories; mountpoint-s3 from its official release bucket.',
    '# conntrack-tools: the egress proxy reads original destinations with it where the kernel has no /proc/net/nf_conntrack;',
    '# e2fsprogs and util-linux (mkfs.ext4, fallocate, mount): each sandbox home is a loop-mounted ext4 file system.',
    'retry dnf install -y docker nodejs22 amazon-ecr-credential-helper conntrack-tools e2fsprogs util-linux',
    `retry dnf install -y ${mountpointRpmUrl(props.architecture)}`,

    ...heredoc(ssmAgentConfigFile, '0600', ssmAgentConfig),
    'systemctl restart amazon-ssm-agent',
    '# The sandbox state volume: ext4, made once (a rebooted or warm-pool host keeps it), mounted by label.',
    `for _ in $(seq 1 60); do for dev in ${props.stateDevice} ${props.stateDevice.replace('/dev/sd', '/dev/xvd')}; do [ -b "$dev" ] && STATE_DEV=$dev && break 2; done; sleep 1; done`,
    `[ -n "\${STATE_DEV:-}" ] || { echo "the state volume ${props.stateDevice} did not appear"; false; }`,
    `blkid -L ${stateVolumeLabel} >/dev/null 2>&1 || mkfs.ext4 -q -L ${stateVolumeLabel} -m 0 "$STATE_DEV"`,
    `install -d -m 0755 ${stateDir}`,
    `grep -q 'LABEL=${stateVolumeLabel} ' /etc/fstab || echo 'LABEL=${stateVolumeLabel} ${stateDir} ext4 defaults,noatime,nofail 0 2' >> /etc/fstab`,
    `mountpoint -q ${stateDir} || mount ${stateDir}`,

    ...heredoc('/etc/docker/daemon.json', '0644', dockerDaemon),
    ...heredoc('/root/.docker/config.json', '0600', JSON.stringify({ credHelpers: { [props.sandboxImageRegistry]: 'ecr-login' } })),
    'systemctl enable --now docker',

    '# The host-agent CLI and the host daemon (bundled by scripts/build.mjs), and the wrapper SSM runs.',
    `install -d -m 0755 ${installDir}/bin ${installDir}/libexec /etc/ephemeral-sandbox`,
    `retry aws s3 cp --region "$REGION" --only-show-errors ${props.hostAgentS3Url} ${installDir}/host-agent.mjs`,
    `retry aws s3 cp --region "$REGION" --only-show-errors ${props.hostDaemonS3Url} ${installDir}/host-agent-daemon.mjs`,
    `retry aws s3 cp --region "$REGION" --only-show-errors ${props.hostAgentWrapperS3Url} ${installDir}/libexec/host-agent`,
    `chmod 0755 ${installDir}/libexec/host-agent`,
    ...heredoc(hostEnvFile, '0640', envLines),
    `echo "HOST_ID=$INSTANCE_ID" >> ${hostEnvFile}`,
    ...heredoc(`${installDir}/bin/host-agent`, '0755', agentCommand),
    ...heredoc(`${installDir}/bin/lifecycle-ready`, '0755', readyScript),
    ...heredoc(`/etc/systemd/system/${hostDaemonUnit}`, '0644', daemonUnit),
    ...heredoc(`/etc/systemd/system/${hostReadyUnit}`, '0644', readyUnit),

    '# Pull the sandbox image now so the first create does not wait for it.',
    `retry docker pull ${props.sandboxImageUri}`,

    'systemctl daemon-reload',
    `systemctl enable ${hostDaemonUnit} ${hostReadyUnit}`,
    '# A warm-pool instance is stopped after setup: its daemon starts (and registers) when it is started to go in service.',
    'case "$(imds autoscaling/target-lifecycle-state || echo InService)" in',
    '  Warmed:*) echo "launching into the warm pool: daemon enabled, not started" ;;',
    `  *) systemctl start ${hostDaemonUnit} ;;`,
    'esac',
    'trap - ERR',
    `systemctl start ${hostReadyUnit}`,
    'echo "host setup complete"',
  );
  return userData;
}
