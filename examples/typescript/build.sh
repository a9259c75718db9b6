#!/usr/bin/env bash
# Generates the TypeScript stubs (protoc-gen-es, through buf) into
# examples/typescript/gen and type-checks the examples against them.
set -euo pipefail
cd "$(dirname "$0")"
npx buf generate ../../proto
npx tsc -p .
echo "generated gen/ and type-checked"
