/**
 * Where a redirected connection was going. The nat rules REDIRECT a
 * sandbox's TCP to the egress proxy; the kernel keeps the original
 * destination in its connection tracking table, which Node cannot ask for
 * directly (no SO_ORIGINAL_DST). It is read from /proc/net/nf_conntrack
 * where the kernel offers it (CONFIG_NF_CONNTRACK_PROCFS), else from the
 * `conntrack` tool (conntrack-tools), which asks the kernel over netlink.
 */
import { execFile } from 'node:child_process';
import { access, readFile } from 'node:fs/promises';
import { promisify } from 'node:util';

const run = promisify(execFile);
const procPath = '/proc/net/nf_conntrack';
/** The pauses between reads of the table while a redirected connection's entry is not found in it. */
const lookupPausesMs = [5, 10, 20, 40, 80, 160];

export interface Endpoint {
  ip: string;
  port: number;
}

export interface TrackedFlow {
  original: { src: Endpoint; dst: Endpoint };
  reply: { src: Endpoint; dst: Endpoint };
}

/**
 * Reads one TCP line of /proc/net/nf_conntrack or `conntrack -L` output: the
 * first src/dst/sport/dport are the original direction, the second the reply.
 */
export function parseConntrackLine(line: string): TrackedFlow | undefined {
  if (!/\btcp\b/.test(line)) return undefined;
  const values = (key: string) => [...line.matchAll(new RegExp(`(?:^|\\s)${key}=(\\S+)`, 'g'))].map((m) => m[1]!);
  const [src, dst, sport, dport] = [values('src'), values('dst'), values('sport'), values('dport')];
  if (src.length < 2 || dst.length < 2 || sport.length < 2 || dport.length < 2) return undefined;
  return {
    original: { src: { ip: src[0]!, port: Number(sport[0]) }, dst: { ip: dst[0]!, port: Number(dport[0]) } },
    reply: { src: { ip: src[1]!, port: Number(sport[1]) }, dst: { ip: dst[1]!, port: Number(dport[1]) } },
  };
}

/** The flow from `client` that was redirected to `proxy`, among `lines`. */
export function findRedirected(lines: Iterable<string>, client: Endpoint, proxy: Endpoint): Endpoint | undefined {
  for (const line of lines) {
    if (!line.includes(`sport=${client.port} `)) continue;
    const flow = parseConntrackLine(line);
    if (!flow) continue;
    const o = flow.original;
    const r = flow.reply;
    if (o.src.ip === client.ip && o.src.port === client.port && r.src.ip === proxy.ip && r.src.port === proxy.port) return o.dst;
  }
  return undefined;
}

export type OriginalDestination = (client: Endpoint, proxy: Endpoint) => Promise<Endpoint | undefined>;

/**
 * The lookup this host supports; throws (with what to install) when neither is there.
 *
 * @example const lookup = await conntrackLookup(); const dst = await lookup(client, proxy);
 */
export async function conntrackLookup(): Promise<{ source: 'procfs' | 'conntrack-tool'; lookup: OriginalDestination }> {
  if (
    await access(procPath).then(
      () => true,
      () => false,
    )
  ) {
    // Lookups that arrive together share one read of the table.
    let batch: Promise<string[]> | undefined;
    const table = () =>
      (batch ??= readFile(procPath, 'utf8')
        .then((text) => text.split('\n'))
        .finally(() => setTimeout(() => (batch = undefined), 0)));
    return {
      source: 'procfs',
      lookup: async (client, proxy) => {
        // The entry is confirmed before the handshake completes, but one read of the file can miss it: the kernel
        // walks a hash table that other connections change under it (one miss in three reads 5 ms apart, seen in CI
        // on a busy machine). Fresh reads, further apart each time, for about a third of a second.
        for (const pauseMs of lookupPausesMs) {
          const found = findRedirected(await table(), client, proxy);
          if (found) return found;
          await new Promise((r) => setTimeout(r, pauseMs));
        }
        return findRedirected(await table(), client, proxy);
      },
    };
  }
  try {
    await run('conntrack', ['--version']);
  } catch {
    throw new Error(
      `the egress proxy needs the kernel's connection table: ${procPath} is absent (CONFIG_NF_CONNTRACK_PROCFS off) and the conntrack tool is not installed (dnf/apt install conntrack-tools / conntrack)`,
    );
  }
  return {
    source: 'conntrack-tool',
    lookup: async (client, proxy) => {
      const { stdout } = await run('conntrack', ['-L', '-p', 'tcp', '--orig-src', client.ip, '--orig-port-src', String(client.port)], {
        maxBuffer: 1024 * 1024,
      });
      return findRedirected(stdout.split('\n'), client, proxy);
    },
  };
}
