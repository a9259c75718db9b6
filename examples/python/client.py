"""Calls ollama-grpc-gateway the way a Python service does: grpcio and stubs
generated from proto/ by grpc_tools (examples/python/generate.sh).

It streams a completion, runs a chat turn with a tool call and its result,
embeds two texts, reads ErrorInfo and RetryInfo from failed calls, shows a
deadline, sends credentials when OGW_API_KEY is set, and checks health. Every
step checks what it got and the script exits 1 at the first surprise, so CI
(scripts/run-examples.sh) can run it against the gateway.

Usage: python3 client.py [stubs dir]   (default: gen/ beside this file)
Environment: OGW_ADDR (default localhost:50051), OGW_API_KEY, OGW_MODEL,
OGW_EMBED_MODEL, OGW_BUSY_MODEL, OGW_SLOW_MODEL (examples/README.md).
"""

import json
import os
import sys
import time

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "gen"))

from google.protobuf import struct_pb2  # noqa: E402
from google.rpc import error_details_pb2, status_pb2  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from ollama.gateway.v1 import (  # noqa: E402
    inference_pb2,
    inference_pb2_grpc,
    model_pb2,
    model_pb2_grpc,
    types_pb2,
)

# Bounds every call expected to succeed. Always pass a timeout: without one
# the gateway applies its MAX_DEADLINE_MS (30 min).
CALL_TIMEOUT_S = 30


def env(name, default):
    return os.environ.get(name) or default


def ok(step, detail):
    print(f"ok {step + ':':<17} {detail}", flush=True)


def check(cond, message):
    if not cond:
        print(f"python example: FAILED: {message}", file=sys.stderr)
        sys.exit(1)


class Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds `authorization: Bearer <key>` to every call.

    On a TLS channel, grpc.access_token_call_credentials does the same; it
    refuses plaintext channels, hence an interceptor here.
    """

    def __init__(self, key):
        self._header = ("authorization", f"Bearer {key}")

    def _with_key(self, details):
        metadata = list(details.metadata or []) + [self._header]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_key(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_key(details), request)


def details(err):
    """ErrorInfo and RetryInfo of a failed call, from the
    grpc-status-details-bin trailer (a google.rpc.Status). grpcio-status
    (pip) wraps this as rpc_status.from_call(err)."""
    raw = dict(err.trailing_metadata() or ()).get("grpc-status-details-bin")
    info = retry = None
    if raw is None:
        return info, retry
    status = status_pb2.Status.FromString(raw)
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
    return info, retry


def health(channel):
    res = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT_S)
    check(res.status == health_pb2.HealthCheckResponse.SERVING, f"health: {res.status}")
    ok("health", health_pb2.HealthCheckResponse.ServingStatus.Name(res.status))


def list_models(channel, model):
    res = model_pb2_grpc.ModelServiceStub(channel).ListModels(model_pb2.ListModelsRequest(), timeout=CALL_TIMEOUT_S)
    names = [m.name for m in res.models]
    check(model in names or f"{model}:latest" in names, f"list models: {model} not in {names}")
    ok("list models", ", ".join(names))


def generate(stub, model):
    request = inference_pb2.GenerateRequest(
        model=model, prompt="Why is the sky blue?", options=types_pb2.Options(num_predict=8)
    )
    text, last = [], None
    # A server stream is an iterator; its errors are raised while iterating.
    for msg in stub.Generate(request, timeout=CALL_TIMEOUT_S):
        text.append(msg.text)
        last = msg
    # A stream always ends with one done message, or with an error.
    check(last is not None and last.done, "generate: no final message")
    check("".join(text), "generate: no text")
    reason = types_pb2.DoneReason.Name(last.done_reason)
    ok("generate", f"{''.join(text)!r} ({reason}, {last.usage.completion_tokens} tokens, node {last.usage.node})")


def chat(stub, request):
    """One streamed chat turn, its deltas folded into one message."""
    reply = types_pb2.Message(role=types_pb2.ROLE_ASSISTANT)
    done = False
    for msg in stub.Chat(request, timeout=CALL_TIMEOUT_S):
        reply.content += msg.message.content
        reply.thinking += msg.message.thinking
        reply.tool_calls.extend(msg.message.tool_calls)
        done = msg.done
    check(done, "chat: no final message")
    return reply


def chat_with_tool(stub, model):
    parameters = struct_pb2.Struct()
    parameters.update(
        {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
        }
    )
    tools = [types_pb2.Tool(name="get_weather", description="Current weather in a city", parameters=parameters)]
    messages = [types_pb2.Message(role=types_pb2.ROLE_USER, content="Use get_weather to tell me the weather in Paris")]

    # Turn 1: the model answers with a tool call instead of text.
    reply = chat(stub, inference_pb2.ChatRequest(model=model, messages=messages, tools=tools))
    check(len(reply.tool_calls) == 1, f"chat: expected one tool call, got {list(reply.tool_calls)}")
    call = reply.tool_calls[0]
    city = call.arguments["city"] if "city" in call.arguments else ""
    check(call.name == "get_weather" and city, f"chat: unexpected tool call {call}")
    ok("chat tool call", f"{call.name}(city={city!r}) id={call.id}")

    # Turn 2: our "tool" runs, and its result goes back with the call's id.
    result = json.dumps({"city": city, "temperature_c": 18, "sky": "clear"})
    messages += [
        reply,
        types_pb2.Message(role=types_pb2.ROLE_TOOL, content=result, tool_name=call.name, tool_call_id=call.id),
    ]
    answer = chat(stub, inference_pb2.ChatRequest(model=model, messages=messages, tools=tools))
    check(answer.content and not answer.tool_calls, "chat: no text answer after the tool result")
    ok("chat tool result", repr(answer.content))


def embed(stub, model):
    res = stub.Embed(inference_pb2.EmbedRequest(model=model, inputs=["hello world", "hello there"]), timeout=CALL_TIMEOUT_S)
    check(len(res.embeddings) == 2, f"embed: {len(res.embeddings)} vectors for 2 inputs")
    dims = [len(e.values) for e in res.embeddings]
    check(dims[0] > 0 and dims[0] == dims[1], f"embed: vector sizes {dims}")
    ok("embed", f"2 vectors of {dims[0]} dimensions ({res.cached_inputs} from the cache)")


def generate_error(stub, request, timeout):
    """Runs a Generate call to its end; returns its grpc.RpcError (or None)."""
    try:
        for _ in stub.Generate(request, timeout=timeout):
            pass
    except grpc.RpcError as err:
        return err
    return None


def unknown_model(stub):
    # ErrorInfo.reason is stable: switch on it, not on the message.
    err = generate_error(stub, inference_pb2.GenerateRequest(model="no-such-model", prompt="hi"), CALL_TIMEOUT_S)
    check(err is not None and err.code() == grpc.StatusCode.NOT_FOUND, f"unknown model: got {err}")
    info, _ = details(err)
    check(
        info is not None and info.reason == "MODEL_NOT_FOUND" and info.domain == "ollama.gateway.v1",
        f"unknown model: ErrorInfo {info}",
    )
    ok("error", f"{err.code().name} {info.reason} (domain {info.domain}, model {info.metadata['model']})")


def busy_model(stub, model):
    # Worth retrying: UNAVAILABLE or RESOURCE_EXHAUSTED, with RetryInfo.
    err = generate_error(stub, inference_pb2.GenerateRequest(model=model, prompt="hi"), CALL_TIMEOUT_S)
    retryable = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
    check(err is not None and err.code() in retryable, f"busy model: got {err}")
    info, retry = details(err)
    delay = retry.retry_delay.ToTimedelta().total_seconds() if retry is not None else 0
    check(info is not None and delay > 0, f"busy model: ErrorInfo {info}, RetryInfo {retry}")
    # A real client would now sleep `delay` (plus jitter) and try again.
    ok("retryable error", f"{err.code().name} {info.reason}, retry after {delay}s")


def deadline(stub, model):
    # Less time than the call needs: the gateway stops the upstream work and
    # the call ends with DEADLINE_EXCEEDED.
    request = inference_pb2.GenerateRequest(
        model=model, prompt="Write a very long story.", options=types_pb2.Options(num_predict=100000)
    )
    start = time.monotonic()
    err = generate_error(stub, request, 0.5)
    check(err is not None and err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline: got {err}")
    ok("deadline", f"{err.code().name} after {time.monotonic() - start:.2f}s")


def main():
    address = env("OGW_ADDR", "localhost:50051")
    model = env("OGW_MODEL", "llama3.2")
    # Plaintext HTTP/2 as the gateway serves it; in a mesh the sidecars add
    # mTLS. With TLS use grpc.secure_channel.
    channel = grpc.insecure_channel(address)
    if os.environ.get("OGW_API_KEY"):
        channel = grpc.intercept_channel(channel, Bearer(os.environ["OGW_API_KEY"]))
    with channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        health(channel)
        list_models(channel, model)
        generate(stub, model)
        chat_with_tool(stub, model)
        embed(stub, env("OGW_EMBED_MODEL", "all-minilm"))
        unknown_model(stub)
        if os.environ.get("OGW_BUSY_MODEL"):
            busy_model(stub, os.environ["OGW_BUSY_MODEL"])
        deadline(stub, env("OGW_SLOW_MODEL", model))
    print("python example: all checks passed")


if __name__ == "__main__":
    main()
