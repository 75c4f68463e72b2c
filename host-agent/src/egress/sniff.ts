/**
 * The name a connection carries in its first bytes: the server name (SNI) of
 * a TLS ClientHello, or the Host of an HTTP/1 request. Pure functions over
 * what the client sent so far; each answers `need-more` until it can decide.
 */

export type Sniffed =
  /** Not enough bytes yet to decide. */
  | { state: 'need-more' }
  /** TLS or HTTP, with the name it carries (undefined: TLS without SNI, HTTP/1.0 without Host). */
  | { state: 'named'; protocol: 'tls' | 'http'; name: string | undefined }
  /** Something else (SSH, a database protocol...): no name to check. */
  | { state: 'other' };

/** A ClientHello larger than this (or HTTP headers larger than this) is refused rather than buffered without end. */
export const maxSniffBytes = 64 * 1024;

const httpMethod = /^(GET|HEAD|POST|PUT|DELETE|CONNECT|OPTIONS|TRACE|PATCH|PROPFIND|PROPPATCH|MKCOL|COPY|MOVE|LOCK|UNLOCK|REPORT|SEARCH|PURGE) /;

/** Decides from the first bytes of a connection. */
export function sniff(data: Buffer): Sniffed {
  if (data.length === 0) return { state: 'need-more' };
  if (data[0] === 0x16) return sniffTls(data);
  const head = data.subarray(0, 16).toString('latin1');
  if (/^[A-Z]{1,16}$/.test(head) && data.length < 16) return { state: 'need-more' };
  if (httpMethod.test(head)) return sniffHttp(data);
  return { state: 'other' };
}

/** The hostname in a Host header or an absolute URI, without port or brackets; undefined for an IP literal. */
function hostOf(authority: string): string | undefined {
  let host = authority.trim().toLowerCase();
  if (host.startsWith('[')) return undefined; // IPv6 literal
  host = host.replace(/:\d*$/, '').replace(/\.$/, '');
  if (host === '' || /^[\d.]+$/.test(host)) return undefined;
  return host;
}

function sniffHttp(data: Buffer): Sniffed {
  const end = data.indexOf('\r\n\r\n');
  if (end === -1) return data.length > maxSniffBytes ? { state: 'named', protocol: 'http', name: undefined } : { state: 'need-more' };
  const lines = data.subarray(0, end).toString('latin1').split('\r\n');
  const [, target = ''] = lines[0]!.split(' ');
  // An absolute-form target names the host itself (and wins over Host, RFC 9112 3.2.2).
  const absolute = /^[a-z][a-z0-9+.-]*:\/\/([^/?#]*)/i.exec(target);
  if (absolute) return { state: 'named', protocol: 'http', name: hostOf(absolute[1]!.replace(/^.*@/, '')) };
  if (lines[0]!.startsWith('CONNECT ')) return { state: 'named', protocol: 'http', name: hostOf(target) };
  const hosts = lines.slice(1).filter((l) => /^host\s*:/i.test(l));
  // Two Host headers are an attempt to confuse whoever reads them: refuse by naming neither.
  if (hosts.length !== 1) return { state: 'named', protocol: 'http', name: hosts.length === 0 ? undefined : '' };
  return { state: 'named', protocol: 'http', name: hostOf(hosts[0]!.slice(hosts[0]!.indexOf(':') + 1)) ?? undefined };
}

/**
 * Reassembles the ClientHello from TLS handshake records (it may span more
 * than one) and reads its server_name extension.
 */
function sniffTls(data: Buffer): Sniffed {
  const chunks: Buffer[] = [];
  let offset = 0;
  let needed: number | undefined;
  let have = 0;
  while (needed === undefined || have < needed) {
    if (data.length < offset + 5) return data.length > maxSniffBytes ? { state: 'other' } : { state: 'need-more' };
    if (data[offset] !== 0x16 || data[offset + 1] !== 0x03) return have === 0 ? { state: 'other' } : { state: 'named', protocol: 'tls', name: undefined };
    const length = data.readUInt16BE(offset + 3);
    if (data.length < offset + 5 + length) return length > maxSniffBytes ? { state: 'other' } : { state: 'need-more' };
    chunks.push(data.subarray(offset + 5, offset + 5 + length));
    have += length;
    offset += 5 + length;
    if (needed === undefined) {
      const first = Buffer.concat(chunks);
      if (first.length < 4) continue;
      if (first[0] !== 0x01) return { state: 'named', protocol: 'tls', name: undefined }; // not a ClientHello
      needed = 4 + first.readUIntBE(1, 3);
      if (needed > maxSniffBytes) return { state: 'named', protocol: 'tls', name: undefined };
    }
  }
  return { state: 'named', protocol: 'tls', name: serverName(Buffer.concat(chunks).subarray(4, needed)) };
}

/** server_name (type 0) of a ClientHello body, or undefined when it has none or is malformed. */
function serverName(hello: Buffer): string | undefined {
  try {
    let p = 2 + 32; // version, random
    p += 1 + hello[p]!; // session id
    p += 2 + hello.readUInt16BE(p); // cipher suites
    p += 1 + hello[p]!; // compression methods
    if (p + 2 > hello.length) return undefined;
    const end = p + 2 + hello.readUInt16BE(p);
    p += 2;
    while (p + 4 <= end) {
      const type = hello.readUInt16BE(p);
      const length = hello.readUInt16BE(p + 2);
      if (type === 0) {
        let q = p + 4 + 2; // list length
        while (q + 3 <= p + 4 + length) {
          const kind = hello[q]!;
          const nameLength = hello.readUInt16BE(q + 1);
          if (kind === 0)
            return hello
              .subarray(q + 3, q + 3 + nameLength)
              .toString('latin1')
              .toLowerCase()
              .replace(/\.$/, '');
          q += 3 + nameLength;
        }
        return undefined;
      }
      p += 4 + length;
    }
  } catch {
    // RangeError on a truncated hello: treat as no name.
  }
  return undefined;
}

/**
 * Follows the client side of a plain HTTP/1 connection request by request
 * (Content-Length and chunked bodies, pipelining), so the Host of every
 * request is read, not only the first: a kept-alive connection to a listed
 * site cannot ask a second request of an unlisted site on the same address.
 * After a CONNECT or an Upgrade request the stream is no longer HTTP and is
 * passed through unread.
 */
export class HttpRequestFramer {
  private state: 'head' | 'body' | 'chunk-size' | 'chunk-data' | 'chunk-end' | 'trailers' | 'opaque' = 'head';
  private pending = Buffer.alloc(0);
  private remaining = 0;

  /**
   * Takes what the client sent next. Answers the bytes that may go on now
   * (a request head only once it is whole) and the name of each request head
   * completed in them, in order (undefined: no name to check), or an error
   * when the bytes are not the HTTP the framing says must come.
   */
  push(chunk: Buffer): { forward: Buffer; names: (string | undefined)[] } | { error: string } {
    const forward: Buffer[] = [];
    const names: (string | undefined)[] = [];
    let data = this.pending.length > 0 ? Buffer.concat([this.pending, chunk]) : chunk;
    this.pending = Buffer.alloc(0);
    while (data.length > 0) {
      // Empty lines between requests are allowed (RFC 9112 2.2).
      if (this.state === 'head' && data.length >= 2 && data[0] === 0x0d && data[1] === 0x0a) {
        forward.push(data.subarray(0, 2));
        data = data.subarray(2);
        continue;
      }
      if (this.state === 'opaque') {
        forward.push(data);
        break;
      }
      if (this.state === 'body' || this.state === 'chunk-data') {
        const take = Math.min(this.remaining, data.length);
        forward.push(data.subarray(0, take));
        data = data.subarray(take);
        this.remaining -= take;
        if (this.remaining === 0) this.state = this.state === 'body' ? 'head' : 'chunk-end';
        continue;
      }
      const end = data.indexOf(this.state === 'head' ? '\r\n\r\n' : '\r\n');
      if (end === -1) {
        if (data.length > maxSniffBytes) return { error: 'an HTTP request head or chunk line larger than the proxy reads' };
        this.pending = Buffer.from(data);
        break;
      }
      const unit = data.subarray(0, end + (this.state === 'head' ? 4 : 2));
      data = data.subarray(unit.length);
      forward.push(unit);
      if (this.state === 'head') {
        const seen = sniff(unit);
        if (seen.state !== 'named' || seen.protocol !== 'http') return { error: 'bytes that are not an HTTP request where the next request was due' };
        names.push(seen.name);
        const headers = unit.toString('latin1').split('\r\n');
        const header = (name: string) =>
          headers
            .filter((l) => l.toLowerCase().startsWith(`${name}:`))
            .map((l) =>
              l
                .slice(name.length + 1)
                .trim()
                .toLowerCase(),
            );
        if (headers[0]!.startsWith('CONNECT ') || header('upgrade').length > 0) this.state = 'opaque';
        else if (header('transfer-encoding').some((v) => v.split(',').at(-1)!.trim() === 'chunked')) this.state = 'chunk-size';
        else {
          const lengths = [...new Set(header('content-length'))];
          if (lengths.length > 1 || (lengths.length === 1 && !/^\d{1,15}$/.test(lengths[0]!)))
            return { error: 'an HTTP request with a Content-Length the proxy cannot trust' };
          this.remaining = lengths.length === 1 ? Number(lengths[0]) : 0;
          if (this.remaining > 0) this.state = 'body';
        }
      } else if (this.state === 'chunk-size') {
        const size = Number.parseInt(unit.toString('latin1').split(';')[0]!.trim(), 16);
        if (!Number.isFinite(size) || size < 0) return { error: 'a chunked HTTP body with a bad chunk size' };
        this.remaining = size;
        this.state = size === 0 ? 'trailers' : 'chunk-data';
      } else if (this.state === 'chunk-end') {
        if (unit.length !== 2) return { error: 'a chunked HTTP body with data past its chunk size' };
        this.state = 'chunk-size';
      } else if (this.state === 'trailers' && unit.length === 2) {
        this.state = 'head';
      }
    }
    return { forward: Buffer.concat(forward), names };
  }
}
