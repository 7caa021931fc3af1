#!/usr/bin/env bash
# Install Debian's Chromium and its chromedriver, which the auditor's console's browser
# test drives (tests/e2e/test_console_browser.py), when they are missing: with apt-get
# as root, or through sudo when it needs no password. Otherwise this only says so, and
# the test then fails naming what to install (it is never skipped).
set -euo pipefail

if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure_chromium: no apt-get here; install Chromium and chromedriver at /usr/bin" >&2
  exit 0
fi
if [[ "$(id -u)" == 0 ]]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "ensure_chromium: chromium and chromium-driver are missing; install them" \
       "(apt-get install chromium chromium-driver) as root" >&2
  exit 0
fi
echo "ensure_chromium: installing chromium and chromium-driver with apt-get" >&2
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
  chromium chromium-driver >/dev/null
