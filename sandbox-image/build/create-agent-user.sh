#!/bin/sh
# Creates the unprivileged user every sandbox runs as (agent, 1000:1000, home /home/agent)
# and the directories the host-agent bind-mounts over (/home/agent, /data/cold).
set -eu

log() { printf '[image:user] %s\n' "$*"; }

AGENT_UID=1000
AGENT_GID=1000

# Ubuntu 24.04 images ship a user "ubuntu" with UID/GID 1000: the host-agent runs
# containers as 1000:1000, so that identity must be agent's.
existing_user="$(getent passwd "${AGENT_UID}" | cut -d: -f1 || true)"
if [ -n "${existing_user}" ] && [ "${existing_user}" != agent ]; then
  log "removing user ${existing_user} (uid ${AGENT_UID})"
  userdel --remove "${existing_user}" 2>/dev/null || userdel "${existing_user}"
fi
existing_group="$(getent group "${AGENT_GID}" | cut -d: -f1 || true)"
if [ -n "${existing_group}" ] && [ "${existing_group}" != agent ]; then
  log "removing group ${existing_group} (gid ${AGENT_GID})"
  groupdel "${existing_group}"
fi

getent group agent >/dev/null || groupadd --gid "${AGENT_GID}" agent
getent passwd agent >/dev/null || useradd --uid "${AGENT_UID}" --gid "${AGENT_GID}" \
  --home-dir /home/agent --create-home --shell /bin/bash agent
# No password and no sudo: nothing to escalate with (and no-new-privileges forbids it).
passwd --lock agent >/dev/null

mkdir -p /home/agent /data/cold
chown agent:agent /home/agent /data/cold
chmod 0755 /home/agent /data/cold
log "agent is $(id agent)"
