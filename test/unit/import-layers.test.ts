/**
 * The layers of the source tree, checked on every import specifier (static,
 * re-export, side-effect, dynamic, require): the control plane and the hosts
 * share only contract/, so neither tier imports the other's code and there is
 * no cycle between them (host-agent/ may use lambdas/shared, never the other
 * way); contract/ stands on node builtins and zod alone; the SDK is a package
 * of its own and imports nothing outside sdk/.
 */
import assert from 'node:assert/strict';
import { builtinModules } from 'node:module';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { describe, it } from 'node:test';
import ts from 'typescript';
import { repoRoot } from '../../lib/paths';

interface SourceFile {
  /** Relative to the repository root, with `/`. */
  path: string;
  text: string;
}

interface Layer {
  /** Files under this folder follow the rule. */
  folder: string;
  /** Why, for the failure message. */
  rule: string;
  /** The problem with an import that resolves to `target` (a path from the root) or names package `target`; undefined when allowed. */
  refuses(target: { path: string } | { package: string }): string | undefined;
}

const builtins = new Set(builtinModules);
const isBuiltin = (name: string) => name.startsWith('node:') || builtins.has(name);
const under = (path: string, folder: string) => path === folder || path.startsWith(`${folder}/`);

/** Packages contract/ may use: small, and bundled by both tiers anyway. */
const contractPackages = new Set(['zod']);

const layers: readonly Layer[] = [
  {
    folder: 'lambdas',
    rule: 'the control plane reaches hosts through contract/, never host-agent/',
    refuses: (t) => ('path' in t && under(t.path, 'host-agent') ? 'imports host-agent/' : undefined),
  },
  {
    folder: 'contract',
    rule: 'contract/ is what both tiers import, so it imports neither: only contract/, node builtins, zod and the version in package.json',
    refuses: (t) => {
      if ('package' in t) return isBuiltin(t.package) || contractPackages.has(t.package) ? undefined : `imports package ${t.package}`;
      if (under(t.path, 'contract') || t.path === 'package.json') return undefined;
      return `imports ${t.path}, outside contract/`;
    },
  },
  {
    folder: 'sdk/src',
    rule: 'the SDK is published on its own, without dependencies: only sdk/ and node builtins',
    refuses: (t) => {
      if ('package' in t) return isBuiltin(t.package) ? undefined : `imports package ${t.package}`;
      return under(t.path, 'sdk') ? undefined : `imports ${t.path}, outside sdk/`;
    },
  },
];

/** Every specifier a TypeScript or JavaScript file imports, dynamic imports and requires with a literal included. */
function specifiersOf(file: SourceFile): string[] {
  return ts.preProcessFile(file.text, true, true).importedFiles.map((f) => f.fileName);
}

/** `../x/y.ts` from `a/b/c.ts` -> `a/x/y` (extension dropped: bundler resolution names modules either way). */
function targetOf(from: string, specifier: string): { path: string } | { package: string } {
  if (!specifier.startsWith('.') && !specifier.startsWith('/')) {
    const parts = specifier.split('/');
    return { package: specifier.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0]! };
  }
  const absolute = resolve(repoRoot, dirname(from), specifier);
  return {
    path: relative(repoRoot, absolute)
      .split(sep)
      .join('/')
      .replace(/\.(?:[cm]?[jt]s)$/, ''),
  };
}

/** `file: import 'x' (why)` for each import that breaks its file's layer rule. */
function layerViolations(files: readonly SourceFile[]): string[] {
  const found: string[] = [];
  for (const file of files) {
    for (const layer of layers.filter((l) => under(file.path, l.folder))) {
      for (const specifier of specifiersOf(file)) {
        const problem = layer.refuses(targetOf(file.path, specifier));
        if (problem) found.push(`${file.path}: import '${specifier}' ${problem} (${layer.rule})`);
      }
    }
  }
  return found;
}

function sourcesUnder(folder: string): SourceFile[] {
  const entries = readdirSync(join(repoRoot, folder), { recursive: true, encoding: 'utf8' });
  return entries
    .filter((p) => /\.(?:[cm]?[jt]s)$/.test(p) && !p.split(sep).includes('node_modules') && !p.split(sep).includes('dist'))
    .map((p) => {
      const path = `${folder}/${p.split(sep).join('/')}`;
      return { path, text: readFileSync(join(repoRoot, path), 'utf8') };
    });
}

describe('import layers', () => {
  it('finds no import across a layer in lambdas/, contract/ or sdk/src/', () => {
    const files = layers.flatMap((l) => sourcesUnder(l.folder));
    // A scan that reads nothing passes too: it must at least see the files these rules are about.
    for (const known of ['lambdas/shared/host-dispatch.ts', 'contract/host-protocol.ts', 'sdk/src/index.ts']) {
      assert.ok(
        files.some((f) => f.path === known),
        `the scan did not read ${known}`,
      );
    }
    assert.deepEqual(layerViolations(files), []);
  });

  it('names the file and the import of every kind of crossing', () => {
    const files: SourceFile[] = [
      { path: 'lambdas/shared/a.ts', text: "import { x } from '../../host-agent/src/daemon';\nimport { y } from '../../contract/ids';" },
      { path: 'lambdas/b.ts', text: "export * from '../host-agent/src/docker.ts';\nconst m = await import('../host-agent/src/network');" },
      { path: 'contract/c.ts', text: "import type { Z } from '../lambdas/shared/config';\nimport * as z from 'zod';\nimport { join } from 'node:path';" },
      {
        path: 'contract/d.ts',
        text: "import '../host-agent/src/cli';\nimport { version } from '../package.json';\nimport { S3Client } from '@aws-sdk/client-s3';",
      },
      {
        path: 'sdk/src/e.ts',
        text: "import { f } from './errors.js';\nimport { g } from '../../lambdas/shared/responses';\nimport { h } from 'zod';\nimport { readFile } from 'node:fs/promises';",
      },
      { path: 'host-agent/src/f.ts', text: "import { logger } from '../../lambdas/shared/logger';" },
    ];
    assert.deepEqual(
      layerViolations(files).map((v) => v.slice(0, v.indexOf(' ('))),
      [
        "lambdas/shared/a.ts: import '../../host-agent/src/daemon' imports host-agent/",
        "lambdas/b.ts: import '../host-agent/src/docker.ts' imports host-agent/",
        "lambdas/b.ts: import '../host-agent/src/network' imports host-agent/",
        "contract/c.ts: import '../lambdas/shared/config' imports lambdas/shared/config, outside contract/",
        "contract/d.ts: import '../host-agent/src/cli' imports host-agent/src/cli, outside contract/",
        "contract/d.ts: import '@aws-sdk/client-s3' imports package @aws-sdk/client-s3",
        "sdk/src/e.ts: import '../../lambdas/shared/responses' imports lambdas/shared/responses, outside sdk/",
        "sdk/src/e.ts: import 'zod' imports package zod",
      ],
    );
  });
});
