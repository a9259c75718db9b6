"""A plain grpcio client for the gateway, run by test/python-client.spec.ts.

Usage: client.py <host:port> <stubs dir> [api key]

The stubs dir holds Python code generated from proto/ by grpc_tools.protoc.
Each call prints one JSON line, so the test can assert on what a Python
client really sees (decoded messages, status codes, error details).
"""

import json
import sys

import grpc

address, stubs = sys.argv[1], sys.argv[2]
api_key = sys.argv[3] if len(sys.argv) > 3 else None
METADATA = (("authorization", "Bearer " + api_key),) if api_key else ()
sys.path.insert(0, stubs)

from google.rpc import error_details_pb2, status_pb2  # noqa: E402
from ollama.gateway.v1 import inference_pb2, inference_pb2_grpc, types_pb2  # noqa: E402

TIMEOUT_S = 10


def emit(**fields):
    print(json.dumps(fields), flush=True)


def generate(stub):
    texts = 0
    last = None
    request = inference_pb2.GenerateRequest(
        model="llama3.2",
        prompt="Tell me about llamas",
        options=types_pb2.Options(num_predict=8),
    )
    for msg in stub.Generate(request, timeout=TIMEOUT_S, metadata=METADATA):
        if msg.text:
            texts += 1
        last = msg
    emit(
        call="generate",
        texts=texts,
        done=last.done,
        done_reason=types_pb2.DoneReason.Name(last.done_reason),
        completion_tokens=last.usage.completion_tokens,
        node=last.usage.node,
    )


def embed(stub):
    res = stub.Embed(
        inference_pb2.EmbedRequest(model="all-minilm", inputs=["alpha", "beta"]),
        timeout=TIMEOUT_S,
        metadata=METADATA,
    )
    emit(
        call="embed",
        count=len(res.embeddings),
        dims=[len(e.values) for e in res.embeddings],
        prompt_tokens=res.usage.prompt_tokens,
    )


def unknown_model(stub):
    request = inference_pb2.GenerateRequest(model="no-such-model", prompt="hi")
    failed_call(stub, request, "error", METADATA)


def without_key(stub):
    request = inference_pb2.GenerateRequest(model="llama3.2", prompt="hi")
    failed_call(stub, request, "unauthenticated", ())


def failed_call(stub, request, name, metadata):
    try:
        for _ in stub.Generate(request, timeout=TIMEOUT_S, metadata=metadata):
            pass
    except grpc.RpcError as err:
        raw = dict(err.trailing_metadata() or ()).get("grpc-status-details-bin")
        status = status_pb2.Status()
        if raw is not None:
            status.ParseFromString(raw)
        infos = []
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                infos.append(info)
        info = infos[0] if infos else error_details_pb2.ErrorInfo()
        emit(
            call=name,
            code=err.code().name,
            message=err.details(),
            status_code=status.code,
            error_infos=len(infos),
            reason=info.reason,
            domain=info.domain,
            metadata=dict(info.metadata),
        )
        return
    emit(call=name, code="OK")


with grpc.insecure_channel(address) as channel:
    stub = inference_pb2_grpc.InferenceServiceStub(channel)
    generate(stub)
    embed(stub)
    unknown_model(stub)
    if api_key:
        without_key(stub)
