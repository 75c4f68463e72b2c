/**
 * Builds the whole system for one environment into a CDK app: the stateful
 * stack (tables, bucket) and the service stack that uses it, with cdk-nag's
 * AwsSolutions checks on both.
 */
import { type App, Aspects, Tags, type Environment } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { resolveEnvironment, type DeploymentEnvironment } from './environment';
import { ServiceStack } from './service-stack';
import { stackNames } from './stack-names';
import { StatefulStack } from './stateful-stack';

export { stackNames } from './stack-names';

export interface SandboxStacks {
  environment: DeploymentEnvironment;
  stateful: StatefulStack;
  service: ServiceStack;
}

/**
 * Adds both stacks of the environment named by the `env` context value.
 * Throws EnvironmentConfigError for a missing/unknown name or a bad table.
 */
export function addSandboxStacks(
  app: App,
  options: {
    /** Run cdk-nag's AwsSolutions checks. @default true */
    nag?: boolean;
    /** Account/region when cdk.json pins none. @default the CLI's (CDK_DEFAULT_ACCOUNT/CDK_DEFAULT_REGION) */
    defaultEnv?: Environment;
  } = {},
): SandboxStacks {
  const environment = resolveEnvironment(app.node.tryGetContext('env'), app.node.tryGetContext('environments'));
  const env: Environment = {
    account: environment.account ?? options.defaultEnv?.account ?? process.env.CDK_DEFAULT_ACCOUNT,
    region: environment.region ?? options.defaultEnv?.region ?? process.env.CDK_DEFAULT_REGION,
  };
  const names = stackNames(environment.name);
  const stateful = new StatefulStack(app, names.stateful, {
    stackName: names.stateful,
    env,
    environment,
    description: `Ephemeral Sandbox (${environment.name}): DynamoDB tables and the storage bucket`,
  });
  const service = new ServiceStack(app, names.service, {
    stackName: names.service,
    env,
    environment,
    tables: stateful.tables,
    bucket: stateful.storage.bucket,
    description: `Ephemeral Sandbox (${environment.name}): API, handlers, reaper schedule, sandbox hosts`,
  });
  service.addStackDependency(stateful);
  for (const stack of [stateful, service]) {
    Tags.of(stack).add('project', 'ephemeral-sandbox');
    Tags.of(stack).add('environment', environment.name);
  }
  if (options.nag ?? true) Aspects.of(app).add(new AwsSolutionsChecks({ verbose: true }));
  return { environment, stateful, service };
}
