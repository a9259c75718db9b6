#!/usr/bin/env bash
# Calls the gateway with `buf curl` (npx buf, from the dev dependencies). The
# gateway serves gRPC reflection, so no .proto files are needed: buf asks the
# server for the schema, encodes the JSON request as protobuf and prints each
# response message as JSON as it arrives. `--schema proto` (from the
# repository root) uses the local files instead of reflection.
#
# Protocols: --protocol grpc --http2-prior-knowledge (plain gRPC over h2c, the
# gateway's fast path), --protocol connect, --protocol grpcweb.
# On failure buf curl exits non-zero and prints the error, with its details
# (type and base64 value), as JSON on stderr. It has no per-call deadline flag
# (see connect.sh for one). Each step checks its output; exit 1 on a surprise.
# Environment: OGW_ADDR (default localhost:50051), OGW_API_KEY, OGW_MODEL,
# OGW_EMBED_MODEL (examples/README.md).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
base=http://${OGW_ADDR:-localhost:50051}
model=${OGW_MODEL:-llama3.2}
buf=(npx --prefix "$root" buf curl)
grpc=(--protocol grpc --http2-prior-knowledge)
auth=()
if [ -n "${OGW_API_KEY:-}" ]; then auth=(-H "authorization: Bearer $OGW_API_KEY"); fi
grpc+=("${auth[@]}")

ok() { printf 'ok %-17s %s\n' "$1:" "$2"; }
fail() {
  echo "buf curl example: FAILED: $*" >&2
  exit 1
}
# Collapses buf curl's pretty-printed JSON onto one line (for grep).
flat() { tr -d '\n' | tr -s ' '; }

out=$("${buf[@]}" --list-services "$base")
grep -qx ollama.gateway.v1.InferenceService <<<"$out" || fail "list services: $out"
ok "list services" "$(paste -sd' ' <<<"$out")"

out=$("${buf[@]}" "${grpc[@]}" -d '{}' "$base/grpc.health.v1.Health/Check" | flat)
[ "$out" = '{ "status": "SERVING"}' ] || fail "health: $out"
ok health "$out"

out=$("${buf[@]}" "${grpc[@]}" -d '{}' "$base/ollama.gateway.v1.ModelService/ListModels" | flat)
grep -q "\"name\": \"$model:latest\"" <<<"$out" || fail "list models: $out"
ok "list models" "$model:latest is installed"

# One JSON object per streamed message.
out=$("${buf[@]}" "${grpc[@]}" \
  -d "{\"model\":\"$model\",\"prompt\":\"Why is the sky blue?\",\"options\":{\"numPredict\":8}}" \
  "$base/ollama.gateway.v1.InferenceService/Generate" | flat)
grep -q '"done": true' <<<"$out" || fail "generate: $out"
ok generate "$(grep -o '"doneReason": "[A-Z_]*"' <<<"$out")"

out=$("${buf[@]}" "${grpc[@]}" -d "{\"model\":\"$model\",
  \"messages\":[{\"role\":\"ROLE_USER\",\"content\":\"Use get_weather to tell me the weather in Paris\"}],
  \"tools\":[{\"name\":\"get_weather\",\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}},\"required\":[\"city\"]}}]}" \
  "$base/ollama.gateway.v1.InferenceService/Chat" | flat)
grep -q '"name": "get_weather"' <<<"$out" && grep -q '"city": "Paris"' <<<"$out" || fail "chat: $out"
ok "chat tool call" "get_weather(city=Paris)"

# The same Embed over the Connect protocol, with the schema from proto/ instead of reflection.
out=$(cd "$root" && "${buf[@]}" "${auth[@]}" --schema proto --protocol connect \
  -d "{\"model\":\"${OGW_EMBED_MODEL:-all-minilm}\",\"inputs\":[\"hello world\",\"hello there\"]}" \
  "$base/ollama.gateway.v1.InferenceService/Embed" | flat)
[ "$(grep -o '"values": \[' <<<"$out" | wc -l)" = 2 ] || fail "embed: ${out:0:200}"
ok embed "2 vectors (Connect protocol, --schema proto)"

# An error: non-zero exit, nothing on stdout, the status as JSON on stderr.
if err=$("${buf[@]}" "${grpc[@]}" -d '{"model":"no-such-model","prompt":"hi"}' \
  "$base/ollama.gateway.v1.InferenceService/Generate" 2>&1 >/dev/null); then
  fail "unknown model: buf curl succeeded"
fi
err=$(flat <<<"$err")
grep -q '"code": "not_found"' <<<"$err" && grep -q '"type": "google.rpc.ErrorInfo"' <<<"$err" ||
  fail "unknown model: $err"
ok error "$err"
echo "buf curl example: all checks passed"
