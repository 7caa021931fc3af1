#!/usr/bin/env bash
# Print the path of a grpcurl binary, building it once with `go install` into the
# tools cache (~/.cache/consent-ledger/tools/bin) when there is none on PATH or in
# the cache. The README's walk-through runs it in a test (tests/e2e/test_grpcurl.py).
#
#   GRPCURL_VERSION       the module version to install (default: pinned below)
#   ENSURE_RETRY_PAUSE_S  seconds before a second attempt, twice that before a third (5)
set -euo pipefail

version="${GRPCURL_VERSION:-v1.9.4}"
cache="${CONSENT_TOOLS_DIR:-$HOME/.cache/consent-ledger/tools}/bin"

if command -v grpcurl >/dev/null 2>&1; then
  command -v grpcurl
  exit 0
fi
if [[ -x "$cache/grpcurl" ]]; then
  echo "$cache/grpcurl"
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "ensure_grpcurl: grpcurl is missing and so is go to build it;" \
    "install either (https://github.com/fullstorydev/grpcurl/releases)" >&2
  exit 1
fi
mkdir -p "$cache"
# go fetches each module once, with no retry of its own (golang/go#28194): one reset
# connection to the module proxy would fail `make test` on a fresh machine. A later
# attempt resumes from the module cache.
attempts=3
for attempt in $(seq "$attempts"); do
  echo "ensure_grpcurl: go install github.com/fullstorydev/grpcurl/cmd/grpcurl@$version" >&2
  if GOBIN="$cache" go install "github.com/fullstorydev/grpcurl/cmd/grpcurl@$version" >&2; then
    echo "$cache/grpcurl"
    exit 0
  fi
  if (( attempt < attempts )); then
    echo "ensure_grpcurl: attempt $attempt of $attempts failed; trying again" >&2
    sleep $(( attempt * ${ENSURE_RETRY_PAUSE_S:-5} ))
  fi
done
echo "ensure_grpcurl: go install failed $attempts times" >&2
exit 1
