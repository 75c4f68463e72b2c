#!/usr/bin/env bash
# Builds the sandbox image (sandbox-image/) unless an image built from the same inputs
# already exists. Idempotent and safe to run concurrently (one build at a time).
#
#   scripts/build-image.sh [--force]
#
# Environment:
#   SANDBOX_IMAGE        tag to build            (default ephemeral-sandbox:latest)
#   SANDBOX_BASE_IMAGE   base image              (default local/debian:bookworm, the offline
#                        base, made here with debootstrap when missing; production: ubuntu:24.04)
#   SANDBOX_OFFLINE_BASE tag of the debootstrap base made when missing (default local/debian:bookworm)
#   SANDBOX_BUILD_ARGS   extra `docker build` arguments, e.g. "--build-arg CHROMIUM_SOURCE=apt"
#   SANDBOX_EXTRA_CA_CERTS  CA certificates the build (and the image) must trust, for networks
#                        that inspect TLS: "auto" (default: the host's locally added CAs in
#                        /usr/local/share/ca-certificates), "none", or PEM files separated by ':'
set -euo pipefail

log() { printf '[build-image] %s\n' "$*"; }
die() { printf '[build-image] ERROR: %s\n' "$*" >&2; exit 1; }

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
context="${repo_root}/sandbox-image"
image="${SANDBOX_IMAGE:-ephemeral-sandbox:latest}"
offline_base="${SANDBOX_OFFLINE_BASE:-local/debian:bookworm}"
base_image="${SANDBOX_BASE_IMAGE:-${offline_base}}"
extra_args="${SANDBOX_BUILD_ARGS:-}"
hash_label=dev.ephemeral-sandbox.content-hash

force=0
for arg in "$@"; do
  case "${arg}" in
    --force) force=1 ;;
    -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '${arg}' (usage: scripts/build-image.sh [--force])" ;;
  esac
done

command -v docker >/dev/null 2>&1 || die "the docker CLI is not installed (run scripts/setup-host.sh)"
docker info >/dev/null 2>&1 || die "the Docker engine is not reachable (run scripts/setup-host.sh, or start dockerd)"

# One build at a time: CI, npm start and tests may all ask for the image at once.
lock_file="${TMPDIR:-/tmp}/ephemeral-sandbox-build-image.lock"
exec 9>"${lock_file}"
if ! flock -n 9; then
  log "another build of the sandbox image is running; waiting for it"
  flock 9
fi

# Locally added CAs exist on hosts behind a TLS-inspecting proxy; without them the build's
# downloads (npm registry) fail certificate checks. They are public certificates, not secrets.
extra_ca_files=()
case "${SANDBOX_EXTRA_CA_CERTS:-auto}" in
  none) ;;
  auto)
    if [ -d /usr/local/share/ca-certificates ]; then
      mapfile -t extra_ca_files < <(find /usr/local/share/ca-certificates -type f -name '*.crt' | LC_ALL=C sort)
    fi ;;
  *)
    IFS=: read -r -a extra_ca_files <<<"${SANDBOX_EXTRA_CA_CERTS}"
    for f in "${extra_ca_files[@]}"; do [ -r "${f}" ] || die "SANDBOX_EXTRA_CA_CERTS: cannot read ${f}"; done ;;
esac
extra_ca_pem=""
if [ ${#extra_ca_files[@]} -gt 0 ]; then
  extra_ca_pem="$(cat "${extra_ca_files[@]}")"
  log "the image will trust ${#extra_ca_files[@]} extra CA file(s): ${extra_ca_files[*]}"
fi

# The offline base: Debian 12 minbase from Debian's own packages (no registry needed).
ensure_offline_base() {
  docker image inspect "${offline_base}" >/dev/null 2>&1 && return 0
  [ "$(id -u)" = 0 ] || die "${offline_base} is missing and building it needs root (debootstrap); run this as root once"
  if ! command -v debootstrap >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || die "${offline_base} is missing and there is no debootstrap or apt-get to make it"
    log "installing debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
  fi
  local rootfs
  rootfs="$(mktemp -d /tmp/sandbox-base-rootfs.XXXXXX)"
  log "creating ${offline_base} with debootstrap (about a minute)"
  if ! debootstrap --variant=minbase bookworm "${rootfs}" http://deb.debian.org/debian >"${rootfs}.log" 2>&1; then
    tail -n 20 "${rootfs}.log" >&2
    rm -rf "${rootfs}" "${rootfs}.log"
    die "debootstrap failed (log above)"
  fi
  # Downloaded .debs and package lists would stay in the base layer of every image forever.
  rm -rf "${rootfs}"/var/cache/apt/archives/*.deb "${rootfs}"/var/lib/apt/lists/*
  tar -C "${rootfs}" -c . | docker import - "${offline_base}" >/dev/null || { rm -rf "${rootfs}" "${rootfs}.log"; die "docker import of ${offline_base} failed"; }
  rm -rf "${rootfs}" "${rootfs}.log"
  log "imported ${offline_base}"
}

if [ "${base_image}" = "${offline_base}" ]; then
  ensure_offline_base
elif ! docker image inspect "${base_image}" >/dev/null 2>&1; then
  log "pulling ${base_image}"
  docker pull "${base_image}" || die "cannot pull ${base_image}"
fi
base_id="$(docker image inspect --format '{{.Id}}' "${base_image}")"

# Everything the image is made of: the build context (.dockerignore keeps it to
# Dockerfile, build/ and rootfs/), file modes, the base image and the build arguments.
content_hash="$(
  cd "${context}"
  {
    printf 'base=%s\nargs=%s\nca=%s\n' "${base_id}" "${extra_args}" "${extra_ca_pem}"
    find Dockerfile .dockerignore build rootfs -type f -print0 | LC_ALL=C sort -z \
      | xargs -0 stat -c '%n %a' 
    find Dockerfile .dockerignore build rootfs -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    find rootfs -type l -print0 | LC_ALL=C sort -z | xargs -0 -r stat -c '%n -> %N'
  } | sha256sum | cut -c1-16
)"

existing_id="$(docker image inspect --format '{{.Id}}' "${image}" 2>/dev/null || true)"
existing_hash=""
if [ -n "${existing_id}" ]; then
  existing_hash="$(docker image inspect --format "{{ index .Config.Labels \"${hash_label}\" }}" "${image}")"
fi

report_size() {
  local bytes
  bytes="$(docker image inspect --format '{{.Size}}' "${image}")"
  log "${image}: $(awk -v b="${bytes}" 'BEGIN { printf "%.0f MB (%d bytes)", b / 1000000, b }'), content hash ${content_hash}"
}

if [ "${force}" = 0 ] && [ "${existing_hash}" = "${content_hash}" ]; then
  log "${image} is up to date"
  report_size
  exit 0
fi

# Docker 20.10 engines with a newer CLI and no buildx plugin: use the classic builder
# explicitly (the Dockerfile needs nothing from BuildKit).
if [ -z "${DOCKER_BUILDKIT:-}" ] && ! docker buildx version >/dev/null 2>&1; then
  export DOCKER_BUILDKIT=0
fi

log "building ${image} from ${base_image}"
started="$(date +%s)"
# shellcheck disable=SC2086 # extra_args is a word list on purpose
if ! docker build --force-rm \
    --build-arg BASE_IMAGE="${base_image}" \
    --build-arg EXTRA_CA_CERTS="${extra_ca_pem}" \
    --label "${hash_label}=${content_hash}" \
    ${extra_args} \
    -t "${image}" "${context}"; then
  die "docker build failed (output above); fix sandbox-image/ and run scripts/build-image.sh again"
fi
log "built in $(( $(date +%s) - started )) s"

# The previous build is now an untagged image: drop it unless a container still uses it.
new_id="$(docker image inspect --format '{{.Id}}' "${image}")"
if [ -n "${existing_id}" ] && [ "${existing_id}" != "${new_id}" ]; then
  if ! rm_error="$(docker image rm "${existing_id}" 2>&1 >/dev/null)"; then
    log "kept the previous image ${existing_id:7:12}: ${rm_error}"
  fi
fi
report_size
