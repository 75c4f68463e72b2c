/**
 * A little internet of a test's own, in a network namespace on this machine:
 * a DNS server on a private address (as the AWS VPC resolver is: VPC+2, so the
 * sandbox firewall's private-range drops apply to it) and web servers (HTTPS
 * and HTTP) on "public-looking" addresses from 203.0.113.0/24 (documentation
 * space), reached from the host through a veth pair and host routes. Nothing
 * leaves the machine. Every name and address is the test's own.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const fixtures = join(dirname(fileURLToPath(import.meta.url)), '..', 'fixtures');

export interface UpstreamNet {
  /** The DNS server (port 53), at a private address. */
  dns: string;
  /** Web addresses, by role. */
  web: { shared: string; other: string; wild: string; cidr: string };
  /** Names the DNS server answers, and the address each has. */
  names: Record<string, string>;
  /** PEM of the CA that signed the web servers' certificate (for curl --cacert). */
  caPem: string;
  /** Questions the DNS server received ("<source> <name> <type>" lines). */
  questions(): string[];
  close(): void;
}

function ip(...args: string[]): void {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

function addressInUse(address: string): boolean {
  return (
    execFileSync('ip', ['-o', 'addr', 'show'], { encoding: 'utf8' }).includes(` ${address}/`) ||
    execFileSync('ip', ['route', 'show'], { encoding: 'utf8' }).includes(`${address} `)
  );
}

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

/** A CA and a certificate for *.egress.test and *.wild.egress.test signed by it. */
function makeCertificates(dir: string): { ca: string; cert: string; key: string } {
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  openssl(['req', '-x509', ...ec, '-days', '1', '-subj', '/CN=egress test CA', '-keyout', 'ca.key', '-out', 'ca.pem'], dir);
  openssl(['req', ...ec, '-subj', '/CN=egress.test', '-keyout', 'web.key', '-out', 'web.csr'], dir);
  writeFileSync(join(dir, 'web.ext'), 'subjectAltName=DNS:*.egress.test,DNS:*.wild.egress.test\n');
  openssl(
    ['x509', '-req', '-in', 'web.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '1', '-extfile', 'web.ext', '-out', 'web.pem'],
    dir,
  );
  return { ca: join(dir, 'ca.pem'), cert: join(dir, 'web.pem'), key: join(dir, 'web.key') };
}

function startIn(namespace: string, args: string[], output: string[]): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    const child = spawn('ip', ['netns', 'exec', namespace, process.execPath, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    const timer = setTimeout(() => reject(new Error(`${args[0]} did not start in 15 s: ${stderr}`)), 15_000);
    child.stderr!.on('data', (d) => (stderr += d));
    let buffered = '';
    child.stdout!.on('data', (d) => {
      buffered += d;
      const lines = buffered.split('\n');
      buffered = lines.pop()!;
      for (const line of lines) {
        if (line === 'ready') {
          clearTimeout(timer);
          resolve(child);
        } else output.push(line);
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${args[0]} exited (${code}) before it was ready: ${stderr}`));
    });
  });
}

/**
 * Makes the namespace, its addresses and servers. `ttl` is the DNS answers' TTL.
 *
 * @example const net = await startUpstreamNet(); ... net.close();
 */
export async function startUpstreamNet(o: { ttl?: number } = {}): Promise<UpstreamNet> {
  // Addresses of this run: a /30 in 10.231/16 for the link, four /32s in 203.0.113/24 for the web.
  let link = 0;
  let webBase = 0;
  for (let attempt = 0; ; attempt += 1) {
    link = randomInt(0, 64) * 4;
    webBase = randomInt(1, 15) * 16;
    const candidates = [`10.231.${randomInt(0, 256)}.${link + 1}`, `203.0.113.${webBase + 1}`];
    if (!candidates.some(addressInUse)) break;
    if (attempt > 20) throw new Error('no free test addresses in 10.231/16 and 203.0.113/24');
  }
  const third = randomInt(0, 256);
  const hostSide = `10.231.${third}.${link + 1}`;
  const nsSide = `10.231.${third}.${link + 2}`;
  const web = {
    shared: `203.0.113.${webBase + 1}`,
    other: `203.0.113.${webBase + 2}`,
    wild: `203.0.113.${webBase + 3}`,
    cidr: `203.0.113.${webBase + 4}`,
  };
  const tag = randomBytes(3).toString('hex');
  const namespace = `esup-${tag}`;
  const hostIf = `esh-${tag}`;
  const nsIf = `esn-${tag}`;
  const dir = mkdtempSync(join(tmpdir(), 'upstream-net-'));
  const children: ChildProcess[] = [];
  const questions: string[] = [];

  const close = () => {
    for (const child of children) child.kill('SIGKILL');
    for (const address of Object.values(web)) spawnSync('ip', ['route', 'del', `${address}/32`]);
    spawnSync('ip', ['link', 'del', hostIf]);
    spawnSync('ip', ['netns', 'del', namespace]);
    rmSync(dir, { recursive: true, force: true });
  };

  try {
    ip('netns', 'add', namespace);
    ip('link', 'add', hostIf, 'type', 'veth', 'peer', 'name', nsIf);
    ip('link', 'set', nsIf, 'netns', namespace);
    ip('addr', 'add', `${hostSide}/30`, 'dev', hostIf);
    ip('link', 'set', hostIf, 'up');
    const inNs = (...args: string[]) => ip('netns', 'exec', namespace, 'ip', ...args);
    inNs('link', 'set', 'lo', 'up');
    inNs('addr', 'add', `${nsSide}/30`, 'dev', nsIf);
    for (const address of Object.values(web)) inNs('addr', 'add', `${address}/32`, 'dev', 'lo');
    inNs('link', 'set', nsIf, 'up');
    inNs('route', 'add', 'default', 'via', hostSide);
    for (const address of Object.values(web)) ip('route', 'add', `${address}/32`, 'via', nsSide);

    const names: Record<string, string> = {
      'web-a.egress.test': web.shared,
      'web-b.egress.test': web.shared,
      'other.egress.test': web.other,
      'api.wild.egress.test': web.wild,
      'cidr.egress.test': web.cidr,
    };
    const zone = join(dir, 'zone.json');
    writeFileSync(zone, JSON.stringify({ ttl: o.ttl ?? 30, records: Object.fromEntries(Object.entries(names).map(([n, a]) => [n, [a]])) }));
    const certs = makeCertificates(dir);
    children.push(await startIn(namespace, [join(fixtures, 'upstream-dns-server.mjs'), nsSide, zone], questions));
    children.push(await startIn(namespace, [join(fixtures, 'upstream-web-server.mjs'), certs.cert, certs.key, ...Object.values(web)], []));
    return {
      dns: nsSide,
      web,
      names,
      caPem: readFileSync(certs.ca, 'utf8'),
      questions: () => [...questions],
      close,
    };
  } catch (error) {
    close();
    throw error;
  }
}
