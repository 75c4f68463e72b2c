#!/bin/sh
# Installs every system package of the sandbox image in one apt layer.
# Runs on Debian 12 (the offline base here) and Ubuntu 24.04 (production).
# CHROMIUM_SOURCE: auto | apt | playwright (see install-playwright.sh).
set -eu

log() { printf '[image:system] %s\n' "$*"; }
die() { printf '[image:system] ERROR: %s\n' "$*" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
CHROMIUM_SOURCE="${CHROMIUM_SOURCE:-auto}"

. /etc/os-release
log "base: ${PRETTY_NAME}"

# Documentation and message translations (~120 MB) are not needed by agents, who run in
# C.UTF-8 and have no man-db; keep copyright files for licence compliance.
cat >/etc/dpkg/dpkg.cfg.d/01-sandbox-nodoc <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF

# A debootstrap base lists only the release suite: add updates and security so the
# image gets fixed packages (the production Ubuntu base already lists them).
if [ "${ID}" = debian ] && ! grep -rqs -- '-security' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  log "adding ${VERSION_CODENAME}-updates and ${VERSION_CODENAME}-security to apt sources"
  cat >/etc/apt/sources.list.d/debian-updates.sources <<EOF
Types: deb
URIs: http://deb.debian.org/debian
Suites: ${VERSION_CODENAME}-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: ${VERSION_CODENAME}-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
fi

apt-get update -qq

# Python 3.11+ is a promise of the image: Ubuntu 22.04 ships 3.10, so stop before installing.
python_candidate="$(apt-cache policy python3 | awk '/Candidate:/ { print $2 }')"
dpkg --compare-versions "${python_candidate:-0}" ge 3.11 \
  || die "this base offers python3 ${python_candidate:-(none)}; the image needs 3.11+ (use ubuntu:24.04 or Debian 12 as BASE_IMAGE)"

# Ubuntu's chromium(-browser) is a transitional package that installs a snap, which
# cannot run in a container: there the browser comes from Playwright instead.
chromium_pkg=""
case "${CHROMIUM_SOURCE}" in
  apt) chromium_pkg=chromium ;;
  playwright) ;;
  auto)
    if apt-cache show chromium >/dev/null 2>&1 && ! apt-cache depends chromium 2>/dev/null | grep -q snapd; then
      chromium_pkg=chromium
    fi ;;
  *) die "CHROMIUM_SOURCE must be auto, apt or playwright (got '${CHROMIUM_SOURCE}')" ;;
esac
if [ -n "${chromium_pkg}" ]; then
  log "chromium: from apt"
  # Debian's chromium pulls desktop pieces a headless browser never uses: x11-utils drags in
  # Mesa and LLVM (~160 MB; Chromium renders with its bundled SwiftShader), and dconf a
  # D-Bus session bus with systemd. An empty package that provides them keeps them out.
  provides_dir="$(mktemp -d)"
  mkdir -p "${provides_dir}/DEBIAN"
  cat >"${provides_dir}/DEBIAN/control" <<'CONTROL'
Package: sandbox-headless-provides
Version: 1.0
Architecture: all
Maintainer: Ephemeral Sandbox <noreply@ephemeral-sandbox.invalid>
Provides: x11-utils, dbus-session-bus, default-dbus-session-bus
Description: stands in for desktop packages a headless sandbox does not need
 Satisfies chromium's dependency on x11-utils and dconf's on a D-Bus session bus.
CONTROL
  dpkg-deb --build "${provides_dir}" /tmp/sandbox-headless-provides.deb >/dev/null
  dpkg -i /tmp/sandbox-headless-provides.deb >/dev/null
  rm -rf "${provides_dir}" /tmp/sandbox-headless-provides.deb
  # fonts-liberation: metric-compatible with Arial/Times/Courier, so pages lay out as on other machines.
  chromium_pkg="chromium fonts-liberation"
else
  log "chromium: from Playwright (install-playwright.sh)"
fi

# shellcheck disable=SC2086 # chromium_pkg is a word list on purpose
apt-get install -y -qq --no-install-recommends \
  bash ca-certificates curl wget git jq ripgrep fd-find htop tmux unzip \
  build-essential python3 python3-pip python3-venv python3-dev python-is-python3 \
  tini tzdata procps less \
  ${chromium_pkg} \
  >/tmp/apt-install.log 2>&1 || { tail -n 40 /tmp/apt-install.log >&2; die "apt-get install failed (log above)"; }
rm -f /tmp/apt-install.log

# Extra trust anchors for networks that inspect TLS (a corporate or CI egress proxy): the
# build passes them in EXTRA_CA_CERTS (PEM); production builds usually pass none.
if [ -n "${EXTRA_CA_CERTS:-}" ]; then
  printf '%s\n' "${EXTRA_CA_CERTS}" | awk '
    /-----BEGIN CERTIFICATE-----/ { n++; out = sprintf("/usr/local/share/ca-certificates/sandbox-extra-%02d.crt", n) }
    out { print > out }
    /-----END CERTIFICATE-----/ { close(out); out = "" }'
  extra_count="$(find /usr/local/share/ca-certificates -name 'sandbox-extra-*.crt' | wc -l)"
  [ "${extra_count}" -gt 0 ] || die "EXTRA_CA_CERTS holds no PEM certificate"
  update-ca-certificates >/dev/null
  log "trusting ${extra_count} extra CA certificate(s)"
fi

# Debian and Ubuntu name fd's binary fdfind (a clash with another package); agents expect fd.
ln -sf "$(command -v fdfind)" /usr/local/bin/fd

ln -sf /usr/share/zoneinfo/Etc/UTC /etc/localtime
echo Etc/UTC >/etc/timezone

# systemd, should a dependency bring it, provisions an empty /root/.ssh: no SSH material in the image.
if [ -d /root/.ssh ]; then rmdir /root/.ssh; fi

apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old /var/log/apt /var/log/dpkg.log /root/.cache
log "done"
