/**
 * Stack traces that name the TypeScript file and line, at no cost to a cold
 * start. Every Lambda bundle starts with this module (esbuild `inject`, from
 * lib/bundling.ts `handlerInject`): it installs `Error.prepareStackTrace`,
 * which V8 calls only when an error's `stack` is first read, and reads and
 * parses the bundle's source map (`<bundle>.map`, next to it) then, once per
 * execution environment.
 *
 * Why not `NODE_OPTIONS=--enable-source-maps`: Node then reads and parses the
 * map (about 1 MB per handler) while the bundle loads, about 25 ms of every
 * cold start measured here (`npm run bundle-report`), whether or not anything
 * ever fails. An environment that never formats a stack never reads the map.
 *
 * Frames outside the bundle, and every frame when the map cannot be read, are
 * printed as V8 prints them. A process that already maps stacks (started with
 * --enable-source-maps) keeps Node's mapping.
 */
import { readFileSync } from 'node:fs';
import { SourceMap, type SourceMapPayload, type SourceMapping } from 'node:module';
import { fileURLToPath } from 'node:url';

/** The bundle this module was bundled into (import.meta.url is the output file's). */
const bundleUrl = import.meta.url;

let sourceMap: SourceMap | null | undefined;

/** The bundle's map, read at the first stack formatted; null when there is none to read. */
function bundleMap(): SourceMap | null {
  if (sourceMap !== undefined) return sourceMap;
  try {
    sourceMap = new SourceMap(JSON.parse(readFileSync(`${fileURLToPath(bundleUrl)}.map`, 'utf8')) as SourceMapPayload);
  } catch {
    sourceMap = null;
  }
  return sourceMap;
}

/**
 * A source as the map names it, relative to the map (`../../lambdas/http.ts`),
 * without the leading `../`: where the bundle was built means nothing where it
 * runs, and the path from the repository's root is what a reader looks up.
 */
const sourcePath = (source: string) => source.replace(/^(?:\.\.?\/)+/, '');

type Entry = Partial<SourceMapping> & { name?: string };

const entryAt = (map: SourceMap, line: number | null, column: number | null): Entry =>
  line === null || column === null ? {} : (map.findEntry(line - 1, column - 1) as Entry);

/**
 * The original name of a frame's function (the minifier renamed the one V8
 * sees): the name the map gives the caller's call expression (`failDeep(r)`
 * calls failDeep). A frame called from outside the bundle keeps V8's name.
 */
function originalName(map: SourceMap, caller: NodeJS.CallSite | undefined): string | undefined {
  return caller?.getFileName() === bundleUrl ? entryAt(map, caller.getLineNumber(), caller.getColumnNumber()).name : undefined;
}

/** A bundle frame in the TypeScript's terms, in the shape Node gives it: `[async ]name (file:line:column)`; undefined when the map has no entry. */
function mappedFrame(map: SourceMap, site: NodeJS.CallSite, caller: NodeJS.CallSite | undefined): string | undefined {
  if (site.getFileName() !== bundleUrl) return undefined;
  const at = entryAt(map, site.getLineNumber(), site.getColumnNumber());
  if (at.originalSource === undefined || at.originalLine === undefined || at.originalColumn === undefined) return undefined;
  const typeName = site.getTypeName();
  const v8Name = `${typeName !== null && typeName !== 'global' ? `${typeName}.` : ''}${site.getFunctionName() ?? site.getMethodName() ?? '<anonymous>'}`;
  const name = originalName(map, caller) ?? v8Name;
  return `${site.isAsync() ? 'async ' : ''}${name} (${sourcePath(at.originalSource)}:${at.originalLine + 1}:${at.originalColumn + 1})`;
}

function prepareStackTrace(error: Error, sites: NodeJS.CallSite[]): string {
  let header: string;
  try {
    header = Error.prototype.toString.call(error);
  } catch {
    header = '<error>';
  }
  const map = bundleMap();
  const frame = (site: NodeJS.CallSite, i: number) => {
    try {
      return (map && mappedFrame(map, site, sites[i + 1])) ?? String(site);
    } catch {
      // A frame the map cannot answer for is printed as V8 prints it: a stack is never lost to its mapping.
      return String(site);
    }
  };
  const frames = sites.map((site, i) => `    at ${frame(site, i)}`);
  return [header, ...frames].join('\n');
}

// Node defines a default hook of its own (it prints frames as V8 does); one started with --enable-source-maps keeps its own.
if (!process.sourceMapsEnabled) Error.prepareStackTrace = prepareStackTrace;
