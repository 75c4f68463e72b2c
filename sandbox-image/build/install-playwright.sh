#!/bin/sh
# Installs playwright-core globally and gives Playwright a Chromium it can launch with no
# download at run time, at a stable path for every base:
#   /usr/local/bin/chromium      the browser (PLAYWRIGHT_CHROMIUM_EXECUTABLE_PATH)
#   /opt/ms-playwright/...       Playwright's own browser layout (PLAYWRIGHT_BROWSERS_PATH),
#                                so chromium.launch() works without an executablePath.
# Debian: the browser is Debian's chromium package (installed with the system packages);
# the pinned playwright-core should match its major version (see README).
# Ubuntu: chromium is a snap there, unusable in a container, so the build downloads
# Playwright's headless shell from Playwright's CDN (production builds only; not offline).
set -eu

log() { printf '[image:playwright] %s\n' "$*"; }
die() { printf '[image:playwright] ERROR: %s\n' "$*" >&2; exit 1; }

: "${PLAYWRIGHT_VERSION:?PLAYWRIGHT_VERSION is required}"
: "${PLAYWRIGHT_BROWSERS_PATH:?PLAYWRIGHT_BROWSERS_PATH is required}"
export DEBIAN_FRONTEND=noninteractive

npm install --global --no-audit --no-fund --loglevel=error "playwright-core@${PLAYWRIGHT_VERSION}" \
  || die "npm could not install playwright-core@${PLAYWRIGHT_VERSION}"
pw_dir=/usr/local/lib/node_modules/playwright-core
mkdir -p "${PLAYWRIGHT_BROWSERS_PATH}"

case "$(dpkg --print-architecture)" in
  amd64) chrome_dir=chrome-linux64; shell_dir=chrome-headless-shell-linux64 ;;
  arm64) chrome_dir=chrome-linux-arm64; shell_dir=chrome-headless-shell-linux-arm64 ;;
  *) die "unsupported architecture $(dpkg --print-architecture)" ;;
esac

# The revision Playwright looks for, from the installed package's own manifest.
revision="$(node -e '
  const b = require(process.argv[1] + "/browsers.json").browsers.find((x) => x.name === "chromium");
  process.stdout.write(b.revision);' "${pw_dir}")"

if [ -x /usr/bin/chromium ]; then
  browser=/usr/bin/chromium
  log "using the system chromium ($(${browser} --version 2>/dev/null || echo unknown)) for Playwright r${revision}"
  # Playwright picks chromium for headed and chromium_headless_shell for headless launches.
  mkdir -p "${PLAYWRIGHT_BROWSERS_PATH}/chromium-${revision}/${chrome_dir}" \
           "${PLAYWRIGHT_BROWSERS_PATH}/chromium_headless_shell-${revision}/${shell_dir}"
  ln -sf "${browser}" "${PLAYWRIGHT_BROWSERS_PATH}/chromium-${revision}/${chrome_dir}/chrome"
  ln -sf "${browser}" "${PLAYWRIGHT_BROWSERS_PATH}/chromium_headless_shell-${revision}/${shell_dir}/chrome-headless-shell"
else
  log "no system chromium: downloading Playwright's chromium headless shell r${revision}"
  node "${pw_dir}/cli.js" install --with-deps --only-shell chromium \
    || die "playwright could not install chromium (this needs Playwright's CDN; see sandbox-image/README.md)"
  browser="${PLAYWRIGHT_BROWSERS_PATH}/chromium_headless_shell-${revision}/${shell_dir}/chrome-headless-shell"
  [ -x "${browser}" ] || die "expected ${browser} after playwright install"
  # Headed launches resolve to the chromium directory: point it at the same shell.
  mkdir -p "${PLAYWRIGHT_BROWSERS_PATH}/chromium-${revision}/${chrome_dir}"
  ln -sf "${browser}" "${PLAYWRIGHT_BROWSERS_PATH}/chromium-${revision}/${chrome_dir}/chrome"
  apt-get clean
  rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log
fi
ln -sf "${browser}" /usr/local/bin/chromium
chmod -R a+rX "${PLAYWRIGHT_BROWSERS_PATH}"

rm -rf /root/.npm /root/.cache /tmp/*
log "playwright-core $(node -p "require('${pw_dir}/package.json').version"), chromium at ${browser}"
