/**
 * Reading a command's output back from S3, by byte offset, as text an API
 * answer can carry: at most `maxBytes` per read, never a multi-byte character
 * split across answers, and never more than the answer's share of Lambda's
 * 6 MB payload once JSON-escaped (twice: the body is a JSON string inside the
 * proxy result).
 */
import { GetObjectCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { s3 } from './clients/s3';
import { config } from './config';
import { outputChunkListStart, parseOutputChunkKey } from '../../contract/host-protocol';
import type { OutputStream } from './command-state';

/** Most bytes of one stream an answer carries. */
const maxReadBytes = 1024 * 1024;
/** Most chunk objects one read fetches (a trickling command writes many small ones). */
const maxChunksPerRead = 64;
/**
 * Each stream's share of a Lambda response (6,291,556 bytes) once escaped
 * twice; both streams and the record's fields fit with room to spare.
 */
const payloadBudgetPerStream = 2_900_000;

/** Bytes a string costs inside the Lambda response payload (JSON string in a JSON string). */
function payloadBytes(text: string): number {
  return Buffer.byteLength(JSON.stringify(JSON.stringify(text)));
}

/** Length of the UTF-8 sequence starting with byte `b0` (1 for invalid leads: they decode to U+FFFD alone). */
function leadLength(b0: number): number {
  if (b0 >= 0xf0 && b0 <= 0xf4) return 4;
  if (b0 >= 0xe0) return b0 <= 0xef ? 3 : 1;
  if (b0 >= 0xc2 && b0 <= 0xdf) return 2;
  return 1;
}

/**
 * The longest prefix of `bytes` that ends on a character boundary: an
 * incomplete sequence at the end is held back (its rest may come later).
 */
export function completePrefixLength(bytes: Buffer): number {
  const n = bytes.length;
  // A sequence is at most 4 bytes: look at the last 3 for a lead byte whose sequence runs past the end.
  for (let back = 1; back <= Math.min(3, n); back++) {
    const b = bytes[n - back]!;
    if ((b & 0xc0) === 0x80) continue; // continuation byte: keep looking for its lead
    return leadLength(b) > back ? n - back : n;
  }
  return n;
}

/** Moves `offset` forward past continuation bytes (at most 3), to start on a character. */
export function nextCharacterStart(bytes: Buffer, offset: number): number {
  let at = offset;
  while (at < bytes.length && at - offset < 3 && (bytes[at]! & 0xc0) === 0x80) at++;
  return at;
}

/** The longest prefix (on a character boundary) whose text costs at most `budget` payload bytes. */
function prefixWithinBudget(bytes: Buffer, budget: number): number {
  if (payloadBytes(bytes.toString('utf8')) <= budget) return bytes.length;
  const fits = (n: number) => payloadBytes(bytes.subarray(0, completePrefixLength(bytes.subarray(0, n))).toString('utf8')) <= budget;
  // The cost only grows with the length: binary search the longest that fits.
  let lo = 0;
  let hi = bytes.length;
  while (hi - lo > 1) {
    const mid = (lo + hi) >>> 1;
    if (fits(mid)) lo = mid;
    else hi = mid;
  }
  return completePrefixLength(bytes.subarray(0, lo));
}

/** Raw bytes of one stream from `offset`, at most `maxBytes`, as far as they are stored. */
async function readStreamBytes(prefix: string, stream: OutputStream, offset: number, maxBytes: number): Promise<Buffer> {
  const bucket = config().bucket;
  const listed = await s3().send(
    new ListObjectsV2Command({
      Bucket: bucket,
      Prefix: `${prefix}${stream}/`,
      StartAfter: outputChunkListStart(prefix, stream, offset),
      MaxKeys: maxChunksPerRead,
    }),
  );
  const want = offset + maxBytes;
  const ranges: { key: string; from: number; to: number }[] = [];
  let cursor = offset;
  for (const object of listed.Contents ?? []) {
    const chunk = object.Key ? parseOutputChunkKey(object.Key) : undefined;
    if (!chunk) continue;
    // Chunks are stored in order; a missing one means the rest is not readable yet.
    if (chunk.start > cursor) break;
    const to = Math.min(chunk.end, want);
    ranges.push({ key: object.Key!, from: cursor - chunk.start, to: to - chunk.start });
    cursor = to;
    if (cursor >= want) break;
  }
  const parts = await Promise.all(
    ranges.map(async (r) => {
      const out = await s3().send(new GetObjectCommand({ Bucket: bucket, Key: r.key, Range: `bytes=${r.from}-${r.to - 1}` }));
      return Buffer.from(await out.Body!.transformToByteArray());
    }),
  );
  return Buffer.concat(parts);
}

export interface StreamRead {
  text: string;
  /** Offset to ask for next (the bytes this read covered end there). */
  next: number;
}

/**
 * Text of one stream from `offset`. `end`: the stream's final size, once the
 * command ended; a read that reaches it gives a trailing incomplete character
 * as it is (decoded as U+FFFD) instead of holding it back for more.
 */
export async function readStream(
  prefix: string,
  stream: OutputStream,
  offset: number,
  o: { end?: number; maxBytes?: number; budget?: number },
): Promise<StreamRead> {
  const maxBytes = o.maxBytes ?? maxReadBytes;
  const bytes = await readStreamBytes(prefix, stream, offset, maxBytes);
  const reachesEnd = o.end !== undefined && offset + bytes.length >= o.end;
  let cut = reachesEnd ? bytes.length : completePrefixLength(bytes);
  if (cut === 0 && bytes.length > 0 && bytes.length >= maxBytes) cut = bytes.length; // maxBytes under one character: give the bytes
  cut = Math.min(cut, prefixWithinBudget(bytes.subarray(0, cut), o.budget ?? payloadBudgetPerStream));
  return { text: bytes.subarray(0, cut).toString('utf8'), next: offset + cut };
}

/**
 * The whole of a stream of `total` bytes when it fits `limit`, otherwise its
 * head and tail around a notice (what /exec answers).
 */
export async function readHeadAndTail(
  prefix: string,
  stream: OutputStream,
  total: number,
  limit = maxReadBytes,
): Promise<{ text: string; truncated: boolean }> {
  if (total <= limit) {
    const all = await readStream(prefix, stream, 0, { end: total, maxBytes: limit });
    return { text: all.text, truncated: all.next < total };
  }
  const half = Math.floor(limit / 2);
  const budget = Math.floor(payloadBudgetPerStream / 2);
  const head = await readStream(prefix, stream, 0, { maxBytes: half, budget });
  const tailBytes = await readStreamBytes(prefix, stream, total - half, half);
  const tailStart = nextCharacterStart(tailBytes, 0);
  const tailText = tailBytes.subarray(tailStart, tailStart + prefixWithinBudget(tailBytes.subarray(tailStart), budget)).toString('utf8');
  const omitted = total - head.next - (tailBytes.length - tailStart);
  return { text: `${head.text}\n[... ${omitted} bytes truncated ...]\n${tailText}`, truncated: true };
}
