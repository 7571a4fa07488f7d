"""A call that the error interceptor ends (abort_with_status, details attached) is exported with
its real gRPC code and, for the server-side codes, status ERROR, for unary and streaming calls
alike: the interceptor stack of the services (tracing outside, errors innermost) on a real
loopback server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from inference_svc.domain.errors import ErrorKind, InspectionError, Reason
from inference_svc.grpc_api.errors import error_interceptor
from svc_common.tracing import grpc_server_interceptors

FAILURES = {
    b"unavailable": InspectionError(
        ErrorKind.UNAVAILABLE, Reason.IMAGE_SOURCE_UNAVAILABLE, "the image host failed"
    ),
    b"invalid": InspectionError(ErrorKind.INVALID_ARGUMENT, Reason.QUESTIONS_INVALID, "bad"),
}


def _fail(request: bytes) -> None:
    if request == b"boom":
        raise RuntimeError("unexpected")
    if request in FAILURES:
        raise FAILURES[request]


async def unary(request: bytes, context: Any) -> bytes:
    _fail(request)
    return b"ok"


async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield b"first"
    _fail(request)
    yield b"ok"


@pytest.fixture
async def channel(tracer_provider: TracerProvider) -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server(
        interceptors=[*grpc_server_interceptors(tracer_provider), error_interceptor()]
    )
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.S", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    await server.stop(None)


async def _server_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    # The server ends its span after the status has gone out, so the client can see the status
    # a moment before the span is exported.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        spans = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
        if spans or loop.time() > deadline:
            return spans
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("method", ["Unary", "Stream"])
@pytest.mark.parametrize(
    ("request_bytes", "code", "status"),
    [
        (b"fine", grpc.StatusCode.OK, StatusCode.UNSET),
        (b"unavailable", grpc.StatusCode.UNAVAILABLE, StatusCode.ERROR),
        (b"boom", grpc.StatusCode.INTERNAL, StatusCode.ERROR),
        # The caller's fault: the code is recorded, the status is not an error (semconv).
        (b"invalid", grpc.StatusCode.INVALID_ARGUMENT, StatusCode.UNSET),
    ],
)
async def test_span_carries_the_code_the_call_ended_with(
    channel: grpc.aio.Channel,
    span_exporter: InMemorySpanExporter,
    method: str,
    request_bytes: bytes,
    code: grpc.StatusCode,
    status: StatusCode,
) -> None:
    path = f"/t.S/{method}"
    try:
        if method == "Unary":
            await channel.unary_unary(path)(request_bytes)
        else:
            _ = [m async for m in channel.unary_stream(path)(request_bytes)]
        got = grpc.StatusCode.OK
    except grpc.aio.AioRpcError as exc:
        got = exc.code()
    assert got is code
    (span,) = await _server_spans(span_exporter)
    assert (span.attributes or {})["rpc.grpc.status_code"] == code.value[0]
    assert span.status.status_code is status
