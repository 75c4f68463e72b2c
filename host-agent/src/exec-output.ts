/**
 * The wrapper's working-directory record, taken out of a command's stderr
 * wherever chunk boundaries fall (see exec-wrapper.ts for its framing).
 */

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
        // A prefix may straddle chunks: hold back only an end that could be its beginning (so a line is passed on at once).
        const keep = final ? 0 : this.partialPrefixAtEnd();
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

  /** Length of the longest end of `pending` that is a beginning of the prefix. */
  private partialPrefixAtEnd(): number {
    const max = Math.min(this.pending.length, this.prefix.length - 1);
    for (let k = max; k > 0; k--) {
      if (this.pending.subarray(this.pending.length - k).equals(this.prefix.subarray(0, k))) return k;
    }
    return 0;
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
