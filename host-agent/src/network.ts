/**
 * The sandbox network and its egress firewall.
 *
 * Sandboxes join one user-defined bridge with inter-container communication
 * off. What leaves a sandbox is decided in three places:
 *   nat SBX-NAT-<bridge> (from PREROUTING): every DNS packet (port 53, to
 *     anywhere) goes to the sandbox resolver on the gateway; TCP to the host
 *     itself and to the EGRESS_ALLOW endpoints is left alone; the rest of the
 *     TCP goes to SBX-NPOL, which redirects it to the egress proxy, except
 *     for sandboxes whose policy is allow_all (their fast path: straight out,
 *     but TCP to private ranges is still redirected, so its refusal is logged);
 *   filter SBX-FWD-<bridge> (from DOCKER-USER, routed traffic): the
 *     EGRESS_ALLOW endpoints, then SBX-POL: allow_all sandboxes go on to
 *     SBX-OPEN (replies, DNS-over-TLS dropped, private, link-local and
 *     carrier-grade NAT ranges dropped); every other sandbox is dropped here
 *     (its TCP never gets this far: the proxy carries it);
 *   filter SBX-IN-<bridge> (from INPUT, the host itself): replies, the
 *     EGRESS_ALLOW endpoints, the resolver (53) and the proxy (only for
 *     connections the nat rules redirected), then DROP.
 * SBX-POL and SBX-NPOL list the allow_all sandboxes by address; they are
 * rebuilt from Docker's view and the policy files after every start, stop
 * and policy change (refreshSandboxPolicies), so an address Docker hands to a
 * new sandbox never keeps a departed sandbox's fast path.
 * With ip6tables present, the filter chains drop fd00:ec2::254 (IMDS over
 * IPv6) and everything addressed to the host.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdir, rmdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { loadHostConfig, sandboxPaths, type EgressEndpoint, type HostConfig } from './config';
import { DockerApiError, DockerClient } from './docker';
import { blockedIpv4Ranges, readEgressPolicy } from '../../contract/egress-policy';
import { coalesced } from './coalesced';
import { allEnded } from './all-ended';
import { HostAgentError } from './errors';
import { containerLabels, ownerLabelValue } from '../../contract/host-protocol';
import { sandboxIdPattern } from '../../contract/ids';

const run = promisify(execFile);

export { blockedIpv4Ranges };
export const blockedIpv6Ranges = ['fd00:ec2::254/128'];

const iccOption = 'com.docker.network.bridge.enable_icc';
const bridgeNameOption = 'com.docker.network.bridge.name';
/** Port of the sandbox resolver on the gateway. */
export const resolverPort = 53;

export interface SandboxNetwork {
  name: string;
  id: string;
  /** Host interface of the bridge, e.g. br-1a2b3c4d5e6f. */
  bridge: string;
  /** The bridge's address on the host (sandboxes' default gateway, resolver and egress proxy). */
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
type Table = 'filter' | 'nat';

interface TableRules {
  family: Family;
  table: Table;
  /** Managed chain name -> its exact rules, in order. */
  chains: Map<string, string[]>;
  /** Rules in built-in (or Docker's) chains that send the bridge's packets to ours. */
  jumps: { parent: string; rule: string }[];
}

const tools: Record<Family, { save: string; restore: string }> = {
  ipv4: { save: 'iptables-save', restore: 'iptables-restore' },
  ipv6: { save: 'ip6tables-save', restore: 'ip6tables-restore' },
};

/** One table as iptables-save prints it: chains and their rules in order. */
interface SavedTable {
  chains: Set<string>;
  rules: Map<string, string[]>;
}

/** One table of a readTables answer; a table the kernel does not have yet is an empty one (a restore makes it). */
function tableIn(tables: Map<string, SavedTable>, table: Table): SavedTable {
  return tables.get(table) ?? { chains: new Set(), rules: new Map() };
}

/**
 * Every table of `family` from one iptables-save (the egress rules span two: one process, not two); a
 * table the kernel does not have is absent from the map. Undefined when iptables-save is not installed.
 */
async function readTables(family: Family): Promise<Map<string, SavedTable> | undefined> {
  let output: string;
  try {
    ({ stdout: output } = await run(tools[family].save, [], { maxBuffer: 64 * 1024 * 1024 }));
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new HostAgentError('internal_error', `${tools[family].save} failed: ${(error as Error).message.trim()}`);
  }
  const tables = new Map<string, SavedTable>();
  let saved: SavedTable | undefined;
  for (const line of output.split('\n')) {
    if (line.startsWith('*')) {
      saved = { chains: new Set(), rules: new Map() };
      tables.set(line.slice(1).trim(), saved);
    } else if (!saved) continue;
    else if (line.startsWith(':')) saved.chains.add(line.slice(1).split(' ')[0]!);
    else if (line.startsWith('-A ')) {
      const chain = line.split(' ')[1]!;
      const list = saved.rules.get(chain);
      if (list) list.push(line);
      else saved.rules.set(chain, [line]);
    }
  }
  return tables;
}

/** iptables chain names stop at 28 characters; bridge names at 15. */
export function chainNames(bridge: string) {
  return {
    forward: `SBX-FWD-${bridge}`,
    input: `SBX-IN-${bridge}`,
    /** Dynamic: allow_all sandboxes by address, then DROP. */
    policy: `SBX-POL-${bridge}`,
    open: `SBX-OPEN-${bridge}`,
    nat: `SBX-NAT-${bridge}`,
    /** Dynamic: allow_all sandboxes by address, then REDIRECT to the proxy. */
    natPolicy: `SBX-NPOL-${bridge}`,
    natOpen: `SBX-NOPEN-${bridge}`,
  };
}

function allowRules(chain: string, allow: EgressEndpoint[], target: 'ACCEPT' | 'RETURN'): string[] {
  return allow.map(({ ip, port }) => `-A ${chain} -d ${ip}/32 -p tcp -m tcp --dport ${port} -j ${target}`);
}

/** The dynamic head of SBX-POL / SBX-NPOL: one rule per allow_all sandbox address, in a stable order. */
function openRules(chain: string, target: string, openIps: readonly string[]): string[] {
  return [...openIps].sort().map((ip) => `-A ${chain} -s ${ip}/32 -g ${target}`);
}

interface DesiredInput {
  bridge: string;
  allow: EgressEndpoint[];
  proxyPort: number;
  /** Addresses of the sandboxes whose policy is allow_all. */
  openIps: readonly string[];
}

/** The rules we want, for one family and table, given what the table already has (DOCKER-USER may be absent). */
function desiredRules(family: Family, table: Table, input: DesiredInput, saved: SavedTable): TableRules {
  const c = chainNames(input.bridge);
  const established = (chain: string) => `-A ${chain} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`;
  const chains = new Map<string, string[]>();
  const redirect = `-j REDIRECT --to-ports ${input.proxyPort}`;
  if (family === 'ipv4' && table === 'nat') {
    chains.set(c.nat, [
      // Every DNS packet, whatever its address, goes to the sandbox resolver: the only DNS path out.
      `-A ${c.nat} -p udp -m udp --dport ${resolverPort} -j REDIRECT --to-ports ${resolverPort}`,
      `-A ${c.nat} -p tcp -m tcp --dport ${resolverPort} -j REDIRECT --to-ports ${resolverPort}`,
      // The host's own addresses: SBX-IN decides.
      `-A ${c.nat} -m addrtype --dst-type LOCAL -j RETURN`,
      ...allowRules(c.nat, input.allow, 'RETURN'),
      `-A ${c.nat} -p tcp -g ${c.natPolicy}`,
    ]);
    chains.set(c.natPolicy, [...openRules(c.natPolicy, c.natOpen, input.openIps), `-A ${c.natPolicy} -p tcp ${redirect}`]);
    // allow_all goes straight out, but its attempts at private ranges reach the proxy, which refuses and logs them.
    chains.set(
      c.natOpen,
      blockedIpv4Ranges.map((range) => `-A ${c.natOpen} -d ${range} -p tcp ${redirect}`),
    );
    return { family, table, chains, jumps: [{ parent: 'PREROUTING', rule: `-A PREROUTING -i ${input.bridge} -j ${c.nat}` }] };
  }
  const forwardParent = saved.chains.has('DOCKER-USER') ? 'DOCKER-USER' : 'FORWARD';
  if (family === 'ipv4') {
    chains.set(c.forward, [...allowRules(c.forward, input.allow, 'ACCEPT'), `-A ${c.forward} -g ${c.policy}`]);
    chains.set(c.policy, [...openRules(c.policy, c.open, input.openIps), `-A ${c.policy} -j DROP`]);
    chains.set(c.open, [
      established(c.open),
      // DNS-over-TLS would be a DNS path around the resolver.
      `-A ${c.open} -p tcp -m tcp --dport 853 -j DROP`,
      `-A ${c.open} -p udp -m udp --dport 853 -j DROP`,
      ...blockedIpv4Ranges.map((range) => `-A ${c.open} -d ${range} -j DROP`),
    ]);
    chains.set(c.input, [
      established(c.input),
      ...allowRules(c.input, input.allow, 'ACCEPT'),
      `-A ${c.input} -p udp -m udp --dport ${resolverPort} -j ACCEPT`,
      `-A ${c.input} -p tcp -m tcp --dport ${resolverPort} -j ACCEPT`,
      // Only connections the nat rules redirected: the proxy is no service of its own.
      `-A ${c.input} -p tcp -m tcp --dport ${input.proxyPort} -m conntrack --ctstate DNAT -j ACCEPT`,
      `-A ${c.input} -j DROP`,
    ]);
  } else {
    chains.set(
      c.forward,
      blockedIpv6Ranges.map((range) => `-A ${c.forward} -d ${range} -j DROP`),
    );
    chains.set(c.input, [established(c.input), `-A ${c.input} -j DROP`]);
  }
  return {
    family,
    table,
    chains,
    jumps: [
      { parent: forwardParent, rule: `-A ${forwardParent} -i ${input.bridge} -j ${c.forward}` },
      { parent: 'INPUT', rule: `-A INPUT -i ${input.bridge} -j ${c.input}` },
    ],
  };
}

/** A jump counts only if it comes before anything that would end the parent chain for our packets. */
function jumpInPlace(saved: SavedTable, parent: string, rule: string): boolean {
  const rules = saved.rules.get(parent) ?? [];
  const at = rules.indexOf(rule);
  if (at === -1) return false;
  const terminal = rules.findIndex((line) => /^-A \S+ -j (RETURN|ACCEPT)$/.test(line));
  return terminal === -1 || at < terminal;
}

function missingRules(desired: TableRules, saved: SavedTable): string[] {
  const missing: string[] = [];
  const tag = `${desired.family === 'ipv6' ? 'ip6tables ' : ''}${desired.table === 'nat' ? '-t nat ' : ''}`;
  for (const [chain, rules] of desired.chains) {
    const actual = saved.rules.get(chain) ?? [];
    if (!saved.chains.has(chain)) missing.push(`${tag}-N ${chain}`);
    const absent = rules.filter((rule) => !actual.includes(rule));
    missing.push(...absent.map((rule) => tag + rule));
    if (absent.length === 0 && actual.join('\n') !== rules.join('\n')) {
      missing.push(`${tag}chain ${chain} has extra or reordered rules`);
    }
  }
  for (const { parent, rule } of desired.jumps) {
    if (!jumpInPlace(saved, parent, rule)) missing.push(`${tag}${rule.replace(/^-A /, '-I ')} (before any RETURN/ACCEPT)`);
  }
  return missing;
}

/** Feeds `lines` (whole `*table` ... `COMMIT` blocks) to one iptables-restore that keeps what it is not told to change. */
async function restore(family: Family, lines: string[]): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const child = execFile(tools[family].restore, ['-w', '10', '--noflush'], (error, _stdout, stderr) => {
      if (error) reject(new HostAgentError('internal_error', `${tools[family].restore} failed: ${stderr.trim() || error.message}`));
      else resolve();
    });
    // iptables-restore wants its input's last line ended.
    child.stdin!.end(`${lines.join('\n')}\n`);
  });
}

/**
 * The iptables-restore block (`*table` ... `COMMIT`) that rewrites the given chains (all of `desired`'s when
 * `only` is absent, with the jumps to them); several blocks may go to one restore, applied in order.
 */
function rulesBlock(desired: TableRules, saved: SavedTable, only?: readonly string[]): string[] {
  const lines = [`*${desired.table}`];
  const chains = [...desired.chains].filter(([chain]) => !only || only.includes(chain));
  // With --noflush, declaring a chain creates it or flushes it: a whole-chain replace in one commit.
  for (const [chain] of chains) lines.push(`:${chain} - [0:0]`);
  for (const [, rules] of chains) lines.push(...rules);
  if (!only) {
    for (const { parent, rule } of desired.jumps) {
      if (jumpInPlace(saved, parent, rule)) continue;
      const copies = (saved.rules.get(parent) ?? []).filter((line) => line === rule).length;
      for (let i = 0; i < copies; i += 1) lines.push(rule.replace(/^-A /, '-D '));
      lines.push(rule.replace(/^-A (\S+) /, '-I $1 1 '));
    }
  }
  lines.push('COMMIT');
  return lines;
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
      const age = await stat(lock).then(
        (s) => Date.now() - s.mtimeMs,
        () => 0,
      );
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

type NetworkInfo = NonNullable<Awaited<ReturnType<DockerClient['inspectNetwork']>>>;

function describeNetwork(info: NetworkInfo): SandboxNetwork {
  const ipam = info.IPAM?.Config?.[0];
  return {
    name: info.Name,
    id: info.Id,
    bridge: info.Options?.[bridgeNameOption] || `br-${info.Id.slice(0, 12)}`,
    gateway: ipam?.Gateway,
    subnet: ipam?.Subnet,
  };
}

function checkNetworkShape(info: NetworkInfo): string[] {
  const problems: string[] = [];
  if (info.Driver !== 'bridge') problems.push(`network ${info.Name} uses driver ${info.Driver}, not bridge`);
  if (info.Options?.[iccOption] !== 'false') {
    problems.push(`network ${info.Name} allows inter-container traffic (${iccOption} is not false); remove it so the host-agent recreates it`);
  }
  if (!info.IPAM?.Config?.[0]?.Gateway) problems.push(`network ${info.Name} has no IPv4 gateway: the sandbox resolver and egress proxy live there`);
  return problems;
}

async function findOrCreateNetwork(config: HostConfig, docker: DockerClient): Promise<NetworkInfo> {
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
  return info;
}

/**
 * Whether a sandbox takes the allow_all fast path: its policy file says so,
 * or it has none (made before policies existed: the default). A file that
 * cannot be read keeps the sandbox on the proxy, which refuses its traffic.
 */
function isAllowAll(config: HostConfig, sandboxId: string): boolean {
  let text: string;
  try {
    text = readFileSync(sandboxPaths(config, sandboxId).egressPolicy, 'utf8');
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'ENOENT';
  }
  try {
    const read = readEgressPolicy(JSON.parse(text));
    return read.ok && read.policy === 'allow_all';
  } catch {
    return false;
  }
}

/** Addresses of the network's sandboxes whose policy is allow_all, from Docker's view (running containers only). */
function openAddresses(config: HostConfig, info: NetworkInfo): string[] {
  const ips: string[] = [];
  for (const [id, container] of Object.entries(info.Containers ?? {})) {
    const ip = (container.IPv4Address ?? '').split('/')[0];
    const name = renaming.get(id) ?? container.Name;
    if (ip && sandboxIdPattern.test(name) && isAllowAll(config, name)) ips.push(ip);
  }
  return ips;
}

/** Containers being renamed to a sandbox's id (a warm pool claim), by container id: a refresh takes them by that name already. */
const renaming = new Map<string, string>();

/**
 * Runs `rename` (which names container `containerId` `sandboxId`) and a firewall refresh that already takes
 * the container as that sandbox, side by side: a claim need not wait for the engine's rename to rebuild the
 * fast path. Both have ended when it resolves.
 */
export async function refreshAsRenamed(
  config: HostConfig,
  docker: DockerClient,
  containerId: string,
  sandboxId: string,
  rename: () => Promise<void>,
): Promise<void> {
  renaming.set(containerId, sandboxId);
  try {
    await allEnded([rename(), refreshSandboxPolicies(config, docker)]);
  } finally {
    renaming.delete(containerId);
  }
}

function desiredInput(config: HostConfig, info: NetworkInfo): DesiredInput {
  return { bridge: describeNetwork(info).bridge, allow: config.egressAllow, proxyPort: config.egressProxyPort, openIps: openAddresses(config, info) };
}

/** The tables the egress rules live in, by family: each family's are read with one save and written with one restore. */
const families: { family: Family; tables: Table[] }[] = [
  { family: 'ipv4', tables: ['filter', 'nat'] },
  { family: 'ipv6', tables: ['filter'] },
];

async function applyEgressRules(config: HostConfig, docker: DockerClient, info: NetworkInfo): Promise<void> {
  for (const { family, tables } of families) {
    const saved = await readTables(family);
    if (!saved) {
      if (family === 'ipv4') throw new HostAgentError('internal_error', 'iptables-save not found: install iptables, the egress firewall needs it');
      continue;
    }
    /** Each table's rules as wanted, with what it holds, where it lacks some. */
    const lacking = (now: Map<string, SavedTable>, network: NetworkInfo) => {
      const input = desiredInput(config, network);
      return tables
        .map((table) => {
          const saved = tableIn(now, table);
          return { desired: desiredRules(family, table, input, saved), saved };
        })
        .filter(({ desired, saved }) => missingRules(desired, saved).length > 0);
    };
    if (lacking(saved, info).length === 0) continue;
    await withHostLock(config, `egress-${family}`, async () => {
      // Under the lock: the tables and the containers (and so the open addresses) as they are now.
      const fresh = (await readTables(family))!;
      const now = (await docker.inspectNetwork(info.Name)) ?? info;
      const blocks = lacking(fresh, now).flatMap(({ desired, saved }) => rulesBlock(desired, saved));
      if (blocks.length > 0) await restore(family, blocks);
    });
  }
}

const ensured = new Map<string, Promise<SandboxNetwork>>();

/**
 * Makes sure the sandbox network exists (ICC off) and its egress rules are in
 * place, installing what is missing; idempotent. A check costs one network
 * inspect and one iptables-save per table; the answer is memoised for the
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
  const key = `${config.sandboxNetwork}|${config.egressProxyPort}|${config.egressAllow.map((e) => `${e.ip}:${e.port}`).join(',')}`;
  let pending = options.recheck ? undefined : ensured.get(key);
  if (!pending) {
    pending = (async () => {
      const info = await findOrCreateNetwork(config, docker);
      await applyEgressRules(config, docker, info);
      return describeNetwork(info);
    })();
    ensured.set(key, pending);
    pending.catch(() => ensured.delete(key));
  }
  return pending;
}

/**
 * Rebuilds the per-sandbox part of the firewall (which addresses take the
 * allow_all fast path) from Docker's view of the network and the policy
 * files. Call it after a sandbox's container starts or stops and after its
 * policy changes; a sandbox leaving the fast path is redirected to the proxy
 * before its forward rule goes, one joining it is opened before it stops
 * being redirected, so no packet is let through by a half-made change.
 */
export function refreshSandboxPolicies(config: HostConfig, docker: DockerClient): Promise<void> {
  // A burst of creates asks for fifty refreshes at once; each rebuilds from the whole state, so
  // one run that starts after a caller asked serves every caller that asked before it started.
  const key = `${config.stateDir}\0${config.sandboxNetwork}\0${config.dockerSocket}`;
  let refresher = refreshers.get(key);
  if (!refresher) {
    refresher = coalesced(() => refreshOnce(config, docker));
    refreshers.set(key, refresher);
  }
  return refresher();
}

/** One refresher per host state directory and network (tests run several hosts in one process). */
const refreshers = new Map<string, () => Promise<void>>();

async function refreshOnce(config: HostConfig, docker: DockerClient): Promise<void> {
  await withHostLock(config, 'egress-ipv4', async () => {
    const info = await docker.inspectNetwork(config.sandboxNetwork);
    if (!info) return;
    const input = desiredInput(config, info);
    const c = chainNames(input.bridge);
    const tables = await readTables('ipv4');
    if (!tables) throw new HostAgentError('internal_error', 'iptables-save not found: install iptables, the egress firewall needs it');
    const [filter, nat] = [tables.get('filter'), tables.get('nat')];
    if (!filter?.chains.has(c.policy) || !nat?.chains.has(c.natPolicy)) {
      throw new HostAgentError('internal_error', `the egress chains of ${input.bridge} are missing; the host daemon (or the next create) installs them`);
    }
    const wanted = {
      filter: desiredRules('ipv4', 'filter', input, filter),
      nat: desiredRules('ipv4', 'nat', input, nat),
    };
    const same = (saved: SavedTable, desired: TableRules, chain: string) => (saved.rules.get(chain) ?? []).join('\n') === desired.chains.get(chain)!.join('\n');
    if (same(filter, wanted.filter, c.policy) && same(nat, wanted.nat, c.natPolicy)) return;
    const wasOpen = (filter.rules.get(c.policy) ?? []).map((rule) => / -s (\S+)\/32 /.exec(rule)?.[1]).filter((ip): ip is string => Boolean(ip));
    // Open the union first, then switch the redirects, then close what left: three blocks of one
    // iptables-restore (a process each cost a refresh about 25 ms on a quiet machine, several times that
    // under load), applied in this order (iptables-legacy commits each block; iptables-nft, the default
    // on Amazon Linux 2023 and here, makes the whole input one transaction).
    const union = desiredRules('ipv4', 'filter', { ...input, openIps: [...new Set([...wasOpen, ...input.openIps])] }, filter);
    await restore('ipv4', [
      ...rulesBlock(union, filter, [c.policy]),
      ...rulesBlock(wanted.nat, nat, [c.natPolicy]),
      ...rulesBlock(wanted.filter, filter, [c.policy]),
    ]);
  });
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
  for (const { family, tables } of families) {
    const saved = await readTables(family);
    if (!saved) {
      if (family === 'ipv4') missing.push(`${tools[family].save} not found`);
      continue;
    }
    const input = desiredInput(config, info);
    for (const table of tables) {
      const have = tableIn(saved, table);
      missing.push(...missingRules(desiredRules(family, table, input, have), have));
    }
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
  for (const { family, tables } of families) {
    const all = await readTables(family);
    if (!all) continue;
    const lines = tables.flatMap((table) => {
      const saved = tableIn(all, table);
      const desired = desiredRules(family, table, { bridge, allow: [], proxyPort: config.egressProxyPort, openIps: [] }, saved);
      const block = [`*${table}`];
      for (const { parent, rule } of desired.jumps) {
        for (const line of saved.rules.get(parent) ?? []) if (line === rule) block.push(rule.replace(/^-A /, '-D '));
      }
      // Flush every chain first: one may jump to another, and a chain still referenced cannot go.
      const present = [...desired.chains.keys()].filter((chain) => saved.chains.has(chain));
      for (const chain of present) block.push(`-F ${chain}`);
      for (const chain of present) block.push(`-X ${chain}`);
      return block.length === 1 ? [] : [...block, 'COMMIT'];
    });
    // Both tables' removals in one restore.
    if (lines.length > 0) await restore(family, lines);
  }
}
