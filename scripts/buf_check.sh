#!/usr/bin/env bash
# Lint the .proto files (buf STANDARD rules, protos/buf.yaml) and, given a git
# ref, fail when protos/ changed incompatibly since that ref.
#
#   scripts/buf_check.sh              lint only
#   scripts/buf_check.sh origin/main  lint, then buf breaking against origin/main
#   scripts/buf_check.sh protos/released/consent-v1-0.1.0.binpb
#                                     lint, then buf breaking against a released image
#
# A release stores its API as a buf image (`buf build protos -o
# protos/released/consent-v1-X.Y.Z.binpb`), so the check needs no tags or history
# in the checkout it runs in.
#
# Uses `buf` from PATH when present, else the pinned release through npx; BUF
# overrides the command.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [[ -n "${BUF:-}" ]]; then
  read -r -a buf <<<"$BUF"
elif command -v buf >/dev/null 2>&1; then
  buf=(buf)
else
  buf=(npx --yes @bufbuild/buf@1.75.0)
fi

"${buf[@]}" lint protos
echo "buf lint: ok"

if [[ $# -ge 1 ]]; then
  if [[ "$1" == *.binpb ]]; then
    against="$1"
  else
    against="$root/.git#ref=$1,subdir=protos"
  fi
  "${buf[@]}" breaking protos --against "$against"
  echo "buf breaking against $1: ok"
fi
