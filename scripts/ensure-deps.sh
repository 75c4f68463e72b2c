#!/usr/bin/env bash
# Installs the npm dependencies when they are missing or older than the lock
# file, so `npm start` and `npm test` work on a fresh clone with no other step.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "[ensure-deps] installing npm dependencies (npm ci)"
  npm ci --no-audit --no-fund
fi
