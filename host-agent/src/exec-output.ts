/**
 * Bounded capture of an exec's output: whatever the command writes, memory
 * stays at a few times the budget, and the answer keeps the head and the tail
 * of each stream within a budget measured in bytes of JSON (an upper bound on
 * the characters SSM counts).
 */

/** Keeps the first and the last `limit` bytes of a stream, and counts all of them. */
export class StreamCapture {
  private readonly head: Buffer[] = [];
  private headBytes = 0;
  private tail: Buffer[] = [];
  private tailBytes = 0;
  /** Bytes the stream carried in total. */
  totalBytes = 0;

  constructor(private readonly limit: number) {}

  push(chunk: Buffer): void {
    this.totalBytes += chunk.length;
    if (this.headBytes < this.limit) {
      const take = Math.min(this.limit - this.headBytes, chunk.length);
      // Copy: payloads are views into the demuxer's frame buffer, which would stay alive otherwise.
      this.head.push(Buffer.from(chunk.subarray(0, take)));
      this.headBytes += take;
    }
    this.tail.push(Buffer.from(chunk.subarray(Math.max(0, chunk.length - this.limit))));
    this.tailBytes += Math.min(chunk.length, this.limit);
    while (this.tail.length > 1 && this.tailBytes - this.tail[0]!.length >= this.limit) {
      this.tailBytes -= this.tail.shift()!.length;
    }
  }

  /** The captured bytes: `all` when nothing was dropped, else the head and the tail. */
  snapshot(): { all: Buffer } | { head: Buffer; tail: Buffer; totalBytes: number } {
    const head = Buffer.concat(this.head);
    if (this.totalBytes === head.length) return { all: head };
    const tail = Buffer.concat(this.tail);
    return { head, tail: tail.subarray(Math.max(0, tail.length - this.limit)), totalBytes: this.totalBytes };
  }
}

/**
 * Removes the wrapper's working-directory record (`\x1f<nonce>:<len>:<path>\n`)
 * from a stream, wherever chunk boundaries fall, and hands the path over.
 */
export class CwdMarkerExtractor {
  private pending: Buffer = Buffer.alloc(0);
  /** The longest record worth waiting for: PATH_MAX plus framing. */
  private static readonly maxRecordBytes = 4096 + 64;

  constructor(
    private readonly prefix: Buffer,
    private readonly onData: (chunk: Buffer) => void,
    private readonly onCwd: (cwd: string) => void,
  ) {}

  push(chunk: Buffer): void {
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    this.drain(false);
  }

  end(): void {
    this.drain(true);
  }

  private emit(bytes: Buffer): void {
    if (bytes.length > 0) this.onData(bytes);
  }

  private drain(final: boolean): void {
    for (;;) {
      const at = this.pending.indexOf(this.prefix);
      if (at === -1) {
        // A prefix may straddle chunks: hold back its length minus one.
        const keep = final ? 0 : Math.min(this.pending.length, this.prefix.length - 1);
        this.emit(this.pending.subarray(0, this.pending.length - keep));
        this.pending = this.pending.subarray(this.pending.length - keep);
        return;
      }
      this.emit(this.pending.subarray(0, at));
      this.pending = this.pending.subarray(at);
      const record = this.parseRecord();
      if (record === 'incomplete' && !final && this.pending.length < CwdMarkerExtractor.maxRecordBytes) return;
      if (record === 'incomplete' || record === 'malformed') {
        // Not ours after all (or cut short): pass the bytes through untouched.
        this.emit(this.pending.subarray(0, this.prefix.length));
        this.pending = this.pending.subarray(this.prefix.length);
        continue;
      }
      this.onCwd(record.cwd);
      this.pending = this.pending.subarray(record.length);
    }
  }

  private parseRecord(): { cwd: string; length: number } | 'incomplete' | 'malformed' {
    const start = this.prefix.length;
    const colon = this.pending.indexOf(0x3a, start);
    if (colon === -1) return this.pending.length - start > 10 ? 'malformed' : 'incomplete';
    const digits = this.pending.toString('latin1', start, colon);
    if (!/^\d{1,5}$/.test(digits)) return 'malformed';
    const pathStart = colon + 1;
    const pathEnd = pathStart + Number(digits);
    if (this.pending.length < pathEnd + 1) return 'incomplete';
    if (this.pending[pathEnd] !== 0x0a) return 'malformed';
    return { cwd: this.pending.toString('utf8', pathStart, pathEnd), length: pathEnd + 1 };
  }
}

/** Length of a UTF-8 sequence starting at `i`, or 0 when the byte there starts no valid sequence. */
function sequenceLength(bytes: Buffer, i: number): number {
  const b0 = bytes[i]!;
  if (b0 < 0x80) return 1;
  const cont = (k: number, lo = 0x80, hi = 0xbf) => i + k < bytes.length && bytes[i + k]! >= lo && bytes[i + k]! <= hi;
  if (b0 >= 0xc2 && b0 <= 0xdf) return cont(1) ? 2 : 0;
  if (b0 >= 0xe0 && b0 <= 0xef) {
    const [lo, hi] = b0 === 0xe0 ? [0xa0, 0xbf] : b0 === 0xed ? [0x80, 0x9f] : [0x80, 0xbf];
    return cont(1, lo, hi) && cont(2) ? 3 : 0;
  }
  if (b0 >= 0xf0 && b0 <= 0xf4) {
    const [lo, hi] = b0 === 0xf0 ? [0x90, 0xbf] : b0 === 0xf4 ? [0x80, 0x8f] : [0x80, 0xbf];
    return cont(1, lo, hi) && cont(2) && cont(3) ? 4 : 0;
  }
  return 0;
}

/** Bytes of JSON (UTF-8, quotes excluded) one ASCII byte becomes. */
function asciiJsonBytes(b: number): number {
  if (b === 0x22 || b === 0x5c) return 2;
  if (b === 0x08 || b === 0x09 || b === 0x0a || b === 0x0c || b === 0x0d) return 2;
  return b < 0x20 ? 6 : 1;
}

/**
 * Walks `bytes` as UTF-8 and yields [offset, sequence bytes, JSON bytes] per
 * character; an invalid byte counts as one U+FFFD (3 JSON bytes), an upper bound
 * on what TextDecoder's replacement produces.
 */
function* characters(bytes: Buffer, from = 0): Generator<[number, number, number]> {
  let i = from;
  while (i < bytes.length) {
    const length = sequenceLength(bytes, i);
    if (length === 0) {
      yield [i, 1, 3];
      i += 1;
    } else {
      yield [i, length, length === 1 ? asciiJsonBytes(bytes[i]!) : length];
      i += length;
    }
  }
}

/** Upper bound of the JSON size (UTF-8 bytes, no quotes) of `bytes` decoded as UTF-8. */
export function jsonBytes(bytes: Buffer): number {
  let total = 0;
  for (const [, , size] of characters(bytes)) total += size;
  return total;
}

/** Longest prefix (ending on a character boundary) whose JSON fits `allowance`. */
function prefixWithin(bytes: Buffer, allowance: number): Buffer {
  let used = 0;
  for (const [offset, , size] of characters(bytes)) {
    if (used + size > allowance) return bytes.subarray(0, offset);
    used += size;
  }
  return bytes;
}

/** Longest suffix (starting on a character boundary) whose JSON fits `allowance`. */
function suffixWithin(bytes: Buffer, allowance: number): Buffer {
  // Every byte costs at least one JSON byte, so the suffix is at most `allowance` bytes long.
  let start = Math.max(0, bytes.length - allowance);
  while (start < bytes.length && start > 0 && (bytes[start]! & 0xc0) === 0x80) start += 1;
  const sizes: [number, number][] = [];
  let used = 0;
  for (const [offset, , size] of characters(bytes, start)) {
    sizes.push([offset, size]);
    used += size;
  }
  let first = 0;
  while (used > allowance && first < sizes.length) used -= sizes[first++]![1];
  return first < sizes.length ? bytes.subarray(sizes[first]![0]) : Buffer.alloc(0);
}

export interface FittedStream {
  text: string;
  truncated: boolean;
}

type Snapshot = ReturnType<StreamCapture['snapshot']>;

/** Room kept for the notice that marks the cut. */
const noticeReserve = 64;

function fitStream(snapshot: Snapshot, allowance: number): FittedStream {
  if ('all' in snapshot && jsonBytes(snapshot.all) <= allowance) {
    return { text: snapshot.all.toString('utf8'), truncated: false };
  }
  const headSource = 'all' in snapshot ? snapshot.all : snapshot.head;
  const tailSource = 'all' in snapshot ? snapshot.all : snapshot.tail;
  const totalBytes = 'all' in snapshot ? snapshot.all.length : snapshot.totalBytes;
  const room = Math.max(0, allowance - noticeReserve);
  const head = prefixWithin(headSource, Math.floor(room / 2));
  const tail = suffixWithin(tailSource, room - jsonBytes(head));
  const omitted = totalBytes - head.length - tail.length;
  const notice = `\n[... ${omitted} bytes truncated ...]\n`;
  return { text: head.toString('utf8') + notice + tail.toString('utf8'), truncated: true };
}

function capturedJsonBytes(snapshot: Snapshot): number {
  return 'all' in snapshot ? jsonBytes(snapshot.all) : Number.POSITIVE_INFINITY;
}

/**
 * Fits stdout and stderr into `budget` bytes of JSON together: a stream that
 * fits in half keeps everything and leaves the rest to the other.
 */
export function fitOutputs(stdout: Snapshot, stderr: Snapshot, budget: number): { stdout: FittedStream; stderr: FittedStream } {
  const outSize = capturedJsonBytes(stdout);
  const errSize = capturedJsonBytes(stderr);
  let outAllowance = budget / 2;
  let errAllowance = budget / 2;
  if (outSize + errSize <= budget) [outAllowance, errAllowance] = [outSize, errSize];
  else if (outSize < budget / 2) errAllowance = budget - outSize;
  else if (errSize < budget / 2) outAllowance = budget - errSize;
  return { stdout: fitStream(stdout, Math.floor(outAllowance)), stderr: fitStream(stderr, Math.floor(errAllowance)) };
}
