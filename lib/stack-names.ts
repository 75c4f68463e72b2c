/**
 * Stack names: `EphemeralSandbox-<env>-Stateful` and `EphemeralSandbox-<env>-Service`.
 * A module of its own so the admin tools (bin/keys.ts, bundled into `sbx keys`)
 * name a stage's stacks without loading the CDK.
 */
export function stackNames(envName: string): { stateful: string; service: string } {
  return { stateful: `EphemeralSandbox-${envName}-Stateful`, service: `EphemeralSandbox-${envName}-Service` };
}
