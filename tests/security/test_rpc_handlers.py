"""svc_common.handlers: the handler shape the interceptors wrap and rebuild, and how the three
server interceptors use it (no server needed: the handlers are inspected directly)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from svc_common.auth import Authenticator, Policy
from svc_common.auth_interceptor import AuthInterceptor
from svc_common.grpc_errors import ErrorInterceptor, ErrorTable
from svc_common.grpc_metrics import GrpcServerMetricsInterceptor
from svc_common.handlers import (
    BIDI_STREAM,
    CLIENT_STREAM,
    SERVER_STREAM,
    SHAPES,
    UNARY,
    Shape,
    async_behavior,
    behavior_of,
    method_name,
    rebuild,
    shape_of,
)

ATTRS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
# attr -> (request_streaming, response_streaming, grpc_type)
EXPECTED = {
    "unary_unary": (False, False, UNARY),
    "stream_unary": (True, False, CLIENT_STREAM),
    "unary_stream": (False, True, SERVER_STREAM),
    "stream_stream": (True, True, BIDI_STREAM),
}


def deserialize(raw: bytes) -> str:
    return raw.decode()


def serialize(message: str) -> bytes:
    return message.encode()


async def coroutine_behavior(request: Any, context: Any) -> Any:
    return request


async def async_gen_behavior(request: Any, context: Any) -> AsyncIterator[Any]:
    yield request


def sync_behavior(request: Any, context: Any) -> Any:
    return request


def sync_gen_behavior(request: Any, context: Any) -> Iterator[Any]:
    yield request


def _async_for(attr: str) -> Callable[..., Any]:
    return async_gen_behavior if attr.endswith("_stream") else coroutine_behavior


def _handler(attr: str, behavior: Callable[..., Any]) -> grpc.RpcMethodHandler[Any, Any]:
    factory: Callable[..., grpc.RpcMethodHandler[Any, Any]] = getattr(
        grpc, f"{attr}_rpc_method_handler"
    )
    return factory(behavior, request_deserializer=deserialize, response_serializer=serialize)


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str | bytes) -> None:
        self.method = method  # type: ignore[assignment]
        self.invocation_metadata = ()


def test_the_four_shapes_are_distinct_and_labelled() -> None:
    assert {s.attr: (s.request_streaming, s.response_streaming, s.grpc_type) for s in SHAPES} == (
        EXPECTED
    )


@pytest.mark.parametrize("attr", ATTRS)
def test_shape_of_reads_the_handler(attr: str) -> None:
    shape = shape_of(_handler(attr, _async_for(attr)))
    assert isinstance(shape, Shape)
    assert (shape.attr, shape.request_streaming, shape.response_streaming, shape.grpc_type) == (
        attr,
        *EXPECTED[attr],
    )


@pytest.mark.parametrize("attr", ATTRS)
def test_rebuild_keeps_shape_and_serializers(attr: str) -> None:
    original = _handler(attr, _async_for(attr))

    async def replacement(request: Any, context: Any) -> Any:
        return request

    rebuilt = rebuild(original, replacement)

    assert shape_of(rebuilt) == shape_of(original)
    assert rebuilt.request_streaming == original.request_streaming
    assert rebuilt.response_streaming == original.response_streaming
    assert rebuilt.request_deserializer is deserialize
    assert rebuilt.response_serializer is serialize
    assert behavior_of(rebuilt) is replacement
    for other in ATTRS:
        if other != attr:
            assert getattr(rebuilt, other) is None


@pytest.mark.parametrize("attr", ATTRS)
def test_rebuild_can_replace_the_request_deserializer(attr: str) -> None:
    original = _handler(attr, _async_for(attr))

    def other(raw: bytes) -> str:
        return raw.decode().upper()

    raw = rebuild(original, coroutine_behavior, request_deserializer=None)
    assert raw.request_deserializer is None
    assert raw.response_serializer is serialize
    assert shape_of(raw) == shape_of(original)

    replaced = rebuild(original, coroutine_behavior, request_deserializer=other)
    assert replaced.request_deserializer is other
    assert replaced.response_serializer is serialize


@pytest.mark.parametrize("attr", ATTRS)
def test_async_behaviours_are_wrappable(attr: str) -> None:
    behavior = _async_for(attr)
    assert async_behavior(_handler(attr, behavior)) is behavior


@pytest.mark.parametrize("attr", ATTRS)
@pytest.mark.parametrize("behavior", [sync_behavior, sync_gen_behavior])
def test_a_sync_behaviour_is_not_wrappable(attr: str, behavior: Callable[..., Any]) -> None:
    handler = _handler(attr, behavior)
    assert async_behavior(handler) is None
    assert behavior_of(handler) is behavior


@pytest.mark.parametrize("method", ["/pkg.Service/Method", b"/pkg.Service/Method"])
def test_method_name_is_text(method: str | bytes) -> None:
    assert method_name(_Details(method)) == "/pkg.Service/Method"


def _interceptors() -> list[grpc.aio.ServerInterceptor[Any, Any]]:
    return [
        ErrorInterceptor(ErrorTable(domain="t", rules={})),
        GrpcServerMetricsInterceptor(CollectorRegistry()),
        AuthInterceptor(Authenticator(), Policy(), domain="t"),
    ]


async def _intercept(
    interceptor: grpc.aio.ServerInterceptor[Any, Any],
    handler: grpc.RpcMethodHandler[Any, Any] | None,
    method: str = "/pkg.Service/Method",
) -> Any:
    async def continuation(details: grpc.HandlerCallDetails) -> Any:
        return handler

    intercept: Callable[..., Awaitable[Any]] = interceptor.intercept_service
    return await intercept(continuation, _Details(method))


async def test_interceptors_pass_an_unknown_method_through() -> None:
    for interceptor in _interceptors():
        assert await _intercept(interceptor, None) is None


@pytest.mark.parametrize("attr", ATTRS)
async def test_interceptors_rebuild_an_async_handler_with_its_shape(attr: str) -> None:
    original = _handler(attr, _async_for(attr))
    error, metrics, auth = _interceptors()
    for interceptor in (error, metrics, auth):
        wrapped = await _intercept(interceptor, original)
        assert wrapped is not original
        assert shape_of(wrapped) == shape_of(original)
        assert wrapped.response_serializer is serialize
        # The error interceptor decodes requests itself, to answer INVALID_ARGUMENT.
        expected = None if interceptor is error else deserialize
        assert wrapped.request_deserializer is expected


@pytest.mark.parametrize("attr", ATTRS)
async def test_sync_handlers_are_left_alone_except_by_auth(attr: str) -> None:
    original = _handler(attr, sync_behavior)
    error, metrics, auth = _interceptors()
    assert await _intercept(error, original) is original
    assert await _intercept(metrics, original) is original
    # Authentication wraps every behaviour: none may run unadmitted.
    wrapped = await _intercept(auth, original)
    assert wrapped is not original
    assert shape_of(wrapped) == shape_of(original)


async def test_auth_leaves_open_methods_alone() -> None:
    original = _handler("unary_unary", coroutine_behavior)
    auth = _interceptors()[2]
    assert await _intercept(auth, original, "/grpc.health.v1.Health/Check") is original
