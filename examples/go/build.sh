#!/usr/bin/env bash
# Builds the Go example from Debian's packages only: no module proxy, no
# go.mod. Stubs are generated from proto/ at build time, then the program is
# built in GOPATH mode against the Go sources Debian installs under
# /usr/share/gocode (grpc-go, google.golang.org/protobuf 1.28, the
# github.com/golang/protobuf 1.5 runtime, genproto). Needs (Debian bookworm):
#   golang-go golang-google-grpc-dev golang-github-golang-protobuf-1-5-dev
#   golang-google-protobuf-dev golang-google-genproto-dev protobuf-compiler
#   protoc-gen-go protoc-gen-go-grpc
# (scripts/install-system-deps.sh installs them).
#
# Usage: examples/go/build.sh [output binary]   (default examples/go/bin/client)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$here/bin/client}

# A private GOPATH entry for the generated package, then Debian's sources.
gopath=$here/.gopath
rm -rf "$gopath/src/ollama-grpc-gateway"
mkdir -p "$gopath/src" "$(dirname "$out")"

# protoc writes each file under its go_package import path
# (ollama-grpc-gateway/gen/go/ollama/gateway/v1). Only our four files are
# generated: the health stubs come with grpc-go and google.rpc's with genproto
# (generating them again would register the same proto twice and panic).
protoc -I "$root/proto" \
  --go_out="$gopath/src" \
  --go-grpc_out="$gopath/src" \
  "$root"/proto/ollama/gateway/v1/*.proto

export GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" GOFLAGS=
cd "$here"
go vet .
go build -o "$out" .
echo "built $out"
