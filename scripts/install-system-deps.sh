#!/usr/bin/env bash
# Installs the Debian packages the tests need (real parts instead of mocks):
#   redis-server        - the shared cache the tests start on a free port
#   python3-grpcio,
#   python3-grpc-tools  - a Python gRPC client built from our proto in a test
# Skips apt entirely when everything is already installed.
set -euo pipefail
packages=(redis-server python3-grpcio python3-grpc-tools prometheus)
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
