"""The four shapes of a gRPC method handler, for server interceptors that wrap a method's
behaviour: grpc keeps the behaviour in a different attribute of the handler for each shape and
has a different constructor for each, and a wrapped handler must keep the shape it had.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

import grpc

# go-grpc-prometheus's ``grpc_type`` label values.
UNARY: Final = "unary"
CLIENT_STREAM: Final = "client_stream"
SERVER_STREAM: Final = "server_stream"
BIDI_STREAM: Final = "bidi_stream"

Behavior: TypeAlias = Callable[..., Any]
Deserializer: TypeAlias = Callable[[bytes], Any] | None
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


class _Keep(enum.Enum):
    DESERIALIZER = enum.auto()


# rebuild()'s default: the new handler decodes requests as the old one did.
KEEP: Final = _Keep.DESERIALIZER


@dataclass(frozen=True)
class Shape:
    """One handler shape: unary or streaming request, unary or streaming response."""

    attr: str  # the handler attribute that holds the behaviour, e.g. ``unary_stream``
    request_streaming: bool
    response_streaming: bool
    grpc_type: str
    factory: Callable[..., Handler] = field(repr=False, compare=False)


SHAPES: Final = (
    Shape("unary_unary", False, False, UNARY, grpc.unary_unary_rpc_method_handler),
    Shape("stream_unary", True, False, CLIENT_STREAM, grpc.stream_unary_rpc_method_handler),
    Shape("unary_stream", False, True, SERVER_STREAM, grpc.unary_stream_rpc_method_handler),
    Shape("stream_stream", True, True, BIDI_STREAM, grpc.stream_stream_rpc_method_handler),
)
_BY_STREAMING: Final = {(s.request_streaming, s.response_streaming): s for s in SHAPES}


def shape_of(handler: Handler) -> Shape:
    return _BY_STREAMING[(bool(handler.request_streaming), bool(handler.response_streaming))]


def behavior_of(handler: Handler) -> Behavior | None:
    """The handler's behaviour, whatever its kind."""
    behavior: Behavior | None = getattr(handler, shape_of(handler).attr)
    return behavior


def async_behavior(handler: Handler) -> Behavior | None:
    """The behaviour when it is a coroutine or async generator function (a grpc.aio servicer
    method), else None: a synchronous behaviour cannot be awaited from an async wrapper."""
    behavior = behavior_of(handler)
    if behavior is None or not (
        inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)
    ):
        return None
    return behavior


def rebuild(
    handler: Handler,
    behavior: Behavior,
    *,
    request_deserializer: Deserializer | _Keep = KEEP,
) -> Handler:
    """A handler of ``handler``'s shape and response serializer that runs ``behavior``; its
    request deserializer is ``handler``'s unless one (or None, for raw bytes) is given."""
    deserializer = (
        handler.request_deserializer
        if isinstance(request_deserializer, _Keep)
        else request_deserializer
    )
    return shape_of(handler).factory(
        behavior,
        request_deserializer=deserializer,
        response_serializer=handler.response_serializer,
    )


def method_name(details: grpc.HandlerCallDetails) -> str:
    """The full method name (``/pkg.Service/Method``); it may arrive as bytes."""
    method: str | bytes = details.method
    return method.decode() if isinstance(method, bytes) else str(method)
