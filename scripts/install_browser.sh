#!/usr/bin/env bash
# Debian's Chromium for the review page's browser tests (Playwright drives it through
# executable_path). Playwright's own browser download is never used: it reaches outside PyPI.
# Idempotent: does nothing when /usr/bin/chromium is already there.
set -euo pipefail

[[ -x /usr/bin/chromium ]] && exit 0
if [[ $(id -u) -ne 0 ]]; then
  echo "install_browser.sh: Chromium is not installed; as root run: apt-get install -y chromium" >&2
  exit 1
fi
echo "install_browser.sh: installing Chromium (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >&2
[[ -x /usr/bin/chromium ]] || { echo "install_browser.sh: apt-get installed no /usr/bin/chromium" >&2; exit 1; }
