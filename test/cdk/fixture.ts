/**
 * Synthesizes the app for one environment with cdk.json's context (the same
 * feature flags and environment table the CLI uses), once per test process.
 * Bundling is skipped here (asset placeholders): the assertions are about
 * templates; test/cdk/cdk-cli.test.ts runs the real CLI with real bundles.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { App } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { addSandboxStacks, type SandboxStacks } from '../../lib/app';
import { repoRoot } from '../../lib/paths';

export type EnvName = 'dev' | 'prod';

export function cdkJsonContext(): Record<string, unknown> {
  return (JSON.parse(readFileSync(join(repoRoot, 'cdk.json'), 'utf8')) as { context: Record<string, unknown> }).context;
}

export interface Synthesized extends SandboxStacks {
  app: App;
  stateful: SandboxStacks['stateful'];
  service: SandboxStacks['service'];
  statefulTemplate: Template;
  serviceTemplate: Template;
}

const cache = new Map<string, Synthesized>();

/** The app for `env` (nag on or off), synthesized once per process. */
export function synth(env: EnvName, options: { nag?: boolean; context?: Record<string, unknown> } = {}): Synthesized {
  const nag = options.nag ?? false;
  const key = `${env}:${nag}:${JSON.stringify(options.context ?? {})}`;
  const hit = cache.get(key);
  if (hit) return hit;
  const app = new App({
    context: { ...cdkJsonContext(), ...options.context, env, 'aws:cdk:bundling-stacks': [] },
  });
  const stacks = addSandboxStacks(app, { nag });
  const result: Synthesized = {
    app,
    ...stacks,
    statefulTemplate: Template.fromStack(stacks.stateful),
    serviceTemplate: Template.fromStack(stacks.service),
  };
  cache.set(key, result);
  return result;
}

type Resource = { Type: string; Properties?: Record<string, any>; DeletionPolicy?: string; UpdateReplacePolicy?: string; DependsOn?: unknown };

/** Resources of `type` as [logicalId, resource] pairs. */
export function resourcesOf(template: Template, type: string): [string, Resource][] {
  return Object.entries(template.findResources(type)) as [string, Resource][];
}

/** The one resource of `type`; fails if there is not exactly one. */
export function onlyResource(template: Template, type: string): Resource {
  const all = resourcesOf(template, type);
  if (all.length !== 1) throw new Error(`expected one ${type}, found ${all.length}`);
  return all[0]![1];
}

/** Renders Fn::Join / Ref / GetAtt / Fn::GetStackOutput as readable text, for string assertions. */
export function render(value: unknown): string {
  if (typeof value === 'string') return value;
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  if (Array.isArray(value)) return value.map(render).join(',');
  if (value && typeof value === 'object') {
    const v = value as Record<string, any>;
    if ('Fn::Join' in v) return (v['Fn::Join'][1] as unknown[]).map(render).join(v['Fn::Join'][0]);
    if ('Ref' in v) return `\${${v.Ref}}`;
    if ('Fn::GetAtt' in v) return `\${${(v['Fn::GetAtt'] as string[]).join('.')}}`;
    if ('Fn::Base64' in v) return render(v['Fn::Base64']);
    if ('Fn::Sub' in v) return typeof v['Fn::Sub'] === 'string' ? v['Fn::Sub'] : render(v['Fn::Sub'][0]);
    if ('Fn::GetStackOutput' in v) return `\${output:${v['Fn::GetStackOutput'].OutputName}}`;
    if ('Fn::ImportValue' in v) return `\${import:${render(v['Fn::ImportValue'])}}`;
    if ('Fn::Select' in v) return `\${select:${v['Fn::Select'][0]}:${render(v['Fn::Select'][1])}}`;
    if ('Fn::Split' in v) return `\${split:${v['Fn::Split'][0]}:${render(v['Fn::Split'][1])}}`;
    return JSON.stringify(v);
  }
  return '';
}
