/**
 * Egress policy of one sandbox: what it may reach on the internet.
 *
 *   "allow_all"                 the internet, never private ranges or metadata (the default)
 *   "deny_all"                  nothing but the platform's own API
 *   { allow: [entry, ...] }     names ("api.github.com"), wildcards ("*.example.com":
 *                               any name below example.com, not example.com itself)
 *                               and IPv4 CIDRs ("203.0.113.0/24", a bare address is a /32)
 *
 * The control plane validates requests with the same parser the host uses,
 * so a policy the API accepted is one every host can enforce.
 */
import { isIPv4 } from 'node:net';
import * as z from 'zod/mini';

export type EgressPolicy = 'allow_all' | 'deny_all' | { allow: string[] };

/** Most entries one allowlist may hold (each name costs a lookup per query). */
const maxAllowEntries = 256;

/** IPv4 ranges a sandbox may never reach, whatever its policy: link-local (IMDS), RFC 1918, RFC 6598. */
export const blockedIpv4Ranges = ['169.254.0.0/16', '10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '100.64.0.0/10'];
/** Not destinations at all (this network, loopback, multicast, reserved, broadcast): refused like the blocked ranges. */
const reservedIpv4Ranges = ['0.0.0.0/8', '127.0.0.0/8', '224.0.0.0/4', '240.0.0.0/4'];

interface Cidr {
  /** Network address as an unsigned 32-bit integer. */
  base: number;
  prefix: number;
  text: string;
}

function ipv4ToInt(ip: string): number {
  return ip.split('.').reduce((n, octet) => n * 256 + Number(octet), 0);
}

function maskOf(prefix: number): number {
  return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
}

/** Parses `a.b.c.d/n` or `a.b.c.d`; undefined when it is neither. The base is masked, so 203.0.113.7/24 is 203.0.113.0/24. */
function parseCidr(text: string): Cidr | undefined {
  const [ip, prefixText, ...rest] = text.split('/');
  if (rest.length > 0 || !ip || !isIPv4(ip)) return undefined;
  const prefix = prefixText === undefined ? 32 : /^\d{1,2}$/.test(prefixText) ? Number(prefixText) : NaN;
  if (!(prefix >= 0 && prefix <= 32)) return undefined;
  const base = (ipv4ToInt(ip) & maskOf(prefix)) >>> 0;
  return { base, prefix, text: `${[24, 16, 8, 0].map((s) => (base >>> s) & 255).join('.')}/${prefix}` };
}

function cidrContains(cidr: Cidr, ip: string): boolean {
  return (ipv4ToInt(ip) & maskOf(cidr.prefix)) >>> 0 === cidr.base;
}

function overlaps(a: Cidr, b: Cidr): boolean {
  const prefix = Math.min(a.prefix, b.prefix);
  return (a.base & maskOf(prefix)) >>> 0 === (b.base & maskOf(prefix)) >>> 0;
}

const neverReachable = [...blockedIpv4Ranges, ...reservedIpv4Ranges].map((r) => parseCidr(r)!);

/** True for addresses no sandbox may reach under any policy (private, link-local, loopback, multicast...). */
export function isNeverReachable(ip: string): boolean {
  if (!isIPv4(ip)) return true; // sandboxes have no IPv6 route; anything else is not an address
  return neverReachable.some((range) => cidrContains(range, ip));
}

const label = /^(?!-)[a-z0-9-]{1,63}(?<!-)$/;

/** Lower case, no trailing dot: the form names are compared in. */
export function normalizeName(name: string): string {
  return name.toLowerCase().replace(/\.$/, '');
}

/** Why `entry` cannot be an allowlist entry, or undefined when it can. */
function allowEntryProblem(entry: string): string | undefined {
  if (typeof entry !== 'string' || entry.length === 0) return 'must be a non-empty string';
  if (/^[\d./]+$/.test(entry)) {
    const cidr = parseCidr(entry);
    if (!cidr) return `"${entry}" is not an IPv4 address or CIDR (a.b.c.d or a.b.c.d/n)`;
    const hit = neverReachable.find((range) => overlaps(range, cidr));
    if (hit) return `"${entry}" overlaps ${hit.text}, which sandboxes may never reach (private, link-local or reserved)`;
    return undefined;
  }
  if (entry.includes(':')) return `"${entry}": IPv6 is not routed from sandboxes; list IPv4 CIDRs or names`;
  const name = normalizeName(entry);
  if (name.length > 253) return `"${entry.slice(0, 40)}...": names are at most 253 characters`;
  const labels = name.startsWith('*.') ? name.slice(2).split('.') : name.split('.');
  if (name.includes('*') && !name.startsWith('*.')) return `"${entry}": a wildcard is only allowed as the whole first label ("*.example.com")`;
  if (!labels.every((l) => label.test(l))) return `"${entry}" is not a host name (letters, digits and hyphens in dot-separated labels)`;
  if (name.startsWith('*.') && labels.length < 2) return `"${entry}" is too broad: a wildcard needs at least two labels after it ("*.example.com")`;
  return undefined;
}

/** A validated allowlist, compiled for lookups. */
export interface CompiledAllowlist {
  names: Set<string>;
  /** Suffixes of wildcard entries, with their leading dot (".example.com"). */
  suffixes: string[];
  cidrs: Cidr[];
}

export function compileAllowlist(entries: readonly string[]): CompiledAllowlist {
  const compiled: CompiledAllowlist = { names: new Set(), suffixes: [], cidrs: [] };
  for (const entry of entries) {
    const cidr = /^[\d./]+$/.test(entry) ? parseCidr(entry) : undefined;
    if (cidr) compiled.cidrs.push(cidr);
    else if (entry.startsWith('*.')) compiled.suffixes.push(normalizeName(entry.slice(1)));
    else compiled.names.add(normalizeName(entry));
  }
  return compiled;
}

/** Whether a name (a DNS question, a TLS SNI, an HTTP Host) is allowed by an allowlist. */
export function allowlistAdmitsName(list: CompiledAllowlist, rawName: string): boolean {
  const name = normalizeName(rawName);
  if (list.names.has(name)) return true;
  return list.suffixes.some((suffix) => name.endsWith(suffix) && name.length > suffix.length);
}

export function allowlistAdmitsAddress(list: CompiledAllowlist, ip: string): boolean {
  return isIPv4(ip) && list.cidrs.some((cidr) => cidrContains(cidr, ip));
}

/**
 * Reads a policy from untrusted JSON: the three shapes above, entries checked,
 * names lower-cased and duplicates dropped. Answers the problem (with the path
 * of the offending part) instead of throwing.
 */
export function readEgressPolicy(value: unknown): { ok: true; policy: EgressPolicy } | { ok: false; path: (string | number)[]; message: string } {
  if (value === 'allow_all' || value === 'deny_all') return { ok: true, policy: value };
  if (typeof value === 'string') return { ok: false, path: [], message: `must be "allow_all", "deny_all" or {"allow": [...]}; got "${value.slice(0, 40)}"` };
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    return { ok: false, path: [], message: 'must be "allow_all", "deny_all" or {"allow": [...]}' };
  }
  const extra = Object.keys(value).filter((k) => k !== 'allow');
  if (extra.length > 0)
    return { ok: false, path: [], message: `unknown field${extra.length > 1 ? 's' : ''} ${extra.join(', ')}; an allowlist is {"allow": [...]}` };
  const allow = (value as { allow?: unknown }).allow;
  if (!Array.isArray(allow)) return { ok: false, path: ['allow'], message: 'must be an array of names, "*.domain" wildcards and IPv4 CIDRs' };
  if (allow.length > maxAllowEntries) return { ok: false, path: ['allow'], message: `at most ${maxAllowEntries} entries` };
  const seen = new Set<string>();
  const entries: string[] = [];
  for (const [i, entry] of allow.entries()) {
    const problem = allowEntryProblem(entry as string);
    if (problem) return { ok: false, path: ['allow', i], message: problem };
    const cidr = /^[\d./]+$/.test(entry as string) ? parseCidr(entry as string) : undefined;
    const canonical = cidr ? cidr.text : normalizeName(entry as string);
    if (!seen.has(canonical)) entries.push(canonical);
    seen.add(canonical);
  }
  return { ok: true, policy: { allow: entries } };
}

/**
 * The zod form of readEgressPolicy, for request schemas on both sides.
 *
 * @example egressPolicySchema.parse({ allow: ['API.github.com', '203.0.113.7/24'] }) // { allow: ['api.github.com', '203.0.113.0/24'] }
 *
 * zod/mini, as the request schemas (lambdas/shared/schemas.ts); a classic zod schema may hold it. Marked pure, its
 * arguments too: bundles that never validate a policy drop it.
 */
export const egressPolicySchema = /* @__PURE__ */ z.pipe(
  /* @__PURE__ */ z.unknown(),
  /* @__PURE__ */ z.transform((value, ctx): EgressPolicy => {
    const read = readEgressPolicy(value);
    if (read.ok) return read.policy;
    ctx.issues.push({ code: 'custom', input: value, path: read.path, message: read.message });
    return z.NEVER;
  }),
);
