/**
 * Docker-side helpers of the local stack: the sandbox network's gateway (the
 * address sandboxes reach the local API on) and cleanup of one host's
 * containers and mounts when the stack closes.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import Docker from 'dockerode';
import { containerLabels, ownerLabelValue } from '../../contract/host-protocol';

const run = promisify(execFile);

/** The gateway address of the sandbox network, creating the network like the host-agent does. */
export async function sandboxNetworkGateway(name: string): Promise<string> {
  const docker = new Docker();
  let info: Docker.NetworkInspectInfo;
  try {
    info = await docker.getNetwork(name).inspect();
  } catch {
    const [{ ensureSandboxNetwork }, { loadHostConfig }] = await Promise.all([import('../../host-agent/src/network'), import('../../host-agent/src/config')]);
    await ensureSandboxNetwork(loadHostConfig({ ...process.env, SANDBOX_NETWORK: name }));
    info = await docker.getNetwork(name).inspect();
  }
  const gateway = info.IPAM?.Config?.find((c) => c.Gateway)?.Gateway;
  if (!gateway) throw new Error(`docker network ${name} has no IPv4 gateway`);
  return gateway;
}

/** Removes every container the given host made, and unmounts what it mounted under stateDir. */
export async function removeContainersOfHost(hostId: string, stateDir: string): Promise<void> {
  const docker = new Docker();
  const containers = await docker.listContainers({
    all: true,
    filters: { label: [`${containerLabels.owner}=${ownerLabelValue}`, `${containerLabels.hostId}=${hostId}`] },
  });
  await Promise.all(containers.map((c) => docker.getContainer(c.Id).remove({ force: true, v: true })));
  const mounts = readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[1] ?? '')
    // The state directory itself too: the host binds it onto itself as a shared mount (host-agent/src/readopt.ts).
    .filter((m) => m === stateDir || m.startsWith(stateDir + '/'))
    .sort((a, b) => b.length - a.length);
  for (const m of mounts) {
    // A lazy unmount above takes what is below it (and its propagated copies) along.
    if (
      !readFileSync('/proc/mounts', 'utf8')
        .split('\n')
        .some((l) => l.split(' ')[1] === m)
    )
      continue;
    await run('umount', ['-l', m]).catch(() => run('fusermount', ['-uz', m]));
  }
}

/** Removes a stack's sandbox network and its firewall chains. */
export async function removeNetwork(name: string): Promise<void> {
  const [{ removeSandboxNetwork }, { loadHostConfig }] = await Promise.all([import('../../host-agent/src/network'), import('../../host-agent/src/config')]);
  await removeSandboxNetwork(loadHostConfig({ ...process.env, SANDBOX_NETWORK: name }));
}
