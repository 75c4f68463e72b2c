/**
 * The sandbox network and its egress firewall.
 *
 * Sandboxes join one user-defined bridge with inter-container communication
 * off. Packets arriving from that bridge pass two host-managed chains:
 *   SBX-FWD-<bridge> (from DOCKER-USER, i.e. routed traffic): replies of
 *     established flows, then the EGRESS_ALLOW endpoints, then DROP to the
 *     link-local (instance metadata), private and carrier-grade NAT ranges;
 *   SBX-IN-<bridge> (from INPUT, i.e. the host itself, gateway included):
 *     replies, the EGRESS_ALLOW endpoints, then DROP.
 * With ip6tables present, the same two chains drop fd00:ec2::254 (IMDS over
 * IPv6) and everything addressed to the host.
 */
import { execFile } from 'node:child_process';
import { mkdir, rmdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { loadHostConfig, type EgressEndpoint, type HostConfig } from './config';
import { DockerApiError, DockerClient } from './docker';
import { HostAgentError } from './errors';
import { containerLabels, ownerLabelValue } from './protocol';

const run = promisify(execFile);

/** Ranges a sandbox must never reach: link-local (IMDS), RFC 1918, RFC 6598. */
export const blockedIpv4Ranges = ['169.254.0.0/16', '10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '100.64.0.0/10'];
export const blockedIpv6Ranges = ['fd00:ec2::254/128'];

const iccOption = 'com.docker.network.bridge.enable_icc';
const bridgeNameOption = 'com.docker.network.bridge.name';

export interface SandboxNetwork {
  name: string;
  id: string;
  /** Host interface of the bridge, e.g. br-1a2b3c4d5e6f. */
  bridge: string;
  /** The bridge's address on the host (sandboxes' default gateway). */
  gateway: string | undefined;
  subnet: string | undefined;
}

export interface EgressCheck {
  network: string;
  bridge: string | undefined;
  /** What is absent or wrong, one line each (iptables -S form where it is a rule); empty when all is in place. */
  missing: string[];
}

type Family = 'ipv4' | 'ipv6';

interface FamilyRules {
  family: Family;
  /** Managed chain name -> its exact rules, in order. */
  chains: Map<string, string[]>;
  /** Rules in built-in (or Docker's) chains that send the bridge's packets to ours. */
  jumps: { parent: string; rule: string }[];
}

const tools: Record<Family, { save: string; restore: string }> = {
  ipv4: { save: 'iptables-save', restore: 'iptables-restore' },
  ipv6: { save: 'ip6tables-save', restore: 'ip6tables-restore' },
};

/** The filter table as iptables-save prints it: chains and their rules in order. */
interface FilterTable {
  chains: Set<string>;
  rules: Map<string, string[]>;
}

async function readFilterTable(family: Family): Promise<FilterTable | undefined> {
  let output: string;
  try {
    ({ stdout: output } = await run(tools[family].save, ['-t', 'filter'], { maxBuffer: 64 * 1024 * 1024 }));
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new HostAgentError('internal_error', `${tools[family].save} failed: ${(error as Error).message.trim()}`);
  }
  const table: FilterTable = { chains: new Set(), rules: new Map() };
  for (const line of output.split('\n')) {
    if (line.startsWith(':')) table.chains.add(line.slice(1).split(' ')[0]!);
    else if (line.startsWith('-A ')) {
      const chain = line.split(' ')[1]!;
      const list = table.rules.get(chain);
      if (list) list.push(line);
      else table.rules.set(chain, [line]);
    }
  }
  return table;
}

function chainNames(bridge: string) {
  // iptables chain names stop at 28 characters; bridge names at 15.
  return { forward: `SBX-FWD-${bridge}`, input: `SBX-IN-${bridge}` };
}

function allowRules(chain: string, allow: EgressEndpoint[]): string[] {
  return allow.map(({ ip, port }) => `-A ${chain} -d ${ip}/32 -p tcp -m tcp --dport ${port} -j ACCEPT`);
}

/** The rules we want, for one family, given what the table already has (DOCKER-USER may be absent). */
function desiredRules(family: Family, bridge: string, allow: EgressEndpoint[], table: FilterTable): FamilyRules {
  const { forward, input } = chainNames(bridge);
  const established = (chain: string) => `-A ${chain} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`;
  const forwardParent = table.chains.has('DOCKER-USER') ? 'DOCKER-USER' : 'FORWARD';
  const chains = new Map<string, string[]>();
  if (family === 'ipv4') {
    chains.set(forward, [
      established(forward),
      ...allowRules(forward, allow),
      ...blockedIpv4Ranges.map((range) => `-A ${forward} -d ${range} -j DROP`),
    ]);
    chains.set(input, [established(input), ...allowRules(input, allow), `-A ${input} -j DROP`]);
  } else {
    chains.set(forward, blockedIpv6Ranges.map((range) => `-A ${forward} -d ${range} -j DROP`));
    chains.set(input, [established(input), `-A ${input} -j DROP`]);
  }
  return {
    family,
    chains,
    jumps: [
      { parent: forwardParent, rule: `-A ${forwardParent} -i ${bridge} -j ${forward}` },
      { parent: 'INPUT', rule: `-A INPUT -i ${bridge} -j ${input}` },
    ],
  };
}

/** A jump counts only if it comes before anything that would end the parent chain for our packets. */
function jumpInPlace(table: FilterTable, parent: string, rule: string): boolean {
  const rules = table.rules.get(parent) ?? [];
  const at = rules.indexOf(rule);
  if (at === -1) return false;
  const terminal = rules.findIndex((line) => /^-A \S+ -j (RETURN|ACCEPT)$/.test(line));
  return terminal === -1 || at < terminal;
}

function missingRules(desired: FamilyRules, table: FilterTable): string[] {
  const missing: string[] = [];
  const tag = desired.family === 'ipv6' ? 'ip6tables ' : '';
  for (const [chain, rules] of desired.chains) {
    const actual = table.rules.get(chain) ?? [];
    if (!table.chains.has(chain)) missing.push(`${tag}-N ${chain}`);
    const absent = rules.filter((rule) => !actual.includes(rule));
    missing.push(...absent.map((rule) => tag + rule));
    if (absent.length === 0 && actual.join('\n') !== rules.join('\n')) {
      missing.push(`${tag}chain ${chain} has extra or reordered rules`);
    }
  }
  for (const { parent, rule } of desired.jumps) {
    if (!jumpInPlace(table, parent, rule)) missing.push(`${tag}${rule.replace(/^-A /, '-I ')} (before any RETURN/ACCEPT)`);
  }
  return missing;
}

/** Rewrites our chains atomically (one iptables-restore --noflush) and (re)places the jumps. */
async function installRules(desired: FamilyRules, table: FilterTable): Promise<void> {
  const lines = ['*filter'];
  // With --noflush, declaring a chain creates it or flushes it: a whole-chain replace in one commit.
  for (const chain of desired.chains.keys()) lines.push(`:${chain} - [0:0]`);
  for (const rules of desired.chains.values()) lines.push(...rules);
  for (const { parent, rule } of desired.jumps) {
    if (jumpInPlace(table, parent, rule)) continue;
    const copies = (table.rules.get(parent) ?? []).filter((line) => line === rule).length;
    for (let i = 0; i < copies; i += 1) lines.push(rule.replace(/^-A /, '-D '));
    lines.push(rule.replace(/^-A (\S+) /, '-I $1 1 '));
  }
  lines.push('COMMIT', '');
  await new Promise<void>((resolve, reject) => {
    const child = execFile(tools[desired.family].restore, ['-w', '10', '--noflush'], (error, _stdout, stderr) => {
      if (error) reject(new HostAgentError('internal_error', `${tools[desired.family].restore} failed: ${stderr.trim() || error.message}`));
      else resolve();
    });
    child.stdin!.end(lines.join('\n'));
  });
}

/** Serialises rule installs across concurrent host-agent processes (mkdir is atomic). */
async function withHostLock<T>(config: HostConfig, name: string, fn: () => Promise<T>): Promise<T> {
  const lock = join(config.stateDir, 'locks', name);
  await mkdir(join(config.stateDir, 'locks'), { recursive: true });
  const deadline = Date.now() + 15_000;
  for (;;) {
    try {
      await mkdir(lock);
      break;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      // A holder that died leaves the directory behind: take over after 30 s.
      const age = await stat(lock).then((s) => Date.now() - s.mtimeMs, () => 0);
      if (age > 30_000) await rmdir(lock).catch(() => undefined);
      else if (Date.now() > deadline) throw new HostAgentError('internal_error', `timed out waiting for the lock ${lock}`);
      else await new Promise((r) => setTimeout(r, 25));
    }
  }
  try {
    return await fn();
  } finally {
    await rmdir(lock).catch(() => undefined);
  }
}

function describeNetwork(info: NonNullable<Awaited<ReturnType<DockerClient['inspectNetwork']>>>): SandboxNetwork {
  const ipam = info.IPAM?.Config?.[0];
  return {
    name: info.Name,
    id: info.Id,
    bridge: info.Options?.[bridgeNameOption] || `br-${info.Id.slice(0, 12)}`,
    gateway: ipam?.Gateway,
    subnet: ipam?.Subnet,
  };
}

function checkNetworkShape(info: NonNullable<Awaited<ReturnType<DockerClient['inspectNetwork']>>>): string[] {
  const problems: string[] = [];
  if (info.Driver !== 'bridge') problems.push(`network ${info.Name} uses driver ${info.Driver}, not bridge`);
  if (info.Options?.[iccOption] !== 'false') {
    problems.push(`network ${info.Name} allows inter-container traffic (${iccOption} is not false); remove it so the host-agent recreates it`);
  }
  return problems;
}

async function findOrCreateNetwork(config: HostConfig, docker: DockerClient): Promise<SandboxNetwork> {
  const name = config.sandboxNetwork;
  let info = await docker.inspectNetwork(name);
  if (!info) {
    try {
      await docker.createNetwork({
        Name: name,
        Driver: 'bridge',
        CheckDuplicate: true,
        Options: { [iccOption]: 'false' },
        Labels: { [containerLabels.owner]: ownerLabelValue },
      });
    } catch (error) {
      // Another host-agent created it first: use theirs.
      if (!(error instanceof DockerApiError && error.statusCode === 409)) throw error;
    }
    info = await docker.inspectNetwork(name);
    if (!info) throw new HostAgentError('docker_error', `network ${name} vanished right after it was created`);
  }
  const problems = checkNetworkShape(info);
  if (problems.length > 0) throw new HostAgentError('docker_error', problems.join('; '));
  return describeNetwork(info);
}

async function applyEgressRules(config: HostConfig, network: SandboxNetwork): Promise<void> {
  for (const family of ['ipv4', 'ipv6'] as const) {
    const table = await readFilterTable(family);
    if (!table) {
      if (family === 'ipv4') throw new HostAgentError('internal_error', 'iptables-save not found: install iptables, the egress firewall needs it');
      continue;
    }
    const desired = desiredRules(family, network.bridge, config.egressAllow, table);
    if (missingRules(desired, table).length === 0) continue;
    await withHostLock(config, `egress-${family}`, async () => {
      const fresh = (await readFilterTable(family))!;
      const again = desiredRules(family, network.bridge, config.egressAllow, fresh);
      if (missingRules(again, fresh).length > 0) await installRules(again, fresh);
    });
  }
}

const ensured = new Map<string, Promise<SandboxNetwork>>();

/**
 * Makes sure the sandbox network exists (ICC off) and its egress rules are in
 * place, installing what is missing; idempotent. A check costs one network
 * inspect and one iptables-save per family; the answer is memoised for the
 * life of the process (a long-lived daemon passes `recheck` to look again).
 *
 * @example
 *   const { name, gateway } = await ensureSandboxNetwork();
 */
export function ensureSandboxNetwork(
  config: HostConfig = loadHostConfig(),
  docker = new DockerClient(config.dockerSocket),
  options: { recheck?: boolean } = {},
): Promise<SandboxNetwork> {
  const key = `${config.sandboxNetwork}|${config.egressAllow.map((e) => `${e.ip}:${e.port}`).join(',')}`;
  let pending = options.recheck ? undefined : ensured.get(key);
  if (!pending) {
    pending = (async () => {
      const network = await findOrCreateNetwork(config, docker);
      await applyEgressRules(config, network);
      return network;
    })();
    ensured.set(key, pending);
    pending.catch(() => ensured.delete(key));
  }
  return pending;
}

/**
 * Reports what the sandbox network and its egress firewall lack, changing nothing.
 *
 * @example
 *   const { missing } = await checkEgressRules(); // [] when all is in place
 */
export async function checkEgressRules(config: HostConfig = loadHostConfig(), docker = new DockerClient(config.dockerSocket)): Promise<EgressCheck> {
  const info = await docker.inspectNetwork(config.sandboxNetwork);
  if (!info) return { network: config.sandboxNetwork, bridge: undefined, missing: [`network ${config.sandboxNetwork} does not exist`] };
  const network = describeNetwork(info);
  const missing = checkNetworkShape(info);
  for (const family of ['ipv4', 'ipv6'] as const) {
    const table = await readFilterTable(family);
    if (!table) {
      if (family === 'ipv4') missing.push('iptables-save not found');
      continue;
    }
    missing.push(...missingRules(desiredRules(family, network.bridge, config.egressAllow, table), table));
  }
  return { network: network.name, bridge: network.bridge, missing };
}

/**
 * Removes the sandbox network and its firewall chains (for tests and host
 * teardown). Fails if containers are still attached.
 */
export async function removeSandboxNetwork(config: HostConfig = loadHostConfig(), docker = new DockerClient(config.dockerSocket)): Promise<void> {
  const info = await docker.inspectNetwork(config.sandboxNetwork);
  if (!info) return;
  const { bridge } = describeNetwork(info);
  await docker.removeNetwork(info.Id);
  ensured.clear();
  for (const family of ['ipv4', 'ipv6'] as const) {
    const table = await readFilterTable(family);
    if (!table) continue;
    const desired = desiredRules(family, bridge, [], table);
    const lines = ['*filter'];
    for (const { parent, rule } of desired.jumps) {
      for (const line of table.rules.get(parent) ?? []) if (line === rule) lines.push(rule.replace(/^-A /, '-D '));
    }
    for (const chain of desired.chains.keys()) {
      if (table.chains.has(chain)) lines.push(`-F ${chain}`, `-X ${chain}`);
    }
    if (lines.length === 1) continue;
    lines.push('COMMIT', '');
    await new Promise<void>((resolve, reject) => {
      const child = execFile(tools[family].restore, ['-w', '10', '--noflush'], (error, _stdout, stderr) =>
        error ? reject(new HostAgentError('internal_error', `${tools[family].restore} failed: ${stderr.trim() || error.message}`)) : resolve(),
      );
      child.stdin!.end(lines.join('\n'));
    });
  }
}
