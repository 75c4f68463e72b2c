/**
 * Bundling stand-in for `ssh2` (esbuild: alias ssh2 -> this file). docker-modem
 * requires ssh2 at load time for ssh:// Docker hosts; the host-agent only
 * talks to the local unix socket, and ssh2 drags in optional native addons
 * (cpu-features, sshcrypto.node) that cannot be bundled.
 */
export class Client {
  constructor() {
    throw new Error('ssh:// Docker hosts are not supported by the host-agent; use the unix socket (DOCKER_SOCKET)');
  }
}
