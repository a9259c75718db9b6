#!/usr/bin/env bash
# Generates the Python stubs the example imports, with grpc_tools, into
# examples/python/gen (or the directory given as $1).
#
# With a current grpcio-tools (pip) this is one command:
#   python3 -m grpc_tools.protoc -I proto --python_out=gen --grpc_python_out=gen <files>
# Debian bookworm's python3-grpc-tools bundles protoc 3.5.1, which rejects the
# proto3 `optional` fields our protos use ("Explicit 'optional' labels are
# disallowed"). Then a newer compiler (Debian's protoc, else buf) parses the
# files into a descriptor set and grpc_tools only runs its Python generators
# on it (docs/clients.md, "Python").
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$here/gen}
python=${PYTHON:-/usr/bin/python3}
files=(
  ollama/gateway/v1/inference.proto
  ollama/gateway/v1/model.proto
  ollama/gateway/v1/types.proto
  google/rpc/error_details.proto
  google/rpc/status.proto
  grpc/health/v1/health.proto
)
rm -rf "$out"
mkdir -p "$out"

# Stubs generated under grpc/health/v1 cannot be imported: the installed
# `grpc` package shadows that directory. They move to grpc_health/v1, where
# pip's grpcio-health-checking puts them (with pip, install that instead).
move_health() {
  mkdir -p "$out/grpc_health"
  mv "$out/grpc/health/v1" "$out/grpc_health/v1"
  rm -rf "$out/grpc"
  sed -i 's/^from grpc\.health\.v1 import/from grpc_health.v1 import/' "$out/grpc_health/v1/health_pb2_grpc.py"
}

if "$python" -m grpc_tools.protoc -I "$root/proto" --python_out="$out" --grpc_python_out="$out" "${files[@]}" 2>/dev/null; then
  move_health
  echo "generated $out (grpc_tools)"
  exit 0
fi

set_file=$out/gateway.binpb
if command -v protoc >/dev/null; then
  protoc -I "$root/proto" --include_imports --descriptor_set_out="$set_file" "${files[@]}"
else
  (cd "$root" && npx buf build --as-file-descriptor-set -o "$set_file")
fi
# `python -m grpc_tools.protoc` always adds -I, which protoc refuses together
# with --descriptor_set_in, so its main() is called directly.
"$python" -c 'import sys; from grpc_tools import protoc; sys.exit(protoc.main(sys.argv[1:]))' \
  protoc --descriptor_set_in="$set_file" --python_out="$out" --grpc_python_out="$out" "${files[@]}"
rm -f "$set_file"
move_health
echo "generated $out (grpc_tools, from a descriptor set)"
