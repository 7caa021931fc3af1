#!/usr/bin/env bash
# Fail when the committed generated code in protos/gen/python does not match what
# scripts/gen_protos.sh produces from protos/ now (a .proto edited without
# regenerating, or generated code edited by hand).
#
#   scripts/check_protos_fresh.sh        exit 0 when fresh, 1 (with a diff) when stale
#
# PYTHON overrides the interpreter, as for gen_protos.sh.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
committed="$root/protos/gen/python"
fresh="$(mktemp -d)"
trap 'rm -rf "$fresh"' EXIT

"$root/scripts/gen_protos.sh" "$fresh" >/dev/null 2>&1 || {
  echo "check_protos_fresh: generation failed; run scripts/gen_protos.sh to see why" >&2
  exit 1
}

if ! diff -ruN --exclude=__pycache__ "$committed/consent" "$fresh/consent"; then
  echo >&2
  echo "check_protos_fresh: protos/gen/python is stale (diff above)." >&2
  echo "Run 'make protos' (scripts/gen_protos.sh) and commit the result." >&2
  exit 1
fi
echo "check_protos_fresh: generated code matches protos/"
