/**
 * Who is asking, and may they: the decisions the sandbox resolver and the
 * egress proxy share. A sandbox is known by its address on the sandbox
 * network (Docker's view, refreshed often: addresses are reused), its policy
 * by the file the host-agent wrote for it, and the addresses it may reach by
 * the answers the resolver gave it (each under the name asked for, for as
 * long as the answer's TTL, so a later, narrower policy stops honouring
 * answers to names it no longer admits).
 */
import { statSync, readFileSync } from 'node:fs';
import type { HostConfig } from '../config';
import { sandboxPaths } from '../config';
import type { DockerClient } from '../docker';
import {
  allowlistAdmitsAddress,
  allowlistAdmitsName,
  compileAllowlist,
  isNeverReachable,
  normalizeName,
  readEgressPolicy,
  type CompiledAllowlist,
  type EgressPolicy,
} from '../../../contract/egress-policy';
import type { EgressKind, EgressLogSink } from '../../../contract/egress-decision';
import { sandboxIdPattern } from '../../../contract/ids';

export interface Verdict {
  allowed: boolean;
  reason: string;
}

/** A sandbox as the gateway sees it at one moment. */
export interface SandboxEgress {
  sandboxId: string;
  policy: EgressPolicy;
  allowlist?: CompiledAllowlist;
}

/** Sandbox network addresses -> sandbox ids, from Docker (the truth after every start and stop). */
export class SandboxDirectory {
  private byIp = new Map<string, string>();
  private fetchedAt = 0;
  private pending: Promise<void> | undefined;

  constructor(
    private readonly docker: DockerClient,
    private readonly network: string,
    /** How long a mapping is trusted; a sandbox's first packet comes after its create answered, by which time a refresh has run. */
    private readonly maxAgeMs = 1000,
  ) {}

  async sandboxAt(ip: string): Promise<string | undefined> {
    const age = Date.now() - this.fetchedAt;
    // A miss may be a sandbox started a moment ago: look again, but at most every 100 ms.
    if (age > this.maxAgeMs || (!this.byIp.has(ip) && age > 100)) await this.refresh();
    return this.byIp.get(ip);
  }

  /** Forget what we know (a container started or stopped). */
  invalidate(): void {
    this.fetchedAt = 0;
  }

  private refresh(): Promise<void> {
    this.pending ??= (async () => {
      try {
        const info = await this.docker.inspectNetwork(this.network);
        const next = new Map<string, string>();
        for (const c of Object.values(info?.Containers ?? {})) {
          const ip = (c.IPv4Address ?? '').split('/')[0];
          if (ip && sandboxIdPattern.test(c.Name)) next.set(ip, c.Name);
        }
        this.byIp = next;
        this.fetchedAt = Date.now();
      } finally {
        this.pending = undefined;
      }
    })();
    return this.pending;
  }
}

/** Reads each sandbox's egress.json (written by the host-agent), re-reading it whenever it changed. */
export class PolicyFiles {
  private cache = new Map<string, { stamp: string; value: SandboxEgress }>();

  constructor(private readonly config: HostConfig) {}

  /**
   * The sandbox's policy. No file means a sandbox made before policies
   * existed: the default, allow_all. A file that cannot be read refuses
   * everything (and says why in the reason of each refusal).
   */
  policyOf(sandboxId: string): SandboxEgress & { unreadable?: string } {
    const path = sandboxPaths(this.config, sandboxId).egressPolicy;
    let stamp: string;
    try {
      const s = statSync(path);
      stamp = `${s.ino}:${s.mtimeMs}:${s.size}`;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return { sandboxId, policy: 'allow_all' };
      return { sandboxId, policy: 'deny_all', unreadable: (error as Error).message };
    }
    const cached = this.cache.get(sandboxId);
    if (cached?.stamp === stamp) return cached.value;
    let value: SandboxEgress & { unreadable?: string };
    try {
      const read = readEgressPolicy(JSON.parse(readFileSync(path, 'utf8')));
      if (!read.ok) throw new Error(`${read.path.join('.')}: ${read.message}`);
      value = { sandboxId, policy: read.policy, ...(typeof read.policy === 'object' ? { allowlist: compileAllowlist(read.policy.allow) } : {}) };
    } catch (error) {
      return { sandboxId, policy: 'deny_all', unreadable: `${path}: ${(error as Error).message}` };
    }
    this.cache.set(sandboxId, { stamp, value });
    return value;
  }

  /** Forgets sandboxes no longer on this host. */
  prune(liveSandboxes: Set<string>): void {
    for (const sandboxId of this.cache.keys()) if (!liveSandboxes.has(sandboxId)) this.cache.delete(sandboxId);
  }
}

/** Addresses the resolver handed each sandbox, under the name asked for, until the answer's TTL runs out. */
export class AddressGrants {
  private bySandbox = new Map<string, Map<string, Map<string, number>>>();

  constructor(
    /** Clients connect right after they resolve: an answer with TTL 0 still counts for this long. */
    private readonly minTtlSeconds = 5,
    /** Bound on remembered addresses per sandbox (oldest dropped first). */
    private readonly maxAddresses = 4096,
  ) {}

  grant(sandboxId: string, name: string, ip: string, ttlSeconds: number, now = Date.now()): void {
    let addresses = this.bySandbox.get(sandboxId);
    if (!addresses) {
      addresses = new Map();
      this.bySandbox.set(sandboxId, addresses);
    }
    let names = addresses.get(ip);
    if (!names) {
      if (addresses.size >= this.maxAddresses) addresses.delete(addresses.keys().next().value!);
      names = new Map();
      addresses.set(ip, names);
    }
    const key = normalizeName(name);
    const until = now + Math.max(ttlSeconds, this.minTtlSeconds) * 1000;
    names.set(key, Math.max(until, names.get(key) ?? 0));
  }

  /** The unexpired names under which `ip` was handed to the sandbox. */
  namesFor(sandboxId: string, ip: string, now = Date.now()): string[] {
    const names = this.bySandbox.get(sandboxId)?.get(ip);
    if (!names) return [];
    const live: string[] = [];
    for (const [name, until] of names) {
      if (until > now) live.push(name);
      else names.delete(name);
    }
    return live;
  }

  /** Drops sandboxes that no longer exist and expired entries. */
  prune(liveSandboxes: Set<string>, now = Date.now()): void {
    for (const [sandboxId, addresses] of this.bySandbox) {
      if (!liveSandboxes.has(sandboxId)) {
        this.bySandbox.delete(sandboxId);
        continue;
      }
      for (const [ip, names] of addresses) {
        for (const [name, until] of names) if (until <= now) names.delete(name);
        if (names.size === 0) addresses.delete(ip);
      }
    }
  }

  sandboxes(): string[] {
    return [...this.bySandbox.keys()];
  }
}

/**
 * The policy decisions. Platform names (the control plane's API host) are
 * admitted under every policy, so a deny_all sandbox can still heartbeat and
 * complete.
 */
export class EgressAuthority {
  readonly grants: AddressGrants;
  private readonly platformNames: Set<string>;

  constructor(
    readonly directory: SandboxDirectory,
    readonly policies: PolicyFiles,
    platformNames: readonly string[],
    readonly log: EgressLogSink,
    grants = new AddressGrants(),
  ) {
    this.grants = grants;
    this.platformNames = new Set(platformNames.map(normalizeName));
  }

  /** The sandbox behind a source address on the sandbox network, with its current policy. */
  async identify(ip: string): Promise<(SandboxEgress & { unreadable?: string }) | undefined> {
    const sandboxId = await this.directory.sandboxAt(ip);
    return sandboxId ? this.policies.policyOf(sandboxId) : undefined;
  }

  /** May this sandbox use this name (a DNS question, a TLS SNI, an HTTP Host)? */
  nameVerdict(sandbox: SandboxEgress & { unreadable?: string }, rawName: string): Verdict {
    const name = normalizeName(rawName);
    if (this.platformNames.has(name)) return { allowed: true, reason: 'the platform API' };
    if (sandbox.unreadable) return { allowed: false, reason: `policy unreadable: ${sandbox.unreadable}` };
    if (sandbox.policy === 'allow_all') return { allowed: true, reason: 'allow_all' };
    if (sandbox.policy === 'deny_all') return { allowed: false, reason: 'deny_all' };
    return allowlistAdmitsName(sandbox.allowlist!, name) ? { allowed: true, reason: 'on the allowlist' } : { allowed: false, reason: 'not on the allowlist' };
  }

  /** May this sandbox open a connection to this address? */
  addressVerdict(sandbox: SandboxEgress & { unreadable?: string }, ip: string, now = Date.now()): Verdict {
    if (isNeverReachable(ip)) return { allowed: false, reason: 'private, link-local or reserved address' };
    if (sandbox.policy === 'allow_all' && !sandbox.unreadable) return { allowed: true, reason: 'allow_all' };
    if (sandbox.allowlist && allowlistAdmitsAddress(sandbox.allowlist, ip)) return { allowed: true, reason: 'in an allowed CIDR' };
    for (const name of this.grants.namesFor(sandbox.sandboxId, ip, now)) {
      if (this.nameVerdict(sandbox, name).allowed) return { allowed: true, reason: `answered for ${name}` };
    }
    if (sandbox.unreadable) return { allowed: false, reason: `policy unreadable: ${sandbox.unreadable}` };
    return {
      allowed: false,
      reason: sandbox.policy === 'deny_all' ? 'deny_all' : 'not in an allowed CIDR and not an unexpired answer for an allowed name',
    };
  }

  /**
   * Logs a decision: every refusal; what was admitted only under deny_all or
   * an allowlist (under allow_all that is all the sandbox's traffic, and says
   * nothing a policy did).
   */
  note(sandbox: SandboxEgress, kind: EgressKind, target: string, verdict: Verdict): void {
    if (verdict.allowed && sandbox.policy === 'allow_all') return;
    this.log.record({ sandboxId: sandbox.sandboxId, kind, target, verdict: verdict.allowed ? 'allowed' : 'refused', reason: verdict.reason, at: Date.now() });
  }
}
