#!/usr/bin/env bash
# Builds and runs every client example in examples/ against a real gateway in
# front of the Ollama simulator, the way .ci/run does. Each example checks its
# own output and exits non-zero on a mismatch; this script fails on the first
# example that does.
#
# The fleet: a "main" simulator node with llama3.2 (tools), all-minilm
# (embeddings) and llava, whose requests stall for a minute (so a short
# deadline really expires), and a "busy" node with qwen3 that answers every
# request with Ollama's 503 "server busy" (so the examples see UNAVAILABLE
# with ErrorInfo and RetryInfo). Ports are free ones picked by the OS.
#
# Usage: scripts/run-examples.sh [go|python|typescript|curl ...]  (default: all)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
wanted=("$@")
[ "${#wanted[@]}" -gt 0 ] || wanted=(go python typescript curl)
logs=$(mktemp -d)
pids=()
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$status" -ne 0 ]; then
    for f in "$logs"/*.log; do echo "--- $f" >&2; tail -n 20 "$f" >&2; done
  fi
  rm -rf "$logs"
}
trap cleanup EXIT

# Waits (up to 30 s) for a line matching $2 in log file $1 and prints it.
wait_for_line() {
  local file=$1 pattern=$2
  for _ in $(seq 300); do
    if grep -m1 -E "$pattern" "$file" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "run-examples: timed out waiting for /$pattern/ in $file" >&2
  return 1
}

node --import tsx src/simulator/main.ts --port 0 --load-ms 0 \
  --models llama3.2,all-minilm,llava \
  --fault "stall,ms=60000,model=llava,times=-1" >"$logs/sim-main.log" 2>&1 &
pids+=($!)
node --import tsx src/simulator/main.ts --port 0 --load-ms 0 \
  --models qwen3 \
  --fault "busy,model=qwen3,times=-1" >"$logs/sim-busy.log" 2>&1 &
pids+=($!)
main_url=$(wait_for_line "$logs/sim-main.log" 'listening on' | grep -oE 'http://[0-9.]+:[0-9]+')
busy_url=$(wait_for_line "$logs/sim-busy.log" 'listening on' | grep -oE 'http://[0-9.]+:[0-9]+')

# API-key authentication on, as in production: the gateway knows only the key's SHA-256.
api_key="ogw-example-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
api_key_hash=$(printf '%s' "$api_key" | sha256sum | cut -d' ' -f1)
PORT=0 HOST=127.0.0.1 LOG_LEVEL=info OLLAMA_URLS="main=$main_url,busy=$busy_url" \
  API_KEYS="examples:$api_key_hash" node --import tsx src/main.ts >"$logs/gateway.log" 2>&1 &
pids+=($!)
port=$(wait_for_line "$logs/gateway.log" '"gateway listening"' | grep -oE '"port":[0-9]+' | grep -oE '[0-9]+')
addr=127.0.0.1:$port
echo "gateway on $addr, nodes main=$main_url busy=$busy_url"

# Health is NOT_SERVING until a node has answered a probe.
for _ in $(seq 100); do
  if npx buf curl --protocol grpc --http2-prior-knowledge -d '{}' \
    "http://$addr/grpc.health.v1.Health/Check" 2>/dev/null | grep -q '"SERVING"'; then break; fi
  sleep 0.2
done

export OGW_ADDR=$addr OGW_MODEL=llama3.2 OGW_EMBED_MODEL=all-minilm OGW_BUSY_MODEL=qwen3 OGW_SLOW_MODEL=llava
# The examples send it as `authorization: Bearer ...`.
export OGW_API_KEY=$api_key

run() {
  local name=$1; shift
  local t0=$SECONDS
  echo
  echo "--- $name"
  "$@"
  echo "--- $name: passed in $((SECONDS - t0)) s"
}

for example in "${wanted[@]}"; do
  case $example in
    go)
      run "go (build)" examples/go/build.sh "$logs/go-client"
      run "go" "$logs/go-client"
      ;;
    python)
      run "python (stubs)" examples/python/generate.sh "$logs/python-gen"
      run "python" "${PYTHON:-/usr/bin/python3}" examples/python/client.py "$logs/python-gen"
      ;;
    typescript)
      run "typescript (stubs, typecheck)" examples/typescript/build.sh
      run "typescript: connect" node --import tsx examples/typescript/connect-client.ts
      run "typescript: grpc-js" node --import tsx examples/typescript/grpc-js-client.ts
      ;;
    curl)
      run "curl (Connect JSON)" examples/curl/connect.sh
      run "buf curl" examples/curl/buf-curl.sh
      ;;
    *)
      echo "run-examples: unknown example '$example'" >&2
      exit 2
      ;;
  esac
done
echo
echo "run-examples: every example passed (${wanted[*]})"
