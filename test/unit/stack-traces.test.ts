/**
 * Stack traces in the Lambda bundles (lambdas/shared/stack-traces.ts, injected
 * by lib/bundling.ts): a bundle built as the handlers are, loaded in a fresh
 * Node process WITHOUT --enable-source-maps, names the TypeScript file, line
 * and function of each of its frames, and reads its map only when a stack is
 * first formatted, not while it loads.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { pathToFileURL } from 'node:url';
import { build } from 'esbuild';
import { handlerBuildOptions } from '../../lib/bundling';
import { repoRoot } from '../../lib/paths';

const fixture = 'test/fixtures/stack-trace-entry.ts';
const lines = readFileSync(join(repoRoot, fixture), 'utf8').split('\n');
const lineOf = (text: string) => lines.findIndex((l) => l.includes(text)) + 1;

describe('stack traces in a Lambda bundle', () => {
  let dir: string;
  let bundle: string;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'stack-traces-'));
    bundle = join(dir, 'index.mjs');
    await build({ ...handlerBuildOptions(join(repoRoot, fixture), bundle), metafile: false });
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  /** The stack of an error thrown inside the bundle, formatted in a fresh process; `removeMap` deletes the map after the import. */
  function stackInFreshProcess(removeMap: boolean): string {
    const script = `
      import { rmSync } from 'node:fs';
      const m = await import(${JSON.stringify(pathToFileURL(bundle).href)});
      if (${removeMap}) rmSync(${JSON.stringify(`${bundle}.map`)});
      process.stdout.write(m.stackOf('on purpose'));
    `;
    // A clean environment: no NODE_OPTIONS (the functions have none), no tsx loader.
    return execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', env: { PATH: process.env.PATH } });
  }

  it('names the TypeScript file, line, column and function of the bundle frames; other frames as V8 prints them', () => {
    // As the map names it, relative to the bundle, without the leading ../ (test/fixtures/... for a bundle two levels below the repository).
    const source = relative(dir, join(repoRoot, fixture))
      .replace(/^(\.\.\/)+/, '')
      .replaceAll('.', '\\.');
    const stack = stackInFreshProcess(false).split('\n');
    assert.equal(stack[0], 'Error: deep failure: on purpose');
    const throwLine = lineOf('throw new Error');
    assert.match(stack[1]!, new RegExp(`^    at failDeep \\(${source}:${throwLine}:\\d+\\)$`), stack.join('\n'));
    assert.match(stack[2]!, new RegExp(`^    at <anonymous> \\(${source}:${lineOf('failDeep(r)')}:\\d+\\)$`), 'the arrow function: anonymous, mapped');
    assert.equal(stack[3], '    at Array.map (<anonymous>)', 'a frame outside the bundle is left as it was');
    assert.match(
      stack[4]!,
      new RegExp(`^    at \\S+ \\(${source}:${lineOf('[reason].map')}:\\d+\\)$`),
      "called from outside the bundle: V8's name, the original place",
    );
  });

  it('does not read the map while the bundle loads: removed after the import, the frames stay unmapped', () => {
    const stack = stackInFreshProcess(true);
    assert.match(stack, /^Error: deep failure: on purpose\n/);
    assert.doesNotMatch(stack, /stack-trace-entry\.ts/);
    assert.match(stack, /index\.mjs:\d+:\d+/, 'the bundle frames as V8 prints them');
  });
});
