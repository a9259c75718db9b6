#!/usr/bin/env bash
# Calls the gateway with plain curl over the Connect protocol: JSON over HTTP
# (1.1 or 2) on the gateway's one port, no stubs and no .proto files. Each
# step checks what it got and the script exits 1 at the first surprise, so CI
# (scripts/run-examples.sh) can run it.
#
#   unary:  POST /<package.Service>/<Method>, content-type application/json,
#           the request as JSON; the answer is the response as JSON (200), or
#           an error object {"code","message","details"} with an HTTP status.
#   stream: content-type application/connect+json; the request and every
#           response message are "enveloped": 1 flag byte, a 4-byte big-endian
#           length, the JSON. The last envelope (flag 2) holds {} or {"error"}.
#   deadline: header connect-timeout-ms.
#
# JSON field names are protobuf's JSON names (camelCase), enums by name, 64-bit
# integers as strings, Durations as "1.5s", bytes as base64.
# Environment: OGW_ADDR (default localhost:50051), OGW_API_KEY, OGW_MODEL,
# OGW_EMBED_MODEL, OGW_BUSY_MODEL, OGW_SLOW_MODEL (examples/README.md).
set -euo pipefail
export LC_ALL=C # ${#json} counts bytes
base=http://${OGW_ADDR:-localhost:50051}
model=${OGW_MODEL:-llama3.2}
auth=()
if [ -n "${OGW_API_KEY:-}" ]; then auth=(-H "authorization: Bearer $OGW_API_KEY"); fi

ok() { printf 'ok %-17s %s\n' "$1:" "$2"; }
fail() {
  echo "curl example: FAILED: $*" >&2
  exit 1
}

# unary <Service/Method> <json> [timeout ms] -> sets $out (the body) and $status (HTTP).
unary() {
  local body
  body=$(curl -sS "${auth[@]}" -w '\n%{http_code}' -H 'content-type: application/json' \
    -H "connect-timeout-ms: ${3:-30000}" -d "$2" "$base/$1")
  status=${body##*$'\n'}
  out=${body%$'\n'*}
}

# stream <Service/Method> <json> [timeout ms] -> one JSON document per line:
# every response message, then the end-of-stream object: its "metadata" holds the
# trailers (the gateway always sends x-request-id), and it has an "error" only on failure.
stream() {
  local n=${#2} prefix
  # The request envelope: flag 0, big-endian length, JSON.
  prefix=$(printf '\\x%02x' 0 $((n >> 24 & 255)) $((n >> 16 & 255)) $((n >> 8 & 255)) $((n & 255)))
  {
    printf "$prefix"
    printf '%s' "$2"
  } | curl -sS -N "${auth[@]}" -H 'content-type: application/connect+json' \
    -H "connect-timeout-ms: ${3:-30000}" --data-binary @- "$base/$1" |
    # Unwrap the response envelopes (perl is in every Debian/Ubuntu base image).
    perl -e 'binmode STDIN; local $/; my $d = <STDIN>;
      while (length $d >= 5) { my ($f, $n) = unpack("CN", $d); print substr($d, 5, $n), "\n"; $d = substr($d, 5 + $n) }'
}

# ended_ok <stream output>: the end-of-stream object (last line) carries no error.
ended_ok() {
  local end
  end=$(tail -n 1 <<<"$1")
  [[ $end == "{"* ]] && ! grep -q '"error"' <<<"$end"
}

# Health (grpc.health.v1 answers Connect too).
unary grpc.health.v1.Health/Check '{}'
[ "$out" = '{"status":"SERVING"}' ] || fail "health: $status $out"
ok health "$out"

# ListModels (merged over the nodes).
unary ollama.gateway.v1.ModelService/ListModels '{}'
grep -q "\"name\":\"$model:latest\"" <<<"$out" || fail "list models: $status $out"
ok "list models" "$(grep -o '"name":"[^"]*"' <<<"$out" | cut -d'"' -f4 | paste -sd, -)"

# Generate, streamed: each line is one message as it arrives.
out=$(stream ollama.gateway.v1.InferenceService/Generate \
  "{\"model\":\"$model\",\"prompt\":\"Why is the sky blue?\",\"options\":{\"numPredict\":8}}")
last=$(tail -n 2 <<<"$out" | head -n 1)
ended_ok "$out" || fail "generate: the stream did not end OK: $out"
grep -q '"done":true' <<<"$last" || fail "generate: no final message: $out"
ok generate "$(($(wc -l <<<"$out") - 1)) messages, last: $last"

# Chat with a tool: the model asks for get_weather(city)...
tools='[{"name":"get_weather","description":"Current weather in a city","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}]'
user='{"role":"ROLE_USER","content":"Use get_weather to tell me the weather in Paris"}'
out=$(stream ollama.gateway.v1.InferenceService/Chat "{\"model\":\"$model\",\"messages\":[$user],\"tools\":$tools}")
call=$(grep -o '"toolCalls":\[[^]]*\]' <<<"$out" | head -n 1) || fail "chat: no tool call: $out"
id=$(grep -o '"id":"[^"]*"' <<<"$call" | cut -d'"' -f4)
grep -q '"name":"get_weather"' <<<"$call" && grep -q '"city":"Paris"' <<<"$call" || fail "chat: unexpected call $call"
ok "chat tool call" "$call"
# ...and answers in text once the tool's result is sent back with the call's id.
assistant="{\"role\":\"ROLE_ASSISTANT\",$call}"
tool="{\"role\":\"ROLE_TOOL\",\"content\":\"{\\\"temperature_c\\\":18}\",\"toolName\":\"get_weather\",\"toolCallId\":\"$id\"}"
out=$(stream ollama.gateway.v1.InferenceService/Chat \
  "{\"model\":\"$model\",\"messages\":[$user,$assistant,$tool],\"tools\":$tools}")
ended_ok "$out" || fail "chat: the stream did not end OK: $out"
grep -q '"content":"' <<<"$out" && ! grep -q '"toolCalls"' <<<"$out" || fail "chat: no text answer: $out"
ok "chat tool result" "$(grep -o '"content":"[^"]*"' <<<"$out" | cut -d'"' -f4 | paste -sd' ' -)"

# Embed (unary). Vectors come back as JSON number arrays here; gRPC clients get packed floats.
unary ollama.gateway.v1.InferenceService/Embed \
  "{\"model\":\"${OGW_EMBED_MODEL:-all-minilm}\",\"inputs\":[\"hello world\",\"hello there\"]}"
[ "$status" = 200 ] && [ "$(grep -o '"values":\[' <<<"$out" | wc -l)" = 2 ] || fail "embed: $status ${out:0:200}"
ok embed "2 vectors"

# Errors: an HTTP status, a Connect code and the details, each with its JSON
# form in "debug" (the binary google.rpc message is in "value").
unary ollama.gateway.v1.InferenceService/Embed '{"model":"no-such-model","inputs":["hi"]}'
[ "$status" = 404 ] && grep -q '"code":"not_found"' <<<"$out" &&
  grep -q '"type":"google.rpc.ErrorInfo","debug":{"reason":"MODEL_NOT_FOUND","domain":"ollama.gateway.v1"' <<<"$out" ||
  fail "unknown model: $status $out"
ok error "$status $out"

# A retryable error: UNAVAILABLE (HTTP 503) or RESOURCE_EXHAUSTED (429) with RetryInfo. On a
# stream the error is in the last envelope.
if [ -n "${OGW_BUSY_MODEL:-}" ]; then
  out=$(stream ollama.gateway.v1.InferenceService/Generate "{\"model\":\"$OGW_BUSY_MODEL\",\"prompt\":\"hi\"}")
  grep -qE '"code":"(unavailable|resource_exhausted)"' <<<"$out" &&
    grep -q '"type":"google.rpc.RetryInfo","debug":{"retryDelay":"' <<<"$out" ||
    fail "busy model: $out"
  ok "retryable error" "$(tail -n 1 <<<"$out")"
fi

# A deadline shorter than the call: deadline_exceeded.
out=$(stream ollama.gateway.v1.InferenceService/Generate \
  "{\"model\":\"${OGW_SLOW_MODEL:-$model}\",\"prompt\":\"Write a very long story.\",\"options\":{\"numPredict\":100000}}" 500)
grep -q '"code":"deadline_exceeded"' <<<"$(tail -n 1 <<<"$out")" || fail "deadline: $(tail -n 1 <<<"$out")"
ok deadline "$(tail -n 1 <<<"$out")"
echo "curl example: all checks passed"
