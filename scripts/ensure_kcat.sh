#!/usr/bin/env bash
# Install kcat, which the stream contract's worked example uses (protos/README.md) and
# a test runs, from the distribution's packages when it is missing. Without root or
# apt-get this only says so: the test then fails naming what to install.
set -euo pipefail

if command -v kcat >/dev/null 2>&1; then
  exit 0
fi
if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "ensure_kcat: installing kcat with apt-get" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat >/dev/null
else
  echo "ensure_kcat: kcat is missing; install it (apt-get install kcat)" >&2
fi
