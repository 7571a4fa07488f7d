"""The shared interceptor on every handler shape (unary-unary, unary-stream, stream-unary,
stream-stream), against a real grpc.aio server on loopback with a tiny generic service."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf.wrappers_pb2 import StringValue
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from svc_common.grpc_errors import MAX_FIELD_VIOLATIONS, ErrorTable, Rule, error_interceptor
from svc_common.tracing import grpc_server_interceptors
from tests.grpc_errors.support import GARBAGE, details

DOMAIN = "test.rpi.v1"
SERVICE = "test.Shapes"


@dataclass(frozen=True)
class Violation:
    field: str
    description: str


@dataclass
class BadInputError(Exception):
    message: str
    violations: list[Violation] = field(default_factory=list)


class BusyError(Exception):
    retry_after_seconds = 2.5


class MissingError(Exception):
    pass


TABLE = ErrorTable(
    domain=DOMAIN,
    rules={
        BadInputError: Rule(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        BusyError: Rule(grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED", retryable=True),
        MissingError: Rule(grpc.StatusCode.NOT_FOUND, "THING_NOT_FOUND"),
    },
)


def _failure(value: str) -> Exception:
    """What the handlers raise for a request text."""
    if value == "bad":
        return BadInputError("bad input", [Violation("name", "is required")])
    if value == "many":
        return BadInputError("bad input", [Violation(f"items[{i}]", "invalid") for i in range(45)])
    if value == "busy":
        return BusyError("busy")
    if value == "missing":
        return MissingError("no such thing")
    return RuntimeError(f"secret request text {value}")


async def unary_unary(request: StringValue, context: Any) -> StringValue:
    if request.value == "ok":
        return StringValue(value="ok")
    raise _failure(request.value)


async def unary_stream(request: StringValue, context: Any) -> AsyncIterator[StringValue]:
    yield StringValue(value="first")
    raise _failure(request.value)


async def stream_unary(requests: AsyncIterator[StringValue], context: Any) -> StringValue:
    values = [r.value async for r in requests]
    raise _failure(values[-1])


async def stream_stream(
    requests: AsyncIterator[StringValue], context: Any
) -> AsyncIterator[StringValue]:
    async for request in requests:
        if request.value == "ok":
            yield StringValue(value="ok")
        else:
            raise _failure(request.value)


def _handlers() -> grpc.GenericRpcHandler:
    kw: dict[str, Any] = {
        "request_deserializer": StringValue.FromString,
        "response_serializer": StringValue.SerializeToString,
    }
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "UnaryUnary": grpc.unary_unary_rpc_method_handler(unary_unary, **kw),
            "UnaryStream": grpc.unary_stream_rpc_method_handler(unary_stream, **kw),
            "StreamUnary": grpc.stream_unary_rpc_method_handler(stream_unary, **kw),
            "StreamStream": grpc.stream_stream_rpc_method_handler(stream_stream, **kw),
        },
    )


@contextlib.asynccontextmanager
async def _serve(interceptors: list[Any]) -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server(interceptors=interceptors)
    server.add_generic_rpc_handlers((_handlers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            yield ch
    finally:
        await server.stop(0)


@pytest.fixture(scope="module")
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    async with _serve([error_interceptor(TABLE)]) as ch:
        yield ch


def _ser(value: str) -> bytes:
    return StringValue(value=value).SerializeToString()


async def _call(channel: grpc.aio.Channel, shape: str, payload: bytes) -> Any:
    """Sends raw bytes (so garbage can be sent) and returns the decoded responses."""
    method = f"/{SERVICE}/{shape}"
    if shape == "UnaryUnary":
        return [await channel.unary_unary(method)(payload)]
    if shape == "UnaryStream":
        return [r async for r in channel.unary_stream(method)(payload)]
    if shape == "StreamUnary":
        return [await channel.stream_unary(method)(iter([payload]))]
    return [r async for r in channel.stream_stream(method)(iter([payload]))]


SHAPES = ["UnaryUnary", "UnaryStream", "StreamUnary", "StreamStream"]


async def test_a_successful_call_passes_through(channel: grpc.aio.Channel) -> None:
    (response,) = await _call(channel, "UnaryUnary", _ser("ok"))
    assert StringValue.FromString(response).value == "ok"
    (response,) = await _call(channel, "StreamStream", _ser("ok"))
    assert StringValue.FromString(response).value == "ok"


@pytest.mark.parametrize("shape", SHAPES)
async def test_domain_error_has_one_error_info_and_field_violations(
    channel: grpc.aio.Channel, shape: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(channel, shape, _ser("bad"))
    got = details(caught.value)
    assert got.code is grpc.StatusCode.INVALID_ARGUMENT
    assert (got.info.domain, got.info.reason) == (DOMAIN, "INVALID_ARGUMENT")
    assert got.message == "bad input"
    assert got.violations == [("name", "is required")]
    assert got.retry_delay_s is None


@pytest.mark.parametrize("shape", SHAPES)
async def test_unexpected_exception_is_internal_with_a_trace_id_and_no_detail(
    channel: grpc.aio.Channel, shape: str, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.ERROR, logger="svc_common.grpc_errors"),
        pytest.raises(grpc.aio.AioRpcError) as caught,
    ):
        await _call(channel, shape, _ser("boom"))
    got = details(caught.value)
    assert got.code is grpc.StatusCode.INTERNAL
    assert got.message == "internal error"
    assert (got.info.domain, got.info.reason) == (DOMAIN, "INTERNAL")
    trace_id = got.info.metadata["trace_id"]
    assert len(trace_id) == 32
    assert "secret" not in (caught.value.details() or "")
    assert "RuntimeError" not in (caught.value.details() or "")
    logged = [r for r in caplog.records if getattr(r, "trace_id", None) == trace_id]
    assert len(logged) == 1 and logged[0].exc_info is not None


@pytest.mark.parametrize("shape", SHAPES)
async def test_undecodable_request_bytes_are_invalid_argument(
    channel: grpc.aio.Channel, shape: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(channel, shape, GARBAGE)
    got = details(caught.value)
    assert got.code is grpc.StatusCode.INVALID_ARGUMENT
    assert (got.info.domain, got.info.reason) == (DOMAIN, "INVALID_ARGUMENT")


async def test_retryable_error_carries_retry_info(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(channel, "UnaryUnary", _ser("busy"))
    got = details(caught.value)
    assert got.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert got.info.reason == "OVERLOADED"
    assert got.retry_delay_s == 2.5


async def test_not_found_has_no_retry_info_and_no_bad_request(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(channel, "UnaryStream", _ser("missing"))
    got = details(caught.value)
    assert (got.code, got.info.reason) == (grpc.StatusCode.NOT_FOUND, "THING_NOT_FOUND")
    assert got.violations == [] and got.retry_delay_s is None


async def test_field_violations_are_capped(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(channel, "UnaryUnary", _ser("many"))
    got = details(caught.value)
    assert len(got.violations) == MAX_FIELD_VIOLATIONS + 1
    assert got.violations[:2] == [("items[0]", "invalid"), ("items[1]", "invalid")]
    assert got.violations[-1] == ("", f"and {45 - MAX_FIELD_VIOLATIONS} more")


async def test_unexpected_errors_are_logged_at_most_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with _serve([error_interceptor(TABLE)]) as channel:
        with caplog.at_level(logging.ERROR, logger="svc_common.grpc_errors"):
            for _ in range(5):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await _call(channel, "UnaryUnary", _ser("boom"))
                assert caught.value.code() is grpc.StatusCode.INTERNAL
    logged = [r for r in caplog.records if "UnaryUnary" in r.getMessage()]
    assert len(logged) == 1
    # The request's text is in the exception (the traceback), never in the line itself.
    line = logged[0]
    assert "secret" not in line.getMessage()
    assert "secret" not in str([line.method, line.trace_id])  # type: ignore[attr-defined]


async def test_without_the_interceptor_grpc_would_not_say_invalid_argument() -> None:
    # Why the interceptor decodes requests itself: grpc's own answer to garbage is not it.
    async with _serve([]) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _call(channel, "UnaryUnary", GARBAGE)
        assert caught.value.code() is not grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _call(channel, "UnaryUnary", _ser("boom"))
        assert caught.value.code() is grpc.StatusCode.UNKNOWN


@pytest.mark.parametrize("shape", ["UnaryUnary", "UnaryStream"])
async def test_with_tracing_the_trace_id_is_the_server_spans(shape: str) -> None:
    # The error interceptor sits inside the tracing one, so the call's span is current.
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    interceptors = [*grpc_server_interceptors(provider), error_interceptor(TABLE)]
    async with _serve(interceptors) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _call(channel, shape, _ser("boom"))
    provider.shutdown()
    got = details(caught.value)
    assert got.code is grpc.StatusCode.INTERNAL
    span_ids = {format(s.context.trace_id, "032x") for s in exporter.get_finished_spans()}
    assert got.info.metadata["trace_id"] in span_ids
