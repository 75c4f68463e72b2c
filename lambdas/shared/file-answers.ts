/**
 * What the two file-read routes (a running sandbox's files, a home's synced
 * copy) answer alike: the refusal of a caller that would get base64 text, and
 * the bytes with the file's metadata in headers.
 */
import { ApiError } from './errors';
import { acceptsBinary } from './gateway';
import type { ApiResult } from './http';

/** Bytes reach the caller only when its first Accept type is binary (API Gateway's rule): say so rather than answer base64 text. */
export function requireBinaryAccept(accept: string | undefined): void {
  if (!acceptsBinary(accept)) {
    throw new ApiError(406, 'not_acceptable', 'send Accept: application/octet-stream to read file bytes (any other Accept gets base64 text from API Gateway)');
  }
}

/** A file's bytes, its path, size, mode, sha256 and mtime in X-File-* headers, and any headers the route adds. */
export function fileBytesAnswer(
  file: { path: string; size: number; mode: string; sha256: string; mtime: string; bytes: Buffer },
  extraHeaders: Record<string, string> = {},
): ApiResult {
  return {
    status: 200,
    binary: file.bytes,
    headers: {
      'X-File-Path': encodeURI(file.path),
      'X-File-Size': String(file.size),
      'X-File-Mode': file.mode,
      'X-File-Sha256': file.sha256,
      'X-File-Mtime': file.mtime,
      ...extraHeaders,
    },
  };
}
