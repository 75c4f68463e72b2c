/**
 * The hosts' network: sandboxes reach the internet outbound, nothing reaches
 * them inbound. With `natGateways: 0` hosts sit in public subnets with public
 * IPs and a security group with no inbound rules (no NAT bill); with NAT
 * gateways they sit in private subnets and have no public address at all.
 */
import type { RemovalPolicy } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as logs from 'aws-cdk-lib/aws-logs';
import { Construct } from 'constructs';

export interface SandboxNetworkProps {
  /** NAT gateways (0: hosts in public subnets with no inbound rules; cost at rest is what decides). */
  readonly natGateways: number;
  /** Availability zones the VPC spans. */
  readonly maxAzs: number;
  /** What the VPC flow log records: every flow or only rejected ones. */
  readonly flowLogTrafficType: 'ALL' | 'REJECT';
  /** How long the flow log is kept. */
  readonly logRetention: logs.RetentionDays;
  /** What happens to the flow log group when the stack goes. */
  readonly removalPolicy: RemovalPolicy;
}

export class SandboxNetwork extends Construct {
  public readonly vpc: ec2.Vpc;
  /** Where the hosts go. */
  public readonly hostSubnets: ec2.SubnetSelection;
  /** True when hosts need a public IP to reach the internet (no NAT). */
  public readonly hostsNeedPublicIp: boolean;
  /** Egress-only security group of the hosts: no inbound rule, so no SSH (hosts are reached through SSM). */
  public readonly hostSecurityGroup: ec2.SecurityGroup;

  constructor(scope: Construct, id: string, props: SandboxNetworkProps) {
    super(scope, id);
    const private_ = props.natGateways > 0;
    const subnetConfiguration: ec2.SubnetConfiguration[] = [{ name: 'public', subnetType: ec2.SubnetType.PUBLIC, cidrMask: 20 }];
    if (private_) subnetConfiguration.push({ name: 'hosts', subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS, cidrMask: 20 });

    this.vpc = new ec2.Vpc(this, 'Vpc', {
      ipAddresses: ec2.IpAddresses.cidr('10.40.0.0/16'),
      maxAzs: props.maxAzs,
      natGateways: props.natGateways,
      subnetConfiguration,
      // Gateway endpoints are free and keep S3/DynamoDB traffic off the NAT (and off the internet).
      gatewayEndpoints: {
        S3: { service: ec2.GatewayVpcEndpointAwsService.S3 },
        DynamoDB: { service: ec2.GatewayVpcEndpointAwsService.DYNAMODB },
      },
      flowLogs: {
        Traffic: {
          destination: ec2.FlowLogDestination.toCloudWatchLogs(
            new logs.LogGroup(this, 'FlowLogs', { retention: props.logRetention, removalPolicy: props.removalPolicy }),
          ),
          trafficType: props.flowLogTrafficType === 'ALL' ? ec2.FlowLogTrafficType.ALL : ec2.FlowLogTrafficType.REJECT,
        },
      },
    });
    this.hostsNeedPublicIp = !private_;
    this.hostSubnets = { subnetType: private_ ? ec2.SubnetType.PRIVATE_WITH_EGRESS : ec2.SubnetType.PUBLIC };

    this.hostSecurityGroup = new ec2.SecurityGroup(this, 'HostSecurityGroup', {
      vpc: this.vpc,
      description: 'Sandbox hosts: egress only, no inbound rules (SSM reaches the agent over its outbound channel)',
      allowAllOutbound: true,
    });
  }
}
