/**
 * A sandbox's egress policy on the host: the file the resolver and proxy
 * read (stateDir/sandboxes/<id>/egress.json), and the `network` verb that
 * changes it while the sandbox runs.
 */
import { existsSync } from 'node:fs';
import { mkdir, rename, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { z } from 'zod';
import { sandboxPaths, type HostConfig } from '../config';
import type { DockerClient } from '../docker';
import { HostAgentError } from '../errors';
import type { networkRequest } from '../../../contract/host-requests';
import type { EgressPolicy } from '../../../contract/egress-policy';

export type NetworkInput = z.output<typeof networkRequest>;

/** Writes the policy file whole (a reader never sees half of it). */
export async function writeEgressPolicyFile(config: HostConfig, sandboxId: string, policy: EgressPolicy): Promise<void> {
  const path = sandboxPaths(config, sandboxId).egressPolicy;
  await mkdir(dirname(path), { recursive: true, mode: 0o755 });
  const temporary = `${path}.${process.pid}.${Date.now()}.tmp`;
  await writeFile(temporary, JSON.stringify(policy) + '\n', { mode: 0o644 });
  await rename(temporary, path);
}

/**
 * The `network` verb: a new policy for a sandbox of this host. In effect for
 * new questions and connections as soon as the file is written (the daemon
 * re-reads it on each decision); the daemon cuts open connections the new
 * policy refuses within a fraction of a second; the firewall's fast path is
 * rebuilt before this answers.
 */
export async function setSandboxEgress(request: NetworkInput, config: HostConfig, docker: DockerClient): Promise<{ egress: EgressPolicy }> {
  const { root } = sandboxPaths(config, request.sandboxId);
  const info = await docker.inspectContainer(request.sandboxId);
  if (!info || !existsSync(root)) throw new HostAgentError('not_found', `sandbox ${request.sandboxId} has no container on this host`);
  if (info.HostConfig?.NetworkMode === 'none') {
    throw new HostAgentError('bad_request', `sandbox ${request.sandboxId} was created with network "none": it has no network to set a policy on`);
  }
  await writeEgressPolicyFile(config, request.sandboxId, request.egress);
  const { refreshSandboxPolicies } = await import('../network');
  await refreshSandboxPolicies(config, docker);
  return { egress: request.egress };
}
