#!/usr/bin/env node
/**
 * The CDK app: `npx cdk synth|deploy -c env=<name>` (environments in cdk.json).
 * A missing or unknown environment stops synthesis with the valid names.
 */
import { App } from 'aws-cdk-lib';
import { EnvironmentConfigError } from '../lib/environment';
import { addSandboxStacks } from '../lib/app';

const app = new App();
try {
  addSandboxStacks(app);
} catch (err) {
  if (err instanceof EnvironmentConfigError) {
    console.error(`error: ${err.message}`);
    process.exit(1);
  }
  throw err;
}
app.synth();
