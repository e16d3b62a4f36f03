#!/usr/bin/env bash
# Installs (when missing) the real browser the console's tests drive:
# Debian's headless-capable Chromium and its chromedriver. Only the package
# registries are reachable, so no browser download of any other kind.
# Idempotent: does nothing when both are there.
set -euo pipefail

log() { printf '[browser] %s\n' "$*" >&2; }
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

if command -v chromedriver >/dev/null 2>&1 && [ -x /usr/bin/chromium ]; then
  exit 0
fi
log "installing chromium and chromium-driver from Debian's packages"
as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
log "$(chromedriver --version | head -1)"
