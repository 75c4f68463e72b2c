/**
 * The hosts' Auto Scaling group by name. The name is fixed and derived from
 * the stack, so the functions, the host role and the EventBridge rules name
 * the group without a reference to it (no dependency cycle between the group,
 * whose hosts get the functions' settings, and the functions that call it).
 */
import { ArnFormat, Stack } from 'aws-cdk-lib';
import type { NagPackSuppression } from 'cdk-nag';
import type { Construct } from 'constructs';
import { arnPrefixPattern } from './control-plane-functions';

/** The group's name: `<stack name>-hosts`. */
export function hostGroupName(scope: Construct): string {
  return `${Stack.of(scope).stackName}-hosts`;
}

/** The group's ARN for IAM: its id part is generated when the group is made, so only the name pins it. */
export function hostGroupArn(scope: Construct, groupName: string): string {
  return Stack.of(scope).formatArn({
    service: 'autoscaling',
    resource: 'autoScalingGroup',
    resourceName: `*:autoScalingGroupName/${groupName}`,
    arnFormat: ArnFormat.COLON_RESOURCE_NAME,
  });
}

/** The cdk-nag acknowledgement of the wildcard id part of hostGroupArn. */
export function hostGroupArnSuppression(groupName: string): NagPackSuppression {
  return {
    id: 'AwsSolutions-IAM5',
    reason: "The group's ARN embeds a generated id; the name part pins it to this environment's host group.",
    appliesTo: [{ regex: `/^Resource::${arnPrefixPattern('autoscaling')}:autoScalingGroup:\\*:autoScalingGroupName\\/${groupName}$/g` }],
  };
}
