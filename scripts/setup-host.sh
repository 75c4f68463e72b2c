#!/usr/bin/env bash
# Installs and starts what the local stack needs on a Debian machine (root):
# the Docker engine, debootstrap (offline base image), s3fs + fuse (cold tier),
# iptables/iproute2 (egress rules, network tests), curl, Java (DynamoDB Local),
# awscli (baseline for the sync benchmark), docker-registry (a registry on
# loopback for the image rollout tests: no other is reachable). Idempotent: skips what is there.
set -euo pipefail

log() { printf '[setup-host] %s\n' "$*"; }

need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need_pkgs+=(debootstrap)
command -v s3fs >/dev/null 2>&1 || need_pkgs+=(s3fs)
command -v fusermount >/dev/null 2>&1 || need_pkgs+=(fuse3)
command -v iptables >/dev/null 2>&1 || need_pkgs+=(iptables)
command -v ip >/dev/null 2>&1 || need_pkgs+=(iproute2)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)   # bin/host-agent talks to the host daemon with it
[ -x /usr/bin/aws ] || need_pkgs+=(awscli)
command -v java >/dev/null 2>&1 || need_pkgs+=(openjdk-17-jre-headless)
command -v docker-registry >/dev/null 2>&1 || need_pkgs+=(docker-registry)

if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    log "missing: ${need_pkgs[*]}; install them (Debian: apt-get install ${need_pkgs[*]}) and run again"
    exit 1
  fi
  log "installing ${need_pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    log "the Docker engine is not running and this is not root: start dockerd (or ask an admin) and run again"
    exit 1
  fi
  log "starting dockerd (in a session of its own: it outlives the stack and its Ctrl-C)"
  bash "$(dirname "$0")/start-daemon.sh" /var/log/dockerd.log dockerd
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { log "dockerd did not come up; see /var/log/dockerd.log"; exit 1; }
fi
log "docker engine: $(docker version --format '{{.Server.Version}}')"
