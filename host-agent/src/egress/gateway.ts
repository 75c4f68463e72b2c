/**
 * The egress gateway of a host: the sandbox resolver and the egress proxy on
 * the sandbox network's gateway address, sharing one view of who asks and
 * what they may reach, and writing their decisions to the egress log. Run by
 * the host daemon; without it sandboxes on the bridge resolve nothing and
 * only allow_all sandboxes reach anything (fail closed).
 */
import { logger } from '../../../lambdas/shared/logger';
import type { HostConfig } from '../config';
import type { DockerClient } from '../docker';
import type { SandboxNetwork } from '../network';
import type { EgressLogSink } from '../../../contract/egress-decision';
import { AddressGrants, EgressAuthority, PolicyFiles, SandboxDirectory } from './authority';
import { conntrackLookup } from './conntrack';
import { startEgressProxy, type EgressProxy } from './proxy';
import { hostUpstreams, startSandboxResolver, type SandboxResolver } from './resolver';

/** How often the firewall's per-sandbox part is rebuilt from the truth, whatever happened in between. */
const refreshIntervalMs = 15_000;

export interface EgressGateway {
  authority: EgressAuthority;
  resolver: SandboxResolver;
  proxy: EgressProxy;
  /** Where the proxy learns original destinations. */
  conntrack: 'procfs' | 'conntrack-tool';
  stop(): Promise<void>;
}

/**
 * Starts the resolver and the proxy on `network.gateway`.
 *
 * @example const gateway = await startEgressGateway(config, docker, network, new EgressLogWriter());
 */
export async function startEgressGateway(config: HostConfig, docker: DockerClient, network: SandboxNetwork, log: EgressLogSink): Promise<EgressGateway> {
  if (!network.gateway) throw new Error(`network ${network.name} has no gateway address for the sandbox resolver and egress proxy`);
  const authority = new EgressAuthority(new SandboxDirectory(docker, network.name), new PolicyFiles(config), config.platformNames, log, new AddressGrants());
  const upstreams = config.dnsUpstreams ? () => config.dnsUpstreams! : hostUpstreams();
  if (upstreams().length === 0) throw new Error('no upstream resolver for sandboxes: /etc/resolv.conf lists no nameserver and SANDBOX_DNS_UPSTREAM is not set');
  const { source, lookup } = await conntrackLookup();
  const resolver = await startSandboxResolver({ address: network.gateway, upstreams, authority });
  let proxy: EgressProxy;
  try {
    proxy = await startEgressProxy({ address: network.gateway, port: config.egressProxyPort, authority, originalDestination: lookup });
  } catch (error) {
    await resolver.close();
    throw error;
  }

  const { refreshSandboxPolicies } = await import('../network');
  const housekeeping = setInterval(() => {
    refreshSandboxPolicies(config, docker).catch((err) => logger.error('egress gateway: refreshing the per-sandbox firewall failed; retrying', { err }));
    authority.directory.invalidate();
    // Forget answers of sandboxes no longer on this host.
    docker
      .inspectNetwork(network.name)
      .then((info) => {
        const live = new Set(Object.values(info?.Containers ?? {}).map((c) => c.Name));
        authority.grants.prune(live);
        authority.policies.prune(live);
      })
      .catch((err) => logger.error('egress gateway: pruning remembered answers failed; retrying', { err }));
  }, refreshIntervalMs);
  housekeeping.unref();

  logger.info('egress gateway: resolver and proxy listening', {
    address: network.gateway,
    proxyPort: config.egressProxyPort,
    upstreams: upstreams().map((u) => `${u.address}:${u.port}`),
    conntrack: source,
  });
  return {
    authority,
    resolver,
    proxy,
    conntrack: source,
    stop: async () => {
      clearInterval(housekeeping);
      await Promise.all([resolver.close(), proxy.close()]);
    },
  };
}
