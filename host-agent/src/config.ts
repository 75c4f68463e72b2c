import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { HostAgentError } from './errors';

/** Host settings, from the environment (optionally preloaded from an env file). */
export interface HostConfig {
  dockerSocket: string;
  /** User-defined bridge the sandboxes join (ICC off). */
  sandboxNetwork: string;
  /** Root of per-sandbox state: homes, cold mount points. */
  stateDir: string;
  sandboxUid: number;
  sandboxGid: number;
  /** `ip:port` endpoints sandboxes may reach despite the private-range block. */
  egressAllow: EgressEndpoint[];
  /** Bucket where oversized requests are staged (`s3:<key>` arguments). */
  storageBucket: string | undefined;
  /** Largest /tmp tmpfs of a sandbox (SANDBOX_TMP_MB); below it /tmp is half the sandbox's memory (create.ts tmpSizeMbFor). */
  tmpSizeMb: number;
  /**
   * Resolvers the sandbox resolver forwards to (SANDBOX_DNS_UPSTREAM, `ip` or
   * `ip:port`, comma-separated); undefined = the host's own, from /etc/resolv.conf.
   */
  dnsUpstreams: DnsUpstream[] | undefined;
  /** Port of the egress proxy on the sandbox network's gateway (EGRESS_PROXY_PORT). */
  egressProxyPort: number;
  /** Names every sandbox may resolve and reach whatever its policy: the host part of SANDBOX_API_URL when it is a name. */
  platformNames: string[];
  /**
   * The API as this host's sandboxes reach it (SANDBOX_API_URL in host.env):
   * where a sandbox can reach the API is a property of its host's network, so
   * it replaces the control plane's value in a sandbox's environment.
   */
  sandboxApiUrl: string | undefined;
  /** This host's id (HOST_ID): labels the containers it makes, scopes `status` to them. */
  hostId: string | undefined;
}

export interface EgressEndpoint {
  ip: string;
  port: number;
}

export interface DnsUpstream {
  address: string;
  port: number;
}

const defaultEnvFile = '/etc/ephemeral-sandbox/host.env';

/**
 * Parses `KEY=value` lines (blank lines and `#` comments ignored, optional
 * surrounding single or double quotes, optional leading `export `).
 */
export function parseEnvFile(text: string): Record<string, string> {
  const values: Record<string, string> = {};
  for (const rawLine of text.split('\n')) {
    const line = rawLine.trim();
    if (line === '' || line.startsWith('#')) continue;
    const match = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (!match) continue;
    let value = match[2]!;
    if (value.length >= 2 && (value[0] === '"' || value[0] === "'") && value.at(-1) === value[0]) {
      value = value.slice(1, -1);
    }
    values[match[1]!] = value;
  }
  return values;
}

function parseEgressAllow(list: string): EgressEndpoint[] {
  const endpoints: EgressEndpoint[] = [];
  for (const item of list
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)) {
    const match = /^(\d{1,3}(?:\.\d{1,3}){3}):(\d{1,5})$/.exec(item);
    const port = match ? Number(match[2]) : NaN;
    if (!match || !match[1]!.split('.').every((o) => Number(o) <= 255) || port < 1 || port > 65_535) {
      throw new HostAgentError('bad_request', `EGRESS_ALLOW entry "${item}" is not an IPv4 ip:port`);
    }
    endpoints.push({ ip: match[1]!, port });
  }
  return endpoints;
}

function parseDnsUpstreams(list: string): DnsUpstream[] {
  const upstreams: DnsUpstream[] = [];
  for (const item of list
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)) {
    const match = /^(\d{1,3}(?:\.\d{1,3}){3})(?::(\d{1,5}))?$/.exec(item);
    const port = match?.[2] ? Number(match[2]) : 53;
    if (!match || !match[1]!.split('.').every((o) => Number(o) <= 255) || port < 1 || port > 65_535) {
      throw new HostAgentError('bad_request', `SANDBOX_DNS_UPSTREAM entry "${item}" is not an IPv4 address or ip:port`);
    }
    upstreams.push({ address: match[1]!, port });
  }
  return upstreams;
}

function platformNamesOf(apiUrl: string | undefined): string[] {
  if (!apiUrl) return [];
  let host: string;
  try {
    host = new URL(apiUrl).hostname;
  } catch {
    throw new HostAgentError('bad_request', `SANDBOX_API_URL "${apiUrl}" is not a URL`);
  }
  // An address is reached through EGRESS_ALLOW; only a name needs the resolver's help.
  return /^[\d.]+$/.test(host) || host.startsWith('[') ? [] : [host.toLowerCase()];
}

function positiveInt(name: string, raw: string | undefined, fallback: number): number {
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0) {
    throw new HostAgentError('bad_request', `${name}="${raw}" is not a non-negative integer`);
  }
  return value;
}

/**
 * Loads the env file (HOST_AGENT_ENV_FILE, default /etc/ephemeral-sandbox/host.env
 * when it exists) into `env` without overriding what is already set, so the
 * AWS SDK and the storage tiers see the same settings as the host-agent.
 */
export function applyEnvFile(env: NodeJS.ProcessEnv = process.env): void {
  const envFile = env.HOST_AGENT_ENV_FILE ?? defaultEnvFile;
  if (envFile === '' || !existsSync(envFile)) return;
  for (const [name, value] of Object.entries(parseEnvFile(readFileSync(envFile, 'utf8')))) {
    if (env[name] === undefined) env[name] = value;
  }
}

/**
 * Reads the host configuration from `env` (call applyEnvFile first to honour
 * the env file).
 *
 * @example
 *   applyEnvFile();
 *   const config = loadHostConfig(); // SANDBOX_NETWORK=sbx-net, STATE_DIR=/var/lib/ephemeral-sandbox, ...
 */
export function loadHostConfig(env: NodeJS.ProcessEnv = process.env): HostConfig {
  const get = (name: string): string | undefined => env[name];
  return {
    dockerSocket: get('DOCKER_SOCKET') || '/var/run/docker.sock',
    sandboxNetwork: get('SANDBOX_NETWORK') || 'sbx-net',
    stateDir: get('STATE_DIR') || '/var/lib/ephemeral-sandbox',
    sandboxUid: positiveInt('SANDBOX_UID', get('SANDBOX_UID'), 1000),
    sandboxGid: positiveInt('SANDBOX_GID', get('SANDBOX_GID'), 1000),
    egressAllow: parseEgressAllow(get('EGRESS_ALLOW') ?? ''),
    storageBucket: get('STORAGE_BUCKET') || undefined,
    tmpSizeMb: positiveInt('SANDBOX_TMP_MB', get('SANDBOX_TMP_MB'), 4096),
    dnsUpstreams: get('SANDBOX_DNS_UPSTREAM') ? parseDnsUpstreams(get('SANDBOX_DNS_UPSTREAM')!) : undefined,
    egressProxyPort: positiveInt('EGRESS_PROXY_PORT', get('EGRESS_PROXY_PORT'), 15001),
    platformNames: platformNamesOf(get('SANDBOX_API_URL')),
    sandboxApiUrl: get('SANDBOX_API_URL') || undefined,
    hostId: get('HOST_ID') || undefined,
  };
}

/** Where one sandbox's host-side files live. */
export function sandboxPaths(config: HostConfig, sandboxId: string) {
  const root = join(config.stateDir, 'sandboxes', sandboxId);
  return {
    root,
    home: join(root, 'home'),
    cold: join(root, 'cold'),
    hotManifest: join(root, 'hot-manifest.json'),
    /** Commands' stdio FIFOs (made by the host daemon; read-only bind in the sandbox). */
    io: join(root, 'io'),
    /** The sandbox's egress policy (JSON), read by the host daemon's resolver and proxy. */
    egressPolicy: join(root, 'egress.json'),
    /** The home's own file system (disk_mb), loop-mounted at `home`. */
    homeImage: join(root, 'home.img'),
  };
}
