/**
 * Paths as the files API takes them: absolute, or relative to the sandbox
 * user's home. For a sandbox the path is passed on as given (made absolute):
 * `..` and symlinks are resolved inside the sandbox, by the sandbox's own
 * kernel view, never here. For a user's stored home (an S3 prefix) the path is
 * normalized here and must stay inside the home: the prefix is the tenant's
 * and the user's, and nothing outside it is ever named.
 */
import { posix } from 'node:path';
import { maxFilePathBytes } from '../../contract/host-protocol';
import { ApiError } from './errors';
import { hotPath } from './sandbox-record';

const loneSurrogate = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function invalid(field: string, message: string): ApiError {
  return new ApiError(400, 'validation_error', `${field}: ${message}`);
}

/**
 * The absolute path a caller's path names in a sandbox.
 *
 * @example sandboxPath('src/main.py') // '/home/agent/src/main.py'
 */
export function sandboxPath(input: string, field = 'path'): string {
  if (input === '') throw invalid(field, 'must not be empty');
  if (input.includes('\0')) throw invalid(field, 'must not contain NUL');
  if (loneSurrogate.test(input)) throw invalid(field, 'must be valid Unicode (it has a lone surrogate)');
  const absolute = input.startsWith('/') ? input : `${hotPath}/${input}`;
  const bytes = Buffer.byteLength(absolute);
  if (bytes > maxFilePathBytes) throw invalid(field, `is ${bytes} bytes${absolute === input ? '' : ` as an absolute path`}; at most ${maxFilePathBytes}`);
  return absolute;
}

/** A path that must name a file, not a directory (a trailing `/` names a directory). */
export function sandboxFilePath(input: string, field = 'path'): string {
  const path = sandboxPath(input, field);
  if (path.endsWith('/')) throw invalid(field, 'ends with "/", which names a directory; name the file');
  return path;
}

/** Paths whose deletion would take the home (or everything) with it: refused, entries inside them are not. */
export function isProtectedFromDelete(path: string): boolean {
  const normalized = posix.normalize(path).replace(/\/+$/, '') || '/';
  return normalized === '/' || normalized === hotPath || normalized === posix.dirname(hotPath);
}

/**
 * A path in the user's stored home, relative to it ('' for the home itself).
 * Normalized lexically; anything outside /home/agent is refused (the stored
 * copy holds the home only).
 *
 * @example homeRelative('/home/agent/src/../notes.txt') // 'notes.txt'
 */
export function homeRelative(input: string, field = 'path'): string {
  const absolute = posix.normalize(sandboxPath(input, field));
  const trimmed = absolute.length > 1 ? absolute.replace(/\/+$/, '') : absolute;
  if (trimmed === hotPath) return '';
  if (!trimmed.startsWith(`${hotPath}/`)) throw invalid(field, `is outside ${hotPath}: a user's stored home holds only ${hotPath}`);
  return trimmed.slice(hotPath.length + 1);
}

/** The absolute path of a home-relative one. */
export function homeAbsolute(relative: string): string {
  return relative === '' ? hotPath : `${hotPath}/${relative}`;
}
