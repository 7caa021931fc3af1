#!/usr/bin/env bash
# Regenerate every protobuf/gRPC Python module (and its .pyi stub) from protos/.
# The output is committed and never edited by hand; run this after any .proto change.
#
#   scripts/gen_protos.sh [OUT_DIR]   (default: protos/gen/python)
#
# Needs grpcio-tools and mypy-protobuf in the active Python (pip install -e '.[dev]').
# PYTHON overrides the interpreter.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/protos/gen/python}"
python="${PYTHON:-python3}"
# protoc finds the mypy-protobuf plugins (protoc-gen-mypy*) on PATH: use the ones
# installed next to this interpreter.
PATH="$("$python" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"

# Start from nothing, so a deleted or renamed .proto leaves no stale module behind.
rm -rf "$out/consent"
mkdir -p "$out"

cd "$root/protos"
mapfile -t sources < <(find consent -name '*.proto' | LC_ALL=C sort)

"$python" -m grpc_tools.protoc \
  -I . \
  --python_out="$out" \
  --grpc_python_out="$out" \
  --mypy_out="$out" \
  --mypy_grpc_out="$out" \
  "${sources[@]}"

# Ship the contract with the code, so a consumer of the wheel needs nothing else:
# each .proto beside its module, and every file of the package (imports included,
# comments too) as one descriptor set that `protoc --descriptor_set_in` and any
# protobuf runtime can load.
for src in "${sources[@]}"; do cp "$src" "$out/$src"; done
"$python" -m grpc_tools.protoc \
  -I . \
  --include_imports \
  --include_source_info \
  --descriptor_set_out="$out/consent/v1/consent_v1.binpb" \
  "${sources[@]}"

# protoc writes no __init__.py; make every generated directory an ordinary package.
find "$out/consent" -type d -exec sh -c 'for d; do : > "$d/__init__.py"; done' _ {} +
