#!/usr/bin/env bash
# Installs the Debian packages the tests and the client examples need (real
# parts instead of mocks):
#   redis-server        - the shared cache the tests start on a free port
#   python3-grpcio,
#   python3-grpc-tools  - Python gRPC clients built from our proto (a test and
#                         examples/python)
#   golang-go ... protoc-gen-go-grpc
#                       - examples/go, built from Debian's Go sources only:
#                         protoc and its Go plugins, grpc-go, and the 1.5
#                         github.com/golang/protobuf runtime that
#                         protoc-gen-go 1.28's code needs (the 1.3 one,
#                         golang-goprotobuf-dev, builds but panics at run time)
#   curl, perl          - examples/curl
# Skips apt entirely when everything is already installed.
set -euo pipefail
packages=(
  redis-server python3-grpcio python3-grpc-tools prometheus
  golang-go golang-google-grpc-dev golang-github-golang-protobuf-1-5-dev golang-google-protobuf-dev
  golang-google-genproto-dev protobuf-compiler protoc-gen-go protoc-gen-go-grpc
  curl perl
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "system packages: all present (${packages[*]})"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "system packages: installing ${missing[*]}"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
